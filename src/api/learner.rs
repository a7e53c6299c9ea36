//! etcd's learner restriction: a learner member serves only Status, serializable Range and the
//! Snapshot stream; every other call gets `etcdserver: rpc not supported for learner`
//! (etcd 3.5.16's `isRPCSupportedForLearner` in its unary and stream interceptors). The route is
//! checked here, before decoding; Range's `serializable` flag is checked by the KV handler. The
//! plain HTTP handlers (`/metrics`, `/health`, the probes, `/version`) answer as on any member.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::error::Error;
use crate::node::Node;

/// The calls a learner serves (Range only when serializable).
const LEARNER_ROUTES: &[&str] =
    &["/etcdserverpb.Maintenance/Status", "/etcdserverpb.Maintenance/Snapshot", "/etcdserverpb.KV/Range"];

/// etcd's plain HTTP handlers beside the gateway, which a learner serves like any member (its
/// metrics and health can be scraped).
fn is_probe(path: &str) -> bool {
    matches!(path, "/metrics" | "/health" | "/version" | "/livez" | "/readyz")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// Wraps the client service stack (see `server.rs`).
#[derive(Clone)]
pub struct LearnerGuard<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S> LearnerGuard<S> {
    pub fn layer(node: Arc<Node>) -> impl tower::Layer<S, Service = LearnerGuard<S>> + Clone {
        tower::layer::layer_fn(move |inner| LearnerGuard { inner, node: node.clone() })
    }
}

/// The error a learner answers a call it does not serve with.
pub fn refused() -> Error {
    Error::NotSupportedForLearner
}

impl<S, B> tower::Service<http::Request<B>> for LearnerGuard<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if self.node.is_learner() && !LEARNER_ROUTES.contains(&path) && !is_probe(path) {
            let status = crate::api::status::to_status(refused());
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}
