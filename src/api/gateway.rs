//! The HTTP/1.1 side of the client port: etcd's grpc-gateway (v1.16) JSON API under `/v3/`, and
//! etcd's `/health`, `/livez`, `/readyz`, `/version` and `/metrics` handlers (`etcdhttp`).
//!
//! Like etcd's gateway, which dials its own gRPC server, every `/v3/` call is made as a gRPC call
//! through the very services mounted on the port (a loopback through tonic's `Routes`, without a
//! socket): decoding, validation, auth, errors and gRPC metrics are the gRPC edge's, and no logic
//! lives here twice. This file only translates: JSON (proto3 mapping with the original field names,
//! from the pbjson impls in `proto.rs`) to a request, the `Authorization` header to the `token`
//! metadata, and the reply or gRPC status back to JSON and an HTTP status.

use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request as HttpRequest;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::Routes;
use tonic::{Code, Status};

use crate::api::status::http_status;
use crate::node::Node;
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::cluster_client::ClusterClient;
use crate::proto::etcdserverpb::kv_client::KvClient;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::watch_client::WatchClient;
use crate::proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, LeaseKeepAliveRequest, RangeRequest, WatchRequest,
};
use crate::proto::v3electionpb::election_client::ElectionClient;
use crate::proto::v3lockpb::lock_client::LockClient;

/// What the gateway calls: the services on the port, through the gRPC metrics layer that the
/// port's own gRPC calls pass in `server.rs`.
type Grpc = crate::metrics::GrpcMetrics<Routes>;

/// The client port's router: the gRPC `services` and everything HTTP beside them. The port's
/// server counts gRPC calls around all of it (`crate::metrics::GrpcMetricsLayer`).
pub fn client_router(services: Routes, node: Arc<Node>, certificate_users: bool) -> Routes {
    // The layers wrap the services themselves, so the gateway's calls, which loop back through
    // them, pass them too. tonic's own transport errors (undecodable or oversized requests) are
    // rewritten into grpc-go's text here, so gateway calls see etcd's text too. One `layer` call,
    // so each RPC pays for one boxed route, not one per layer. The gateway's calls are counted in
    // the gRPC metrics as etcd's are (its gateway is a gRPC client of its own server); the health
    // probes read through the bare services: etcd's call its server directly and are not counted.
    let edge = tower::ServiceBuilder::new()
        .map_request(move |r| crate::api::auth::attach_client_certificate(r, certificate_users))
        .map_response(|mut resp: Response| {
            crate::api::status::rewrite_transport_status(resp.headers_mut());
            resp
        });
    let edged = Routes::from(services.clone().into_axum_router().layer(edge));
    let http = http_router(crate::metrics::GrpcMetrics::new(edged.clone()), services, node);
    let http = tower::ServiceBuilder::new().map_request(v3beta_to_v3).service(http);
    // gRPC requests are routed by their `/<service>/<method>` path first; whatever is left is HTTP.
    Routes::from(edged.into_axum_router().fallback_service(http))
}

/// The `--listen-metrics-urls` listener: etcd serves only `/metrics` and the health probes there.
pub fn metrics_router(services: Routes, node: Arc<Node>) -> Router {
    probes(Router::new(), node, services).fallback(not_found_text)
}

