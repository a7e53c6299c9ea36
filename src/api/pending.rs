//! What the edge still answers `Unimplemented` to (etcd methods Keel does not serve yet), and the
//! boxed server-stream type the generated service traits want.

use std::pin::Pin;

use futures::Stream;
use tonic::Status;

/// A server stream as the generated service traits want it.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!("keel does not serve {method} yet"))
}
