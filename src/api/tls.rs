//! TLS on the client and peer ports: builds the rustls server configuration from etcd's TLS
//! settings (etcd's `transport.TLSInfo.ServerConfig`, for `--*-file` and `--peer-*-file` alike),
//! reloads the serving certificate when its files change, turns the listeners into one stream of
//! plain or TLS connections, exposes the verified client certificate's common name (etcd's
//! CN-as-user for `--client-cert-auth`), and builds the configuration a member dials `https://`
//! peer URLs with (etcd's `TLSInfo.ClientConfig` for its peer transport).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, RootCertStore, ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::api::coalesce::Coalesced;
use crate::config::TlsSettings;
use crate::error::TlsError;

/// How often, at most, the certificate files are checked for changes.
const RELOAD_CHECK_EVERY: Duration = Duration::from_secs(1);
/// A client that has not finished its handshake by then is dropped; handshakes run in their own
/// tasks, so this only bounds the resources a stalled client holds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every cipher-suite name etcd 3.5 accepts (Go's `tls.CipherSuites()`,
/// `tls.InsecureCipherSuites()` and the two short ChaCha20 aliases), with the rustls suite it
/// means, or `None` when rustls does not implement it. TLS 1.3 names are accepted and change
/// nothing: Go cannot restrict TLS 1.3 suites either.
const GO_CIPHER_SUITES: &[(&str, Option<CipherSuite>)] = {
    use CipherSuite as C;
    &[
        ("TLS_AES_128_GCM_SHA256", Some(C::TLS13_AES_128_GCM_SHA256)),
        ("TLS_AES_256_GCM_SHA384", Some(C::TLS13_AES_256_GCM_SHA384)),
        ("TLS_CHACHA20_POLY1305_SHA256", Some(C::TLS13_CHACHA20_POLY1305_SHA256)),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", Some(C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", Some(C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)),
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", Some(C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)),
        ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", Some(C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384)),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", Some(C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)),
        ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", Some(C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", Some(C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256)),
        ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", Some(C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_RSA_WITH_RC4_128_SHA", None),
        ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_128_CBC_SHA256", None),
        ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
        ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
        ("TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", None),
        ("TLS_ECDHE_RSA_WITH_RC4_128_SHA", None),
        ("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", None),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", None),
        ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", None),
    ]
};

/// The one crypto provider of the process (aws-lc-rs), also installed as rustls' process default
/// so that anything building a rustls config without naming a provider (tonic's client, JWT)
/// agrees with it.
pub fn provider() -> Arc<CryptoProvider> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // Fails only when a default is already installed, which is then the same provider.
    let _ = provider.clone().install_default();
    Arc::new(provider)
}