/// `grpc` is what gateway calls go through; `services` the uncounted services the probes read.
fn http_router(grpc: Grpc, services: Routes, node: Arc<Node>) -> Router {
    let mut app = Router::new();
    // Unary calls: (path, client, method). etcd also answers the lease calls under `/v3/kv/lease/`.
    macro_rules! unary {
        ($($path:literal => $client:ident :: $method:ident),* $(,)?) => {
            $(
                let g = grpc.clone();
                app = app.route($path, gateway_post(move |h: HeaderMap, b: Bytes| {
                    let g = g.clone();
                    async move { unary(h, b, |req| async move { $client::new(g).$method(req).await }).await }
                }));
            )*
        };
    }
    unary! {
        "/v3/kv/range" => KvClient::range,
        "/v3/kv/put" => KvClient::put,
        "/v3/kv/deleterange" => KvClient::delete_range,
        "/v3/kv/txn" => KvClient::txn,
        "/v3/kv/compaction" => KvClient::compact,
        "/v3/lease/grant" => LeaseClient::lease_grant,
        "/v3/lease/revoke" => LeaseClient::lease_revoke,
        "/v3/kv/lease/revoke" => LeaseClient::lease_revoke,
        "/v3/lease/timetolive" => LeaseClient::lease_time_to_live,
        "/v3/kv/lease/timetolive" => LeaseClient::lease_time_to_live,
        "/v3/lease/leases" => LeaseClient::lease_leases,
        "/v3/kv/lease/leases" => LeaseClient::lease_leases,
        "/v3/cluster/member/add" => ClusterClient::member_add,
        "/v3/cluster/member/remove" => ClusterClient::member_remove,
        "/v3/cluster/member/update" => ClusterClient::member_update,
        "/v3/cluster/member/list" => ClusterClient::member_list,
        "/v3/cluster/member/promote" => ClusterClient::member_promote,
        "/v3/maintenance/alarm" => MaintenanceClient::alarm,
        "/v3/maintenance/status" => MaintenanceClient::status,
        "/v3/maintenance/defragment" => MaintenanceClient::defragment,
        "/v3/maintenance/hash" => MaintenanceClient::hash,
        "/v3/maintenance/hashkv" => MaintenanceClient::hash_kv,
        "/v3/maintenance/transfer-leadership" => MaintenanceClient::move_leader,
        "/v3/maintenance/downgrade" => MaintenanceClient::downgrade,
        "/v3/auth/enable" => AuthClient::auth_enable,
        "/v3/auth/disable" => AuthClient::auth_disable,
        "/v3/auth/status" => AuthClient::auth_status,
        "/v3/auth/authenticate" => AuthClient::authenticate,
        "/v3/auth/user/add" => AuthClient::user_add,
        "/v3/auth/user/get" => AuthClient::user_get,
        "/v3/auth/user/list" => AuthClient::user_list,
        "/v3/auth/user/delete" => AuthClient::user_delete,
        "/v3/auth/user/changepw" => AuthClient::user_change_password,
        "/v3/auth/user/grant" => AuthClient::user_grant_role,
        "/v3/auth/user/revoke" => AuthClient::user_revoke_role,
        "/v3/auth/role/add" => AuthClient::role_add,
        "/v3/auth/role/get" => AuthClient::role_get,
        "/v3/auth/role/list" => AuthClient::role_list,
        "/v3/auth/role/delete" => AuthClient::role_delete,
        "/v3/auth/role/grant" => AuthClient::role_grant_permission,
        "/v3/auth/role/revoke" => AuthClient::role_revoke_permission,
        "/v3/lock/lock" => LockClient::lock,
        "/v3/lock/unlock" => LockClient::unlock,
        "/v3/election/campaign" => ElectionClient::campaign,
        "/v3/election/proclaim" => ElectionClient::proclaim,
        "/v3/election/leader" => ElectionClient::leader,
        "/v3/election/resign" => ElectionClient::resign,
    }

    // Streams: the request body is a sequence of JSON requests, the reply one JSON line per message.
    let g = grpc.clone();
    app = app.route("/v3/watch", gateway_post(move |h: HeaderMap, b: Body| watch(g.clone(), h, b)));
    let g = grpc.clone();
    app = app.route("/v3/lease/keepalive", gateway_post(move |h: HeaderMap, b: Body| keep_alive(g.clone(), h, b)));
    // Server streams: one request, many replies.
    let g = grpc.clone();
    app = app.route(
        "/v3/maintenance/snapshot",
        gateway_post(move |h: HeaderMap, b: Bytes| {
            let g = g.clone();
            async move { server_stream(h, b, |req| async move { MaintenanceClient::new(g).snapshot(req).await }).await }
        }),
    );
    let g = grpc.clone();
    app = app.route(
        "/v3/election/observe",
        gateway_post(move |h: HeaderMap, b: Bytes| {
            let g = g.clone();
            async move { server_stream(h, b, |req| async move { ElectionClient::new(g).observe(req).await }).await }
        }),
    );

    app = app.route("/version", get_only(version));
    // A request as large as --max-request-bytes allows arrives here base64-inflated (4/3) inside
    // JSON; axum's default 2 MB cap would refuse requests etcd's gateway passes on.
    let body_limit = node.limits.max_request_bytes.saturating_mul(2).saturating_add(1 << 20);
    probes(app, node, services)
        .fallback(fallback)
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(cors))
}

