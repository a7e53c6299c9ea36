//! Generated etcd 3.5.16 wire types, gRPC servers and gRPC clients, and the types' proto3 JSON
//! (serde) impls the HTTP gateway speaks (built by `build.rs` from `proto/`).
//!
//! Module nesting mirrors the protobuf packages because prost refers to types in other
//! packages through `super::<package>::…` paths (e.g. `super::mvccpb::KeyValue`).

/// Storage-level records: `KeyValue` and watch `Event` (etcd's `mvccpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// Persisted auth records: users, roles, permissions (etcd's `authpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// The client API services KV, Watch, Lease, Cluster, Maintenance and Auth (etcd's `etcdserverpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// The distributed lock service (etcd's `v3lockpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// The leader election service (etcd's `v3electionpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// The standard gRPC health service (`grpc.health.v1`), which etcd also exposes.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod health {
    tonic::include_proto!("grpc.health.v1");
}

/// Keel's member-to-member service (raft transport, forwarding to the leader); not etcd's.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod keelpeer {
    tonic::include_proto!("keelpeer");
}

// Pins the wire format: a wrong field number would silently break real etcd clients.
#[cfg(test)]
mod tests {
    use super::{authpb, etcdserverpb, health, mvccpb, v3electionpb, v3lockpb};
    use prost::Message;

    #[test]
    fn put_request_key_is_field_one() {
        let req = etcdserverpb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
        let bytes = req.encode_to_vec();
        // tag (1<<3)|2 = 0x0a, len 1, 'k', then (2<<3)|2 = 0x12, len 1, 'v'
        assert_eq!(bytes, vec![0x0a, 1, b'k', 0x12, 1, b'v']);
        assert_eq!(etcdserverpb::PutRequest::decode(bytes.as_slice()).unwrap(), req);
    }

    #[test]
    fn high_field_numbers_are_right() {
        // Compare.range_end = 64 -> tag (64<<3)|2 = 514 -> varint 0x82 0x04
        let c = etcdserverpb::Compare { range_end: b"z".to_vec(), ..Default::default() };
        assert_eq!(c.encode_to_vec(), vec![0x82, 0x04, 1, b'z']);
        let c = etcdserverpb::Compare {
            target_union: Some(etcdserverpb::compare::TargetUnion::Lease(1)),
            ..Default::default()
        };
        assert_eq!(c.encode_to_vec(), vec![0x40, 1]);

        // RangeRequest.max_create_revision = 13 -> 0x68
        let r = etcdserverpb::RangeRequest { max_create_revision: 1, ..Default::default() };
        assert_eq!(r.encode_to_vec(), vec![0x68, 1]);

        // WatchCreateRequest.fragment = 8 -> 0x40
        let w = etcdserverpb::WatchCreateRequest { fragment: true, ..Default::default() };
        assert_eq!(w.encode_to_vec(), vec![0x40, 1]);

        // WatchResponse.events = 11 -> 0x5a; fragment = 7 -> 0x38
        let w = etcdserverpb::WatchResponse {
            fragment: true,
            events: vec![mvccpb::Event::default()],
            ..Default::default()
        };
        assert_eq!(w.encode_to_vec(), vec![0x38, 1, 0x5a, 0]);

        // StatusResponse.dbSizeInUse = 9 -> 0x48, isLearner = 10 -> 0x50
        let s = etcdserverpb::StatusResponse { db_size_in_use: 5, is_learner: true, ..Default::default() };
        assert_eq!(s.encode_to_vec(), vec![0x48, 5, 0x50, 1]);

        // Member.isLearner = 5 -> 0x28
        let m = etcdserverpb::Member { is_learner: true, ..Default::default() };
        assert_eq!(m.encode_to_vec(), vec![0x28, 1]);

        // AuthUserAddRequest.hashedPassword = 4 -> 0x22
        let a = etcdserverpb::AuthUserAddRequest {
            hashed_password: "h".into(),
            options: Some(authpb::UserAddOptions { no_password: true }),
            ..Default::default()
        };
        assert_eq!(a.encode_to_vec(), vec![0x1a, 2, 0x08, 1, 0x22, 1, b'h']);
    }

    #[test]
    fn enums_have_etcd_values() {
        assert_eq!(etcdserverpb::AlarmType::Corrupt as i32, 2);
        assert_eq!(etcdserverpb::range_request::SortTarget::Value as i32, 4);
        assert_eq!(etcdserverpb::compare::CompareResult::NotEqual as i32, 3);
        assert_eq!(etcdserverpb::watch_create_request::FilterType::Nodelete as i32, 1);
        assert_eq!(mvccpb::event::EventType::Delete as i32, 1);
        assert_eq!(authpb::permission::Type::Readwrite as i32, 2);
        assert_eq!(health::health_check_response::ServingStatus::ServiceUnknown as i32, 3);
    }