/// A rustls server configuration from one side's TLS settings (client or peer port): certificate and key reloaded on change, client certificates required and verified
/// against the trusted CA when `client_cert_auth` is set or a trusted CA file is given (etcd
/// requires them in both cases), TLS 1.2 minimum, etcd's cipher-suite names, ALPN `h2` and
/// `http/1.1`.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let base = provider();
    let suites = cipher_suites(&base, &settings.cipher_suites)?;
    let provider = Arc::new(CryptoProvider { cipher_suites: suites, ..(*base).clone() });
    let versions = protocol_versions(settings);

    let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) else {
        return Err(TlsError::MissingCertOrKey);
    };
    // Checked before any file is read: a flag mistake is reported as such.
    if settings.client_cert_auth && settings.trusted_ca_file.is_none() {
        return Err(TlsError::ClientAuthWithoutCa(settings.flag_prefix));
    }
    let resolver = Arc::new(ReloadingCert::load(cert.clone(), key.clone(), provider.clone())?);

    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = match (&settings.trusted_ca_file, settings.client_cert_auth) {
        // etcd quirk: a trusted CA file alone already requires client certificates (its
        // `TLSInfo.ServerConfig` sets RequireAndVerifyClientCert for either setting); pinned by
        // compat test `trusted_ca_alone_requires_client_certs_like_etcd`.
        (Some(ca), _) => {
            let mut roots = RootCertStore::empty();
            for der in read_certs(ca, "trusted CA file")? {
                roots.add(der)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (None, _) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // etcd serves gRPC and its HTTP/JSON gateway on the same TLS port.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The provider's suites narrowed to the named TLS 1.2 ones (all TLS 1.3 suites stay). A name Go
/// does not know fails as in etcd; known names rustls lacks are dropped with a warning.
fn cipher_suites(provider: &CryptoProvider, names: &[String]) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    if names.is_empty() {
        return Ok(provider.cipher_suites.clone());
    }
    let mut wanted = Vec::new();
    for name in names {
        match GO_CIPHER_SUITES.iter().find(|(go, _)| go == name) {
            None => return Err(TlsError::UnknownCipherSuite(name.clone())),
            Some((_, Some(suite))) => wanted.push(*suite),
            Some((_, None)) => {
                tracing::warn!(cipher_suite = %name, "cipher suite is not implemented by rustls; keel leaves it out")
            }
        }
    }
    let chosen: Vec<SupportedCipherSuite> = provider
        .cipher_suites
        .iter()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)) || wanted.contains(&s.suite()))
        .copied()
        .collect();
    if !chosen.iter().any(|s| matches!(s, SupportedCipherSuite::Tls12(_))) {
        return Err(TlsError::NoSupportedCipherSuite(names.to_vec()));
    }
    Ok(chosen)
}

/// TLS 1.2 and 1.3 within `--tls-min-version` / `--tls-max-version` (already checked by
/// `TlsSettings::validate`; etcd's default is 1.2 up to the newest).
fn protocol_versions(settings: &TlsSettings) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let min = settings.min_version.as_deref().unwrap_or("TLS1.2");
    let max = settings.max_version.as_deref().unwrap_or("TLS1.3");
    [("TLS1.2", &rustls::version::TLS12), ("TLS1.3", &rustls::version::TLS13)]
        .into_iter()
        .filter(|(name, _)| *name >= min && *name <= max)
        .map(|(_, v)| v)
        .collect()
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File { what, path: path.display().to_string(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate found".into()));
    }
    Ok(certs)
}

/// The serving certificate, re-read when the certificate or key file changes (etcd reloads its
/// certificates per handshake; checking at most once a second keeps handshakes cheap). A new pair
/// that does not load or does not match keeps the old one in service and is logged.
#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    state: Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    current: Arc<CertifiedKey>,
    stamp: FileStamp,
    checked: Instant,
}

/// What decides that a file changed: modification time and length of both files.
type FileStamp = [Option<(SystemTime, u64)>; 2];

impl ReloadingCert {
    fn load(cert_path: PathBuf, key_path: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamp = file_stamp(&cert_path, &key_path);
        let current = Arc::new(load_pair(&cert_path, &key_path, &provider)?);
        let state = Mutex::new(CertState { current, stamp, checked: Instant::now() });
        Ok(ReloadingCert { cert_path, key_path, provider, state })
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK_EVERY {
            state.checked = Instant::now();
            let stamp = file_stamp(&self.cert_path, &self.key_path);
            if stamp != state.stamp {
                // Remember the stamp even on failure: the next write changes it again, and a
                // broken file is then reported once rather than every second.
                state.stamp = stamp;
                match load_pair(&self.cert_path, &self.key_path, &self.provider) {
                    Ok(key) => {
                        tracing::info!(cert = %self.cert_path.display(), "reloaded the TLS certificate");
                        state.current = Arc::new(key);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "changed TLS certificate not loaded; keeping the previous one")
                    }
                }
            }
        }
        state.current.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn file_stamp(cert: &Path, key: &Path) -> FileStamp {
    let stamp = |p: &Path| fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    [stamp(cert), stamp(key)]
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert, "certificate file")?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "key file",
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    // from_der also checks that the key belongs to the certificate.
    Ok(CertifiedKey::from_der(chain, der, provider)?)
}

