//! A small HTTP/1.1 client for the client port's HTTP side (etcd's JSON gateway, `/health`,
//! `/version`, `/metrics`): one connection per request, as curl makes them, and JSON bodies parsed
//! so that two servers' answers compare regardless of separator whitespace.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::HarnessError;

/// Upper bound for one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer: status, headers and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` if it is not JSON, with the text kept in the error).
    pub fn json(&self) -> Result<serde_json::Value, HarnessError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HarnessError::Other(format!("not JSON ({e}): {:?}", self.text())))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> Result<Sender, HarnessError> {
    let stream = TcpStream::connect(addr).await.map_err(|e| HarnessError::io(format!("connecting to {addr}"), e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HarnessError::Other(format!("HTTP handshake with {addr}: {e}")))?;
    tokio::spawn(conn);
    Ok(sender)
}

fn request(method: &str, addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::builder().method(method).uri(path).header("host", addr);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::copy_from_slice(body))).expect("a well-formed request")
}

/// `method path` with `body`, the whole answer read.
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, HarnessError> {
    let exchange = async {
        let mut sender = connect(addr).await?;
        let response = sender
            .send_request(request(method, addr, path, headers, body))
            .await
            .map_err(|e| HarnessError::Other(format!("{method} {path}: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| HarnessError::Other(format!("{method} {path}: reading the body: {e}")))?
            .to_bytes();
        Ok(Reply { status: parts.status.as_u16(), headers: parts.headers, body })
    };
    tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .map_err(|_| HarnessError::Other(format!("{method} {path}: no answer within {HTTP_TIMEOUT:?}")))?
}

pub async fn get(addr: &str, path: &str) -> Result<Reply, HarnessError> {
    call(addr, "GET", path, &[], b"").await
}

pub async fn post(addr: &str, path: &str, body: &str) -> Result<Reply, HarnessError> {
    call(addr, "POST", path, &[], body.as_bytes()).await
}

/// POST `body` to a streaming gateway path (`/v3/watch`, `/v3/lease/keepalive`) and return the
/// first `lines` lines of the answer, each parsed as JSON. Between the first line and the others,
/// `between` runs (e.g. writes that the watch should then report).
pub async fn stream_lines<F, Fut>(
    addr: &str,
    path: &str,
    body: &str,
    lines: usize,
    between: F,
) -> Result<(u16, Vec<serde_json::Value>), HarnessError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), HarnessError>>,
{
    let mut sender = connect(addr).await?;
    let response =
        tokio::time::timeout(HTTP_TIMEOUT, sender.send_request(request("POST", addr, path, &[], body.as_bytes())))
            .await
            .map_err(|_| HarnessError::Other(format!("POST {path}: no answer within {HTTP_TIMEOUT:?}")))?
            .map_err(|e| HarnessError::Other(format!("POST {path}: {e}")))?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut between = Some(between);
    while out.len() < lines {
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let value = serde_json::from_slice(&line).map_err(|e| {
                HarnessError::Other(format!("{path}: line is not JSON ({e}): {}", String::from_utf8_lossy(&line)))
            })?;
            out.push(value);
            if let Some(f) = between.take() {
                f().await?;
            }
        }
        if out.len() >= lines {
            break;
        }
        let frame = tokio::time::timeout(HTTP_TIMEOUT, body.frame())
            .await
            .map_err(|_| HarnessError::Other(format!("{path}: only {} of {lines} lines arrived", out.len())))?;
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => return Err(HarnessError::Other(format!("{path}: reading the stream: {e}"))),
            None => break,
        }
    }
    Ok((status, out))
}
