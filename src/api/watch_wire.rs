//! The Watch service's wire side: `/etcdserverpb.Watch/Watch` mounted as a gRPC streaming method
//! whose responses may be partly pre-encoded. A revision sent to a thousand watchers is encoded
//! once ([`EventBatch::encoded`]) and each watcher's message is that byte string behind its own
//! header and watch id — byte for byte what encoding the full `WatchResponse` would give (fields
//! in number order, as prost and etcd's gogoproto both write them).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{self, DecodeContext, WireType};
use prost::Message;
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use crate::api::watch::WatchService;
use crate::api::BoxStream;
use crate::proto::etcdserverpb::{ResponseHeader, WatchRequest, WatchResponse};
use crate::proto::mvccpb::Event;
use crate::watch::EventBatch;

/// Field numbers of `WatchResponse` that the pre-encoded form writes.
const HEADER_FIELD: u32 = 1;
const WATCH_ID_FIELD: u32 = 2;
const EVENTS_FIELD: u32 = 11;
/// Fields of `Event`.
const EVENT_TYPE_FIELD: u32 = 1;
const EVENT_KV_FIELD: u32 = 2;
const EVENT_PREV_FIELD: u32 = 3;

/// One response on the wire: a message encoded as usual, or a watcher's events with the header
/// and the events already encoded.
#[derive(Clone, Debug, PartialEq)]
pub enum WireResponse {
    Message(WatchResponse),
    Events { header: Bytes, watch_id: i64, events: Bytes },
}

impl Default for WireResponse {
    fn default() -> Self {
        WireResponse::Message(WatchResponse::default())
    }
}

impl Message for WireResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            WireResponse::Message(m) => m.encode_raw(buf),
            WireResponse::Events { header, watch_id, events } => {
                encoding::encode_key(HEADER_FIELD, WireType::LengthDelimited, buf);
                encoding::encode_varint(header.len() as u64, buf);
                buf.put_slice(header);
                if *watch_id != 0 {
                    encoding::int64::encode(WATCH_ID_FIELD, watch_id, buf);
                }
                buf.put_slice(events);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent, never received; decoding just skips.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            WireResponse::Message(m) => m.encoded_len(),
            WireResponse::Events { header, watch_id, events } => {
                encoding::key_len(HEADER_FIELD)
                    + encoding::encoded_len_varint(header.len() as u64)
                    + header.len()
                    + if *watch_id != 0 { encoding::int64::encoded_len(WATCH_ID_FIELD, watch_id) } else { 0 }
                    + events.len()
            }
        }
    }

    fn clear(&mut self) {
        *self = WireResponse::default();
    }
}

/// A header's encoding (the message body, without its field key).
pub fn encode_header(h: &ResponseHeader) -> Bytes {
    Bytes::from(h.encode_to_vec())
}

/// Events as `WatchResponse.events` entries (key, length, body each), with or without `prev_kv`.
pub fn encode_events<'a>(events: impl Iterator<Item = &'a Arc<Event>>, with_prev: bool) -> Bytes {
    let mut buf = BytesMut::new();
    for e in events {
        let prev = if with_prev { e.prev_kv.as_ref() } else { None };
        let len = event_body_len(e, prev.is_some());
        encoding::encode_key(EVENTS_FIELD, WireType::LengthDelimited, &mut buf);
        encoding::encode_varint(len as u64, &mut buf);
        if e.r#type != 0 {
            encoding::int32::encode(EVENT_TYPE_FIELD, &e.r#type, &mut buf);
        }
        if let Some(kv) = &e.kv {
            encoding::message::encode(EVENT_KV_FIELD, kv, &mut buf);
        }
        if let Some(p) = prev {
            encoding::message::encode(EVENT_PREV_FIELD, p, &mut buf);
        }
    }
    buf.freeze()
}