/// One accepted client connection, plain TCP or TLS, as one IO type for tonic.
pub enum ClientIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// What a handler can learn about its connection (tonic stores it in each request's extensions).
#[derive(Clone, Debug)]
pub struct ClientConnInfo {
    pub tcp: TcpConnectInfo,
    /// The verified client certificate's subject common name, on a TLS connection with one.
    pub common_name: Option<Arc<str>>,
}

impl Connected for ClientIo {
    type ConnectInfo = ClientConnInfo;

    fn connect_info(&self) -> ClientConnInfo {
        match self {
            ClientIo::Plain(tcp) => ClientConnInfo { tcp: tcp.connect_info(), common_name: None },
            ClientIo::Tls(tls) => {
                let (tcp, session) = tls.get_ref();
                let common_name = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| common_name(leaf))
                    .map(Arc::from);
                ClientConnInfo { tcp: tcp.connect_info(), common_name }
            }
        }
    }
}

/// The common name of the verified client certificate the request came with, if any: the user
/// name etcd takes when a request carries no auth token.
pub fn client_common_name<T>(request: &tonic::Request<T>) -> Option<&str> {
    request.extensions().get::<ClientConnInfo>()?.common_name.as_deref()
}

/// A certificate's subject CN. When a subject has several, Go's `pkix.Name` keeps the last one,
/// so that is the one etcd sees.
fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().last()?;
    cn.as_str().ok().map(str::to_string)
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            ClientIo::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            ClientIo::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $call
            }
        }
    };
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientIo::Plain(io) => io.is_write_vectored(),
            ClientIo::Tls(io) => io.is_write_vectored(),
        }
    }
}