/// `/metrics`, `/health`, `/livez`, `/readyz`: served on the client port and on the metrics port.
fn probes(mut app: Router, node: Arc<Node>, grpc: Routes) -> Router {
    let metrics_node = node.clone();
    // Prometheus's handler answers any method.
    app = app.route(
        "/metrics",
        axum::routing::any(move || {
            let node = metrics_node.clone();
            async move { metrics(&node) }
        }),
    );
    let (health_node, health_grpc) = (node.clone(), grpc.clone());
    app = app.route(
        "/health",
        get_only(move |q: axum::extract::RawQuery| {
            let (node, grpc) = (health_node.clone(), health_grpc.clone());
            async move { health(node, grpc, q.0.unwrap_or_default()).await }
        }),
    );
    // Each probe answers for all its checks, and `/<probe>/<check>` for one of them.
    for (probe_path, checks) in [("/livez", LIVEZ_CHECKS), ("/readyz", READYZ_CHECKS)] {
        let paths = std::iter::once((probe_path.to_string(), checks))
            .chain(checks.iter().map(|c| (format!("{probe_path}/{c}"), std::slice::from_ref(c))));
        for (path, checks) in paths {
            let (node, grpc) = (node.clone(), grpc.clone());
            app = app.route(
                &path,
                get_only(move |q: axum::extract::RawQuery| {
                    let (node, grpc) = (node.clone(), grpc.clone());
                    async move { probe(checks, &node, &grpc, &q.0.unwrap_or_default()).await }
                }),
            );
        }
    }
    app
}

/// etcd 3.5.16's `/livez` checks.
const LIVEZ_CHECKS: &[&str] = &["serializable_read"];
/// etcd 3.5.16's `/readyz` checks.
const READYZ_CHECKS: &[&str] = &["data_corruption", "serializable_read", "linearizable_read"];

/// A gateway path answers POST; grpc-gateway v1 answers any other method with 501 and code 12
/// (`{"code":12,"message":"Method Not Allowed"}`), not HTTP's 405.
fn gateway_post<H, T>(handler: H) -> MethodRouter
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    post(handler).fallback(|| async { error_reply(&Status::new(Code::Unimplemented, "Method Not Allowed")) })
}

/// etcd's health handlers answer other methods with Go's plain 405 and `Allow: GET`.
fn get_only<H, T>(handler: H) -> MethodRouter
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    get(handler)
        .fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "GET")], text("Method Not Allowed\n")) })
}

fn text(body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body)
}

/// etcd 3.5 still answers its 3.3-era gateway prefix: `/v3beta/...` is served as `/v3/...`.
fn v3beta_to_v3(mut request: HttpRequest) -> HttpRequest {
    if let Some(rest) = request.uri().path().strip_prefix("/v3beta/") {
        let mut parts = request.uri().clone().into_parts();
        let query = parts.path_and_query.as_ref().and_then(|p| p.query()).map(|q| format!("?{q}")).unwrap_or_default();
        if let Ok(path) = format!("/v3/{rest}{query}").parse() {
            parts.path_and_query = Some(path);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

/// Unknown paths: a gRPC call to a service we do not have is gRPC's Unimplemented, an unknown
/// `/v3/` path is the gateway's JSON 404 (code 5), anything else Go's plain 404.
async fn fallback(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let grpc = headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let (parts, ()) = Status::unimplemented("").into_http::<()>().into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    if uri.path().starts_with("/v3/") {
        return error_reply(&Status::new(Code::NotFound, "Not Found"));
    }
    not_found_text().await
}

async fn not_found_text() -> Response {
    (StatusCode::NOT_FOUND, text("404 page not found\n")).into_response()
}

/// etcd wraps every client HTTP handler in CORS headers and answers OPTIONS itself.
async fn cors(request: HttpRequest, next: Next) -> Response {
    let mut response =
        if request.method() == Method::OPTIONS { StatusCode::OK.into_response() } else { next.run(request).await };
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert("access-control-allow-methods", HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
    headers.insert("access-control-allow-headers", HeaderValue::from_static("accept, content-type, authorization"));
    response
}

/// A request carrying the caller's credentials as gRPC metadata: `Authorization: <token>` becomes
/// the `token` etcd's auth reads, and `Grpc-Metadata-<key>` headers become `<key>`.
fn with_metadata<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let metadata = request.metadata_mut();
    if let Some(token) = headers.get(header::AUTHORIZATION).and_then(|v| MetadataValue::try_from(v.as_bytes()).ok()) {
        metadata.insert("token", token);
    }
    for (name, value) in headers {
        let Some(key) = name.as_str().strip_prefix("grpc-metadata-") else { continue };
        if let (Ok(key), Ok(value)) =
            (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_bytes()))
        {
            metadata.insert(key, value);
        }
    }
    request
}

/// The request message from a unary body. An empty body is the default request, as grpc-gateway
/// treats EOF; malformed JSON is InvalidArgument (400, code 3).
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

async fn unary<Req, Resp, F, Fut>(headers: HeaderMap, body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let request = match decode::<Req>(&body) {
        Ok(r) => r,
        Err(status) => return error_reply(&status),
    };
    match call(with_metadata(&headers, request)).await {
        Ok(reply) => json_reply(&reply.into_inner()),
        Err(status) => error_reply(&status),
    }
}

fn json_reply<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::HeaderName::from_static("grpc-metadata-content-type"), "application/grpc"),
            ],
            body,
        )
            .into_response(),
        Err(e) => error_reply(&Status::internal(e.to_string())),
    }
}