fn event_body_len(e: &Event, with_prev: bool) -> usize {
    let kind = if e.r#type != 0 { encoding::int32::encoded_len(EVENT_TYPE_FIELD, &e.r#type) } else { 0 };
    let kv = e.kv.as_ref().map_or(0, |kv| encoding::message::encoded_len(EVENT_KV_FIELD, kv));
    let prev = match (&e.prev_kv, with_prev) {
        (Some(p), true) => encoding::message::encoded_len(EVENT_PREV_FIELD, p),
        _ => 0,
    };
    kind + kv + prev
}

/// The encoding of a whole batch, made once and shared by every watcher that gets all of it.
pub fn batch_bytes(batch: &EventBatch, with_prev: bool) -> Bytes {
    batch.encoded[usize::from(with_prev)].get_or_init(|| encode_events(batch.events.iter(), with_prev)).clone()
}

/// `/etcdserverpb.Watch/Watch`, served with [`WireResponse`]s.
#[derive(Clone)]
pub struct WatchGrpc {
    service: Arc<WatchService>,
    max_decoding: usize,
}

impl WatchGrpc {
    pub fn new(service: WatchService, max_decoding: usize) -> Self {
        WatchGrpc { service: Arc::new(service), max_decoding }
    }
}

impl NamedService for WatchGrpc {
    const NAME: &'static str = "etcdserverpb.Watch";
}

const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

struct WatchMethod(Arc<WatchService>);

impl StreamingService<WatchRequest> for WatchMethod {
    type Response = WireResponse;
    type ResponseStream = BoxStream<WireResponse>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.open(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for WatchGrpc
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return Box::pin(async move { Ok(Status::unimplemented("").into_http()) });
        }
        let method = WatchMethod(self.service.clone());
        let max_decoding = self.max_decoding;
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<WireResponse, WatchRequest>::default();
            let mut grpc = Grpc::new(codec).apply_max_message_size_config(Some(max_decoding), Some(usize::MAX));
            Ok(grpc.streaming(method, req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;

    fn kv(key: &str, value: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
            create_revision: 2,
            mod_revision: rev,
            version: rev - 1,
            lease: 0,
        }
    }

    #[test]
    fn pre_encoded_responses_are_byte_for_byte_the_message() {
        let events = [
            Arc::new(Event { r#type: 0, kv: Some(kv("a", "1", 3)), prev_kv: Some(kv("a", "0", 2)) }),
            Arc::new(Event {
                r#type: 1,
                kv: Some(KeyValue { key: "b".into(), mod_revision: 3, ..Default::default() }),
                prev_kv: None,
            }),
        ];
        let header = ResponseHeader { cluster_id: 7, member_id: 8, revision: 3, raft_term: 2 };
        for (watch_id, with_prev) in [(0, false), (5, true), (-1, false)] {
            let wire = WireResponse::Events {
                header: encode_header(&header),
                watch_id,
                events: encode_events(events.iter(), with_prev),
            };
            let plain = WatchResponse {
                header: Some(header),
                watch_id,
                events: events
                    .iter()
                    .map(|e| Event { prev_kv: if with_prev { e.prev_kv.clone() } else { None }, ..Event::clone(e) })
                    .collect(),
                ..Default::default()
            };
            assert_eq!(wire.encode_to_vec(), plain.encode_to_vec(), "watch id {watch_id}, prev {with_prev}");
            assert_eq!(wire.encoded_len(), plain.encoded_len());
            assert_eq!(WatchResponse::decode(wire.encode_to_vec().as_slice()).unwrap(), plain);
        }
    }

    #[test]
    fn batches_are_encoded_once() {
        let batch = EventBatch::new(vec![Arc::new(Event { r#type: 0, kv: Some(kv("a", "1", 3)), prev_kv: None })]);
        let a = batch_bytes(&batch, false);
        let b = batch_bytes(&batch, false);
        assert_eq!(a.as_ptr(), b.as_ptr());
    }
}
