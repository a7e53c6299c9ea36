//! The standard gRPC health service, as etcd registers it: the empty service name is SERVING.

use tonic::{Request, Response, Status};

use crate::api::BoxStream;
use crate::proto::health::health_check_response::ServingStatus;
use crate::proto::health::health_server::Health;
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};

pub struct HealthService;

impl HealthService {
    fn status_of(service: &str) -> Result<ServingStatus, Status> {
        // etcd registers only the server as a whole (""); grpc-go's health server answers NotFound
        // for names it does not know.
        if service.is_empty() {
            Ok(ServingStatus::Serving)
        } else {
            Err(Status::not_found("unknown service"))
        }
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    type WatchStream = BoxStream<HealthCheckResponse>;

    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        let status = Self::status_of(&request.into_inner().service)?;
        Ok(Response::new(HealthCheckResponse { status: status as i32 }))
    }

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let status = match Self::status_of(&request.into_inner().service) {
            Ok(s) => s,
            Err(_) => ServingStatus::ServiceUnknown,
        };
        let first = futures::stream::once(async move { Ok(HealthCheckResponse { status: status as i32 }) });
        // The status never changes while the server runs, so after the first answer the stream
        // stays open and silent, as grpc-go's does until a status changes.
        let stream = futures::StreamExt::chain(first, futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}