/// grpc-gateway v1's unary error: the HTTP status for the code, and `{"code":N,"message":"..."}`.
pub fn error_reply(status: &Status) -> Response {
    #[derive(Serialize)]
    struct ErrorBody<'a> {
        code: i32,
        message: &'a str,
    }
    let body =
        serde_json::to_vec(&ErrorBody { code: status.code() as i32, message: status.message() }).unwrap_or_default();
    (http_status(status.code()), [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// grpc-gateway v1's in-stream error line: `{"error":{"grpc_code":N,"http_code":H,"message":..,"http_status":..}}`.
fn stream_error_line(status: &Status) -> Bytes {
    let http = http_status(status.code());
    let line = serde_json::json!({"error": {
        "grpc_code": status.code() as i32,
        "http_code": http.as_u16(),
        "message": status.message(),
        "http_status": http.canonical_reason().unwrap_or_default(),
    }});
    let mut out = serde_json::to_vec(&line).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// A stream's replies as grpc-gateway writes them: one `{"result":<message>}` line each, and an
/// error as a last `{"error":{...}}` line. Headers go out with the first reply, so a stream that
/// fails before any message answers with the error's HTTP status, as etcd's gateway does.
async fn stream_reply<T: Serialize + Send + 'static>(mut replies: tonic::Streaming<T>) -> Response
where
    tonic::Streaming<T>: Stream<Item = Result<T, Status>>,
{
    #[derive(Serialize)]
    struct Envelope<'a, T> {
        result: &'a T,
    }
    let first = replies.next().await;
    let status = match &first {
        Some(Err(e)) => http_status(e.code()),
        _ => StatusCode::OK,
    };
    let lines = futures::stream::iter(first).chain(replies).map(|item| {
        let line = match item {
            Ok(message) => match serde_json::to_vec(&Envelope { result: &message }) {
                Ok(mut line) => {
                    line.push(b'\n');
                    Bytes::from(line)
                }
                Err(e) => stream_error_line(&Status::internal(e.to_string())),
            },
            Err(status) => stream_error_line(&status),
        };
        Ok::<_, std::convert::Infallible>(line)
    });
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("grpc-metadata-content-type"), "application/grpc"),
        ],
        Body::from_stream(lines),
    )
        .into_response()
}

async fn server_stream<Req, Resp, F, Fut>(headers: HeaderMap, body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize + Send + 'static,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
{
    let request = match decode::<Req>(&body) {
        Ok(r) => r,
        Err(status) => return error_reply(&status),
    };
    match call(with_metadata(&headers, request)).await {
        Ok(replies) => stream_reply(replies.into_inner()).await,
        Err(status) => error_reply(&status),
    }
}

async fn watch(grpc: Grpc, headers: HeaderMap, body: Body) -> Response {
    let requests = json_requests::<WatchRequest, _, _>(body.into_data_stream());
    match WatchClient::new(grpc).watch(with_metadata(&headers, requests)).await {
        Ok(replies) => stream_reply(replies.into_inner()).await,
        Err(status) => error_reply(&status),
    }
}

async fn keep_alive(grpc: Grpc, headers: HeaderMap, body: Body) -> Response {
    let requests = json_requests::<LeaseKeepAliveRequest, _, _>(body.into_data_stream());
    match LeaseClient::new(grpc).lease_keep_alive(with_metadata(&headers, requests)).await {
        Ok(replies) => stream_reply(replies.into_inner()).await,
        Err(status) => error_reply(&status),
    }
}

/// The JSON requests in a streamed body, as each one completes. The body may hold several
/// objects, separated by whitespace or not; a malformed one ends the request stream (the reply
/// stream stays open, as etcd's does once its gateway stops sending).
pub fn json_requests<T, S, E>(chunks: S) -> impl Stream<Item = T> + Send + 'static
where
    T: DeserializeOwned + Send + 'static,
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
{
    futures::stream::unfold((chunks, BytesMut::new(), false), |(mut chunks, mut buf, mut ended)| async move {
        loop {
            let mut parsed = serde_json::Deserializer::from_slice(&buf).into_iter::<T>();
            match parsed.next() {
                Some(Ok(message)) => {
                    let used = parsed.byte_offset();
                    let _ = buf.split_to(used);
                    return Some((message, (chunks, buf, ended)));
                }
                Some(Err(e)) if !e.is_eof() => return None,
                // Incomplete (or only whitespace so far): wait for more of the body.
                _ if ended => return None,
                _ => match chunks.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(_)) | None => ended = true,
                },
            }
        }
    })
}