/// One stream of client connections from every listener: those with an acceptor speak TLS, the
/// others plain TCP. Each accepted socket gets TCP_NODELAY, and each TLS handshake runs in its
/// own task, so a slow or hostile client never holds up other accepts. Failed handshakes are
/// logged as etcd logs them and never reach the server. The accept loops end once the returned
/// stream is dropped.
/// `endpoint` ("client" or "peer") names the port in those logs.
pub fn incoming(
    listeners: Vec<(TcpListener, Option<TlsAcceptor>)>,
    endpoint: &'static str,
) -> ReceiverStream<Result<Coalesced<ClientIo>, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    for (listener, acceptor) in listeners {
        tokio::spawn(accept_loop(listener, acceptor, endpoint, tx.clone()));
    }
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    endpoint: &'static str,
    tx: mpsc::Sender<Result<Coalesced<ClientIo>, io::Error>>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, endpoint, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small responses must not wait for the peer's delayed ACK (Nagle): etcd's Go server sets
        // TCP_NODELAY on every connection, and without it each read answers ~40 ms late.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
        match &acceptor {
            None => {
                if tx.send(Ok(Coalesced::new(ClientIo::Plain(stream)))).await.is_err() {
                    return;
                }
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(Coalesced::new(ClientIo::Tls(Box::new(tls))))).await;
                        }
                        Ok(Err(e)) => log_rejected(endpoint, remote, &e.to_string()),
                        Err(_) => log_rejected(endpoint, remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

fn log_rejected(endpoint: &'static str, remote: SocketAddr, error: &str) {
    // etcd's wording: "rejected connection on client endpoint" / "... on peer endpoint".
    tracing::warn!(remote_addr = %remote, error, "rejected connection on {endpoint} endpoint");
}

/// The acceptor for one side's `https://` listeners (client or peer), when there are any.
pub fn acceptor(settings: &TlsSettings, any_https: bool) -> Result<Option<TlsAcceptor>, TlsError> {
    if !any_https {
        return Ok(None);
    }
    Ok(Some(TlsAcceptor::from(server_config(settings)?)))
}

/// How a member dials `https://` peer URLs: the peer's certificate verified against
/// `--peer-trusted-ca-file` (and its host or IP SAN), this member's `--peer-cert-file` /
/// `--peer-key-file` presented as the client certificate that `--peer-client-cert-auth` asks
/// for. `None` without a trusted CA: Go would fall back to the system store, which Keel does not
/// read, so `https://` peers then cannot be dialed (the server refuses to start, see
/// [`TlsError::PeerDialWithoutCa`]).
pub fn peer_client_config(settings: &TlsSettings) -> Result<Option<tonic::transport::ClientTlsConfig>, TlsError> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let Some(ca) = &settings.trusted_ca_file else {
        return Ok(None);
    };
    // tonic's connector takes rustls' process default provider: make sure it is ours.
    provider();
    let read = |path: &Path, what: &'static str| {
        fs::read(path).map_err(|e| TlsError::File { what, path: path.display().to_string(), reason: e.to_string() })
    };
    // Parsed here as well, so a file without a certificate fails the start rather than each dial.
    read_certs(ca, "peer trusted CA file")?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "peer trusted CA file")?));
    if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
        config = config.identity(Identity::from_pem(read(cert, "certificate file")?, read(key, "key file")?));
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(suites: &[&str], min: Option<&str>, max: Option<&str>) -> TlsSettings {
        TlsSettings {
            cipher_suites: suites.iter().map(|s| s.to_string()).collect(),
            min_version: min.map(str::to_string),
            max_version: max.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn cipher_suite_names_follow_go() {
        let p = provider();
        // etcd's message for a name Go does not know.
        let err = cipher_suites(&p, &["FOO".to_string()]).unwrap_err();
        assert_eq!(err.to_string(), "unexpected TLS cipher suite \"FOO\"");
        // One TLS 1.2 suite kept, TLS 1.3 suites untouched; the short ChaCha alias is Go's too.
        let only = cipher_suites(&p, &["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".to_string()]).unwrap();
        let tls12: Vec<_> = only.iter().filter(|s| matches!(s, SupportedCipherSuite::Tls12(_))).collect();
        assert_eq!(tls12.len(), 1);
        assert_eq!(tls12[0].suite(), CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256);
        assert_eq!(only.iter().filter(|s| matches!(s, SupportedCipherSuite::Tls13(_))).count(), 3);
        // Known to Go, missing from rustls: dropped, and alone they leave TLS 1.2 without suites.
        let cbc = ["TLS_RSA_WITH_AES_128_CBC_SHA".to_string()];
        assert!(matches!(cipher_suites(&p, &cbc), Err(TlsError::NoSupportedCipherSuite(_))));
    }

    #[test]
    fn versions_span_min_to_max() {
        let names = |s: &TlsSettings| protocol_versions(s).iter().map(|v| v.version).collect::<Vec<_>>();
        use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
        assert_eq!(names(&settings(&[], None, None)), vec![TLSv1_2, TLSv1_3]);
        assert_eq!(names(&settings(&[], Some("TLS1.3"), None)), vec![TLSv1_3]);
        assert_eq!(names(&settings(&[], None, Some("TLS1.2"))), vec![TLSv1_2]);
    }

    /// Certificates from `scripts/gen-certs.sh` in a temp dir.
    fn gen_certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-certs.sh");
        let status = std::process::Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        dir
    }

    #[test]
    fn client_auth_needs_a_trusted_ca() {
        let dir = gen_certs();
        let mut s = TlsSettings {
            cert_file: Some(dir.path().join("server.crt")),
            key_file: Some(dir.path().join("server.key")),
            client_cert_auth: true,
            ..Default::default()
        };
        assert!(matches!(server_config(&s), Err(TlsError::ClientAuthWithoutCa(""))));
        let no_key = TlsSettings { key_file: None, ..s.clone() };
        assert!(matches!(server_config(&no_key), Err(TlsError::MissingCertOrKey)));
        s.trusted_ca_file = Some(dir.path().join("ca.crt"));
        let config = server_config(&s).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        // A key that does not belong to the certificate is refused at start.
        s.key_file = Some(dir.path().join("peer.key"));
        assert!(matches!(server_config(&s), Err(TlsError::Rustls(_))));
    }

    #[test]
    fn certificate_reloads_when_files_change_and_keeps_the_old_one_when_broken() {
        let dir = gen_certs();
        let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
        let resolver = ReloadingCert::load(cert.clone(), key.clone(), provider()).unwrap();
        let first = resolver.current();
        // A broken certificate file: the old pair stays in service.
        fs::write(&cert, "not a certificate").unwrap();
        std::thread::sleep(RELOAD_CHECK_EVERY + Duration::from_millis(100));
        assert!(Arc::ptr_eq(&first, &resolver.current()));
        // A valid new pair (the peer certificate, a different serial and key) is picked up.
        fs::copy(dir.path().join("peer.crt"), &cert).unwrap();
        fs::copy(dir.path().join("peer.key"), &key).unwrap();
        std::thread::sleep(RELOAD_CHECK_EVERY + Duration::from_millis(100));
        let now = resolver.current();
        assert_ne!(first.cert[0], now.cert[0]);
        assert_eq!(common_name(&now.cert[0]).as_deref(), Some("keel-peer"));
        assert_eq!(common_name(&first.cert[0]).as_deref(), Some("keel-server"));
    }

    /// A rustls client presenting `client.crt` and trusting `ca.crt`.
    fn client_connector(dir: &Path) -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        for der in read_certs(&dir.join("ca.crt"), "CA").unwrap() {
            roots.add(der).unwrap();
        }
        let chain = read_certs(&dir.join("client.crt"), "client").unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("client.key")).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    #[tokio::test]
    async fn incoming_serves_plain_and_tls_and_a_stalled_handshake_blocks_nobody() {
        use futures::StreamExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = gen_certs();
        let settings = TlsSettings {
            cert_file: Some(dir.path().join("server.crt")),
            key_file: Some(dir.path().join("server.key")),
            trusted_ca_file: Some(dir.path().join("ca.crt")),
            client_cert_auth: true,
            ..Default::default()
        };
        let acceptor = acceptor(&settings, true).unwrap();
        let tls_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tls_addr, plain_addr) = (tls_listener.local_addr().unwrap(), plain_listener.local_addr().unwrap());
        let mut conns = incoming(vec![(tls_listener, acceptor), (plain_listener, None)], "client");

        // A client that connects and never says hello must not hold up the next one.
        let _stalled = TcpStream::connect(tls_addr).await.unwrap();
        let connector = client_connector(dir.path());
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(tls_addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(b"ping").await.unwrap();
            tls.flush().await.unwrap();
            let mut back = [0u8; 4];
            tls.read_exact(&mut back).await.unwrap();
            back
        });
        let mut server_side =
            tokio::time::timeout(Duration::from_secs(5), conns.next()).await.unwrap().unwrap().unwrap();
        let info = server_side.connect_info();
        assert!(matches!(server_side.get_ref(), ClientIo::Tls(_)));
        // gen-certs.sh names its client "root", which etcd would take as the user.
        assert_eq!(info.common_name.as_deref(), Some("root"));
        assert_eq!(info.tcp.local_addr(), Some(tls_addr));
        let mut got = [0u8; 4];
        server_side.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server_side.write_all(b"pong").await.unwrap();
        server_side.flush().await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");

        // A tonic request carrying this connection's info yields the CN.
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(info);
        assert_eq!(client_common_name(&request), Some("root"));
        assert_eq!(client_common_name(&tonic::Request::new(())), None);

        // The plaintext listener hands over plain TCP, without a CN.
        let _plain = TcpStream::connect(plain_addr).await.unwrap();
        let plain = tokio::time::timeout(Duration::from_secs(5), conns.next()).await.unwrap().unwrap().unwrap();
        assert!(matches!(plain.get_ref(), ClientIo::Plain(_)));
        assert!(plain.connect_info().common_name.is_none());
    }
}