    // Type-level checks: the servers and clients the rest of Keel relies on exist.
    #[allow(dead_code)]
    fn servers_and_clients_exist() {
        type _S1 = etcdserverpb::kv_server::KvServer<()>;
        type _S2 = etcdserverpb::watch_server::WatchServer<()>;
        type _S3 = etcdserverpb::lease_server::LeaseServer<()>;
        type _S4 = etcdserverpb::cluster_server::ClusterServer<()>;
        type _S5 = etcdserverpb::maintenance_server::MaintenanceServer<()>;
        type _S6 = etcdserverpb::auth_server::AuthServer<()>;
        type _S7 = v3lockpb::lock_server::LockServer<()>;
        type _S8 = v3electionpb::election_server::ElectionServer<()>;
        type _S9 = health::health_server::HealthServer<()>;
        type _C1 = etcdserverpb::kv_client::KvClient<tonic::transport::Channel>;
        type _C2 = etcdserverpb::watch_client::WatchClient<tonic::transport::Channel>;
        type _C3 = etcdserverpb::maintenance_client::MaintenanceClient<tonic::transport::Channel>;
        type _C4 = v3electionpb::election_client::ElectionClient<tonic::transport::Channel>;
        type _C5 = health::health_client::HealthClient<tonic::transport::Channel>;
    }

    #[test]
    fn generated_service_names_match_etcd() {
        use tonic::server::NamedService;
        type Kv = etcdserverpb::kv_server::KvServer<Never>;
        assert_eq!(<Kv as NamedService>::NAME, "etcdserverpb.KV");
        assert_eq!(<v3lockpb::lock_server::LockServer<Never> as NamedService>::NAME, "v3lockpb.Lock");
        assert_eq!(<health::health_server::HealthServer<Never> as NamedService>::NAME, "grpc.health.v1.Health");
    }

    // An uninhabited stand-in that satisfies the service traits' bounds for NamedService.
    enum Never {}

    #[tonic::async_trait]
    impl etcdserverpb::kv_server::Kv for Never {
        async fn range(
            &self,
            _: tonic::Request<etcdserverpb::RangeRequest>,
        ) -> Result<tonic::Response<etcdserverpb::RangeResponse>, tonic::Status> {
            match *self {}
        }
        async fn put(
            &self,
            _: tonic::Request<etcdserverpb::PutRequest>,
        ) -> Result<tonic::Response<etcdserverpb::PutResponse>, tonic::Status> {
            match *self {}
        }
        async fn delete_range(
            &self,
            _: tonic::Request<etcdserverpb::DeleteRangeRequest>,
        ) -> Result<tonic::Response<etcdserverpb::DeleteRangeResponse>, tonic::Status> {
            match *self {}
        }
        async fn txn(
            &self,
            _: tonic::Request<etcdserverpb::TxnRequest>,
        ) -> Result<tonic::Response<etcdserverpb::TxnResponse>, tonic::Status> {
            match *self {}
        }
        async fn compact(
            &self,
            _: tonic::Request<etcdserverpb::CompactionRequest>,
        ) -> Result<tonic::Response<etcdserverpb::CompactionResponse>, tonic::Status> {
            match *self {}
        }
    }

    #[tonic::async_trait]
    impl v3lockpb::lock_server::Lock for Never {
        async fn lock(
            &self,
            _: tonic::Request<v3lockpb::LockRequest>,
        ) -> Result<tonic::Response<v3lockpb::LockResponse>, tonic::Status> {
            match *self {}
        }
        async fn unlock(
            &self,
            _: tonic::Request<v3lockpb::UnlockRequest>,
        ) -> Result<tonic::Response<v3lockpb::UnlockResponse>, tonic::Status> {
            match *self {}
        }
    }

    #[tonic::async_trait]
    impl health::health_server::Health for Never {
        type WatchStream = std::pin::Pin<
            Box<
                dyn tonic::codegen::tokio_stream::Stream<Item = Result<health::HealthCheckResponse, tonic::Status>>
                    + Send,
            >,
        >;
        async fn check(
            &self,
            _: tonic::Request<health::HealthCheckRequest>,
        ) -> Result<tonic::Response<health::HealthCheckResponse>, tonic::Status> {
            match *self {}
        }
        async fn watch(
            &self,
            _: tonic::Request<health::HealthCheckRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
            match *self {}
        }
    }
}

/// serde adapter: a prost message as its protobuf bytes (`#[serde(with = "serde_pb")]`), so raft
/// commands carry requests exactly as clients encoded them.
pub mod serde_pb {
    use prost::Message;
    use serde::{Deserializer, Serializer};

    pub fn serialize<M: Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&m.encode_to_vec())
    }

    pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(d: D) -> Result<M, D::Error> {
        let bytes: Vec<u8> = serde_bytes_vec(d)?;
        M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("protobuf bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}