async fn version() -> Response {
    // A struct keeps etcd's field order (`json!` would sort the keys).
    #[derive(Serialize)]
    struct Versions {
        etcdserver: &'static str,
        etcdcluster: &'static str,
    }
    let body =
        Versions { etcdserver: crate::config::ETCD_API_VERSION, etcdcluster: crate::config::ETCD_CLUSTER_VERSION };
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&body).unwrap_or_default())
        .into_response()
}

fn metrics(node: &Node) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics::render(node))
        .into_response()
}

/// The alarms raised in the cluster, as the Maintenance service lists them.
async fn alarms(grpc: &Routes) -> Result<Vec<AlarmType>, Status> {
    let request = AlarmRequest { action: AlarmAction::Get as i32, ..Default::default() };
    let reply = MaintenanceClient::new(grpc.clone()).alarm(request).await?.into_inner();
    Ok(reply.alarms.iter().map(|a| AlarmType::try_from(a.alarm).unwrap_or(AlarmType::None)).collect())
}

/// etcd's cheapest read: the key `health`, keys only, one at most.
async fn health_read(grpc: &Routes, serializable: bool) -> Result<(), Status> {
    let request =
        RangeRequest { key: b"health".to_vec(), limit: 1, keys_only: true, serializable, ..Default::default() };
    KvClient::new(grpc.clone()).range(request).await.map(|_| ())
}

fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// etcd's `/health`: alarms (those not named by `?exclude=`), then the leader (unless
/// `?serializable=true`), then a read; the first failure is the reason, with HTTP 503.
async fn health(node: Arc<Node>, grpc: Routes, query: String) -> Response {
    let excluded: Vec<&str> = query_values(&query, "exclude").collect();
    let serializable = query_values(&query, "serializable").any(|v| v == "true");
    let reason = async {
        let raised = alarms(&grpc).await.map_err(|e| format!("ALARM ERROR:{}", e.message()))?;
        for alarm in raised {
            let name = alarm.as_str_name();
            if !excluded.contains(&name) {
                return Err(format!("ALARM {name}"));
            }
        }
        if !serializable && node.raft_status().leader.is_none() {
            return Err("RAFT NO LEADER".to_string());
        }
        health_read(&grpc, serializable).await.map_err(|e| format!("RANGE ERROR:{}", e.message()))
    }
    .await
    .err();
    crate::metrics::health_checked(reason.is_none());
    let (status, healthy) = match reason {
        None => (StatusCode::OK, "true"),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "false"),
    };
    let body = serde_json::json!({"health": healthy, "reason": reason.unwrap_or_default()});
    // etcd sets no content type here, so Go's sniffing labels the JSON as text.
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body.to_string()).into_response()
}

