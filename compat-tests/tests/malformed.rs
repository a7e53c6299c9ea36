//! Malformed requests get etcd's answer (code and text), and the server keeps serving afterwards.

use compat_tests::server::{Server, ServerKind};
use keel::proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest};

/// A message whose field 1 is a varint where PutRequest's `key` is bytes: not a valid PutRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    key: u64,
}

async fn send_malformed_put(server: &Server) -> (tonic::Code, String) {
    let channel = compat_tests::server::connect(&server.endpoint()).await.expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<WrongWireType, PutResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let status = grpc
        .unary(tonic::Request::new(WrongWireType { key: 7 }), path, codec)
        .await
        .expect_err("a malformed request must fail");
    (status.code(), status.message().to_string())
}

async fn still_serving(server: &Server) {
    let mut kv = server.kv().await.expect("client");
    kv.put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }).await.expect("put");
    let got = kv.range(RangeRequest { key: b"k".to_vec(), ..Default::default() }).await.expect("range").into_inner();
    assert_eq!(got.kvs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_request_answered_as_etcd_and_server_keeps_serving() {
    let etcd = Server::start(ServerKind::Etcd).await.expect("etcd");
    let keel = Server::start(ServerKind::Keel).await.expect("keel");
    let from_etcd = send_malformed_put(&etcd).await;
    let from_keel = send_malformed_put(&keel).await;
    println!("etcd: {from_etcd:?}\nkeel: {from_keel:?}");
    assert_eq!(from_keel, from_etcd);
    still_serving(&keel).await;
}