/// etcd's `/livez` and `/readyz`: named checks, `?exclude=<check>` to skip one, `?verbose` to
/// list each; text `ok` or 503 with the failures.
async fn probe(checks: &[&str], node: &Node, grpc: &Routes, query: &str) -> Response {
    let excluded: Vec<&str> = query_values(query, "exclude").collect();
    let verbose = query_values(query, "verbose").next().is_some();
    let mut out = String::new();
    let mut failed = false;
    for &check in checks {
        // etcd leaves an excluded check out of the verbose listing too.
        if excluded.contains(&check) {
            continue;
        }
        let result = match check {
            "data_corruption" => match alarms(grpc).await {
                Ok(raised) if raised.contains(&AlarmType::Corrupt) => Err("alarm activated: CORRUPT".to_string()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.message().to_string()),
            },
            "serializable_read" => health_read(grpc, true).await.map_err(|e| e.message().to_string()),
            _ => {
                if node.raft_status().leader.is_none() {
                    Err("etcdserver: no leader".to_string())
                } else {
                    health_read(grpc, false).await.map_err(|e| e.message().to_string())
                }
            }
        };
        match result {
            Ok(()) if verbose => out.push_str(&format!("[+]{check} ok\n")),
            Ok(()) => {}
            Err(e) => {
                failed = true;
                out.push_str(&format!("[-]{check} failed: {e}\n"));
            }
        }
    }
    if failed {
        (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response()
    } else {
        out.push_str("ok\n");
        (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{RangeResponse, ResponseHeader};
    use crate::proto::mvccpb::KeyValue;

    #[test]
    fn json_uses_etcds_gateway_mapping() {
        let reply = RangeResponse {
            header: Some(ResponseHeader { cluster_id: 1, member_id: 2, revision: 3, raft_term: 0 }),
            kvs: vec![KeyValue { key: b"foo".to_vec(), create_revision: 2, version: 1, ..Default::default() }],
            more: false,
            count: 1,
        };
        let json: serde_json::Value = serde_json::to_value(&reply).unwrap();
        // Original field names, 64-bit integers as strings, bytes base64, defaults omitted.
        assert_eq!(
            json,
            serde_json::json!({
                "header": {"cluster_id": "1", "member_id": "2", "revision": "3"},
                "kvs": [{"key": "Zm9v", "create_revision": "2", "version": "1"}],
                "count": "1"
            })
        );
    }

    #[test]
    fn requests_accept_numbers_strings_enum_names_and_unknown_fields() {
        let r: RangeRequest =
            decode(br#"{"key":"Zm9v","limit":1,"revision":"2","sort_order":"DESCEND","sortTarget":"MOD","nope":1}"#)
                .unwrap();
        assert_eq!((r.key.as_slice(), r.limit, r.revision), (&b"foo"[..], 1, 2));
        assert_eq!((r.sort_order, r.sort_target), (2, 3)); // DESCEND, MOD
        assert_eq!(decode::<RangeRequest>(b"").unwrap(), RangeRequest::default());
        assert_eq!(decode::<RangeRequest>(b"{bad").unwrap_err().code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn streamed_bodies_split_into_requests_across_chunks() {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = vec![
            Ok(Bytes::from_static(br#"{"create_request":{"key":"YQ=="}}{"progr"#)),
            Ok(Bytes::from_static(b"ess_request\":{}}\n ")),
            Ok(Bytes::from_static(br#"{"cancel_request":{"watch_id":"7"}} {broken"#)),
        ];
        let got: Vec<WatchRequest> = json_requests(futures::stream::iter(chunks)).collect().await;
        assert_eq!(got.len(), 3);
        let json: Vec<String> = got.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        assert_eq!(
            json,
            [
                r#"{"create_request":{"key":"YQ=="}}"#,
                r#"{"progress_request":{}}"#,
                r#"{"cancel_request":{"watch_id":"7"}}"#
            ]
        );
    }

    #[test]
    fn authorization_header_becomes_the_token_metadata() {
        // etcd's gateway takes the bare token (no "Bearer") and passes Grpc-Metadata-* through.
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("tok.123"));
        headers.insert("grpc-metadata-hasleader", HeaderValue::from_static("true"));
        let request = with_metadata(&headers, ());
        assert_eq!(request.metadata().get("token").unwrap(), "tok.123");
        assert_eq!(request.metadata().get("hasleader").unwrap(), "true");
        assert!(with_metadata(&HeaderMap::new(), ()).metadata().get("token").is_none());
    }

    #[test]
    fn stream_errors_are_grpc_gateway_error_lines() {
        let line = stream_error_line(&Status::new(Code::InvalidArgument, "etcdserver: key is not provided"));
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"grpc_code": 3, "http_code": 400,
                "message": "etcdserver: key is not provided", "http_status": "Bad Request"}})
        );
        assert!(line.ends_with(b"\n"));
    }

    #[test]
    fn query_values_are_found_by_name() {
        let q = "exclude=NOSPACE&serializable=true&exclude=CORRUPT&verbose";
        assert_eq!(query_values(q, "exclude").collect::<Vec<_>>(), ["NOSPACE", "CORRUPT"]);
        assert_eq!(query_values(q, "verbose").collect::<Vec<_>>(), [""]);
    }
}
