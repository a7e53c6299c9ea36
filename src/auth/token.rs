//! Auth tokens as etcd 3.5 issues and checks them (server/auth/simple_token.go, jwt.go, options.go):
//! `--auth-token simple` (random per-member tokens, forgotten on restart) or
//! `--auth-token jwt,pub-key=...,priv-key=...,sign-method=...,ttl=...` (signed, valid on any member).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::auth::AuthInfo;

/// Why `--auth-token` cannot be used; the server refuses to start, as etcd does.
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("auth: invalid auth options: {0}")]
    InvalidOptions(String),
    #[error("auth: invalid auth signature method: {0}")]
    InvalidMethod(String),
    #[error("auth: cannot read key file {path}: {source}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("auth: invalid key in {path}: {reason}")]
    BadKey { path: String, reason: String },
}

/// The token machinery one member runs.
pub enum TokenProvider {
    Simple(SimpleTokens),
    Jwt(JwtTokens),
}

impl TokenProvider {
    /// Read `--auth-token` (and `--auth-token-ttl`, which only simple tokens use).
    pub fn from_flags(auth_token: &str, simple_ttl: Duration) -> Result<Self, TokenConfigError> {
        let mut parts = auth_token.split(',');
        match parts.next().unwrap_or("") {
            "simple" => Ok(TokenProvider::Simple(SimpleTokens::new(simple_ttl))),
            "jwt" => Ok(TokenProvider::Jwt(JwtTokens::from_options(parts)?)),
            other => Err(TokenConfigError::InvalidOptions(format!("unknown token type {other:?}"))),
        }
    }

    pub fn is_simple(&self) -> bool {
        matches!(self, TokenProvider::Simple(_))
    }

    /// Issue a token for `username` (apply of Authenticate). `simple_prefix` and `index` come
    /// from the raft entry so every member registers the same simple token.
    pub fn assign(&self, username: &str, auth_revision: u64, simple_prefix: &str, index: u64) -> Option<String> {
        match self {
            TokenProvider::Simple(s) => Some(s.assign(username, simple_prefix, index)),
            TokenProvider::Jwt(j) => j.assign(username, auth_revision),
        }
    }

    /// Who a token names. Simple tokens carry no revision: etcd answers with the store's current
    /// one (`current_revision`), so they go stale only while a request is in flight.
    pub fn info(&self, token: &str, current_revision: u64) -> Option<AuthInfo> {
        match self {
            TokenProvider::Simple(s) => s.info(token).map(|username| AuthInfo { username, revision: current_revision }),
            TokenProvider::Jwt(j) => j.info(token),
        }
    }

    /// Forget a user's simple tokens (user deleted, password changed). JWTs cannot be recalled;
    /// the auth revision bump makes them stale instead.
    pub fn invalidate_user(&self, username: &str) {
        if let TokenProvider::Simple(s) = self {
            s.invalidate_user(username);
        }
    }

    /// Auth disabled: every simple token is dropped (etcd's `tokenSimple.disable`).
    pub fn disable(&self) {
        if let TokenProvider::Simple(s) = self {
            s.clear();
        }
    }
}

/// A fresh simple-token prefix: 16 random ASCII letters, chosen by the proposing member before
/// raft (etcd's `GenTokenPrefix`) so that apply stays deterministic.
pub fn simple_token_prefix() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..16).map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char).collect()
}

/// Simple tokens: `<prefix>.<raft index>` mapped to a user, in memory only. Each use pushes the
/// expiry `ttl` ahead (etcd's `simpleTokenKeeper.resetSimpleToken`). The deadlines use this
/// member's clock, which is fine for apply: they never reach the replicated state.
pub struct SimpleTokens {
    ttl: Duration,
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> Self {
        SimpleTokens { ttl, tokens: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, username: &str, prefix: &str, index: u64) -> String {
        let token = format!("{prefix}.{index}");
        let now = Instant::now();
        let mut tokens = self.lock();
        // Expired tokens are dropped lazily; sweep here so unused ones cannot pile up.
        tokens.retain(|_, (_, deadline)| *deadline > now);
        tokens.insert(token.clone(), (username.to_string(), now + self.ttl));
        token
    }

    fn info(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.lock();
        let (username, deadline) = tokens.get_mut(token)?;
        if *deadline <= now {
            tokens.remove(token);
            return None;
        }
        *deadline = now + self.ttl;
        Some(username.clone())
    }

    fn invalidate_user(&self, username: &str) {
        self.lock().retain(|_, (user, _)| user != username);
    }

    fn clear(&self) {
        self.lock().clear();
    }
}

/// The claims etcd puts in its JWTs. Field order is JSON key order: Go marshals a map's keys sorted.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub exp: i64,
    pub revision: u64,
    pub username: String,
}

/// Signed tokens (etcd's `tokenJWT`): claims `username`, `revision` (the auth revision when
/// issued) and `exp`. Any member holding the public key can verify them.
pub struct JwtTokens {
    keys: JwtKeys,
    ttl: Duration,
}

/// The one seam between the two JWS implementations; the claims logic around it is shared.
enum JwtKeys {
    /// Every method jsonwebtoken implements.
    Jose {
        algorithm: Algorithm,
        /// None when only the public key was given: etcd then verifies but cannot issue.
        encoding: Option<EncodingKey>,
        decoding: DecodingKey,
    },
    /// ES512 (ECDSA P-521 with SHA-512), which etcd accepts and jsonwebtoken lacks.
    Es512(es512::Es512Keys),
}

impl JwtTokens {
    /// Parse the `key=value` options after `jwt`. etcd knows exactly `pub-key`, `priv-key`,
    /// `sign-method` (required) and `ttl` (a Go duration, default 5m).
    fn from_options<'a>(options: impl Iterator<Item = &'a str>) -> Result<Self, TokenConfigError> {
        let mut pub_key = None;
        let mut priv_key = None;
        let mut method = None;
        let mut ttl = Duration::from_secs(300);
        for option in options {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| TokenConfigError::InvalidOptions(format!("option {option:?} is not key=value")))?;
            match key {
                "pub-key" => pub_key = Some(value.to_string()),
                "priv-key" => priv_key = Some(value.to_string()),
                "sign-method" => method = Some(value.to_string()),
                "ttl" => {
                    ttl = crate::config::parse_go_duration(value)
                        .map_err(|e| TokenConfigError::InvalidOptions(format!("ttl {value:?}: {e}")))?
                }
                other => return Err(TokenConfigError::InvalidOptions(format!("unknown option {other:?}"))),
            }
        }
        let method = method.ok_or_else(|| TokenConfigError::InvalidOptions("sign-method is required".into()))?;
        let read = |path: &str| {
            std::fs::read(path).map_err(|source| TokenConfigError::KeyFile { path: path.to_string(), source })
        };
        if method == es512::METHOD {
            let path = pub_key.ok_or_else(|| TokenConfigError::InvalidOptions("pub-key is required".into()))?;
            let bad = |path: &str, reason: String| TokenConfigError::BadKey { path: path.to_string(), reason };
            let public = es512::Es512Keys::public_key(&read(&path)?).map_err(|e| bad(&path, e))?;
            let signing = match priv_key {
                None => None,
                Some(path) => Some(es512::Es512Keys::private_key(&read(&path)?).map_err(|e| bad(&path, e))?),
            };
            return Ok(JwtTokens { keys: JwtKeys::Es512(es512::Es512Keys { signing, public }), ttl });
        }
        let algorithm = Algorithm::from_str(&method).map_err(|_| TokenConfigError::InvalidMethod(method.clone()))?;
        let bad = |path: &str, e: jsonwebtoken::errors::Error| TokenConfigError::BadKey {
            path: path.to_string(),
            reason: e.to_string(),
        };
        let (encoding, decoding) = match algorithm {
            // HMAC: the private key file's bytes are the shared secret (etcd does the same).
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let path = priv_key.ok_or_else(|| TokenConfigError::InvalidOptions("priv-key is required".into()))?;
                let secret = read(&path)?;
                (Some(EncodingKey::from_secret(&secret)), DecodingKey::from_secret(&secret))
            }
            _ => {
                let path = pub_key.ok_or_else(|| TokenConfigError::InvalidOptions("pub-key is required".into()))?;
                let public = read(&path)?;
                let decoding = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&public),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&public),
                    _ => DecodingKey::from_rsa_pem(&public),
                }
                .map_err(|e| bad(&path, e))?;
                let encoding = match priv_key {
                    None => None,
                    Some(path) => {
                        let private = read(&path)?;
                        Some(
                            match algorithm {
                                Algorithm::ES256 | Algorithm::ES384 => ec_private_key(&private),
                                Algorithm::EdDSA => EncodingKey::from_ed_pem(&private),
                                _ => EncodingKey::from_rsa_pem(&private),
                            }
                            .map_err(|e| bad(&path, e))?,
                        )
                    }
                };
                (encoding, decoding)
            }
        };
        Ok(JwtTokens { keys: JwtKeys::Jose { algorithm, encoding, decoding }, ttl })
    }

    fn assign(&self, username: &str, revision: u64) -> Option<String> {
        let claims = Claims { exp: unix_now() + self.ttl.as_secs() as i64, revision, username: username.to_string() };
        let signed = match &self.keys {
            JwtKeys::Jose { algorithm, encoding, .. } => {
                jsonwebtoken::encode(&Header::new(*algorithm), &claims, encoding.as_ref()?).map_err(|e| e.to_string())
            }
            JwtKeys::Es512(keys) => keys.sign(&claims)?,
        };
        match signed {
            Ok(token) => Some(token),
            Err(e) => {
                tracing::warn!(error = %e, "failed to sign a JWT");
                None
            }
        }
    }

    fn info(&self, token: &str) -> Option<AuthInfo> {
        let claims = match &self.keys {
            JwtKeys::Jose { algorithm, decoding, .. } => {
                let mut validation = Validation::new(*algorithm);
                // Expiry is judged below, the same way for both paths: jsonwebtoken still accepts
                // a token in its `exp` second (and adds 60 s of leeway by default).
                validation.validate_exp = false;
                jsonwebtoken::decode::<Claims>(token, decoding, &validation).ok()?.claims
            }
            JwtKeys::Es512(keys) => keys.verify(token)?,
        };
        // golang-jwt v4 (`MapClaims.VerifyExpiresAt`): valid only while now, in whole seconds, is
        // strictly before `exp`; no clock skew allowed.
        if unix_now() >= claims.exp {
            return None;
        }
        Some(AuthInfo { username: claims.username, revision: claims.revision })
    }
}

/// Seconds since the Unix epoch, the unit of the `exp` claim.
fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// ES512 JWS as golang-jwt (and so etcd) writes it: header `{"alg":"ES512","typ":"JWT"}`, the
/// claims JSON, and a signature that is r || s, each 66 bytes big-endian (RFC 7518 section 3.4),
/// all three base64url without padding.
mod es512 {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, ParsedPublicKey, ECDSA_P521_SHA512_FIXED, ECDSA_P521_SHA512_FIXED_SIGNING,
    };
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};

    use super::Claims;

    pub const METHOD: &str = "ES512";
    /// golang-jwt marshals the header map with sorted keys, so this is byte for byte etcd's.
    const HEADER: &str = r#"{"alg":"ES512","typ":"JWT"}"#;

    pub struct Es512Keys {
        /// None when only the public key was given: etcd then verifies but cannot issue.
        pub signing: Option<EcdsaKeyPair>,
        pub public: ParsedPublicKey,
    }

    #[derive(serde::Deserialize)]
    struct JwsHeader {
        alg: String,
    }

    impl Es512Keys {
        /// A P-521 private key from PEM: PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY` (what
        /// `openssl ecparam -genkey` writes); golang-jwt reads both.
        pub fn private_key(pem: &[u8]) -> Result<EcdsaKeyPair, String> {
            let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
            let der = match &der {
                PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
                PrivateKeyDer::Sec1(k) => k.secret_sec1_der(),
                _ => return Err("not an EC private key".into()),
            };
            EcdsaKeyPair::from_private_key_der(&ECDSA_P521_SHA512_FIXED_SIGNING, der).map_err(|e| e.to_string())
        }

        /// A P-521 public key from an SPKI `PUBLIC KEY` PEM.
        pub fn public_key(pem: &[u8]) -> Result<ParsedPublicKey, String> {
            let der = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
            ParsedPublicKey::new(&ECDSA_P521_SHA512_FIXED, der.as_ref()).map_err(|e| e.to_string())
        }

        /// None when there is no private key (the member cannot issue tokens).
        pub fn sign(&self, claims: &Claims) -> Option<Result<String, String>> {
            let key = self.signing.as_ref()?;
            Some((|| {
                let payload = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
                let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(payload));
                let signature = key.sign(&SystemRandom::new(), input.as_bytes()).map_err(|e| e.to_string())?;
                Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
            })())
        }

        /// The claims of a token signed by our key pair, or None when it is malformed or signed
        /// with another method or key. Expiry is the caller's, shared with the other methods.
        pub fn verify(&self, token: &str) -> Option<Claims> {
            let mut parts = token.split('.');
            let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() {
                return None;
            }
            // etcd's key function refuses a token whose header names another method.
            let alg: JwsHeader = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
            if alg.alg != METHOD {
                return None;
            }
            let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
            let input = &token[..header.len() + 1 + payload.len()];
            self.public.verify_sig(input.as_bytes(), &signature).ok()?;
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
        }
    }
}

/// An EC private key from PEM. etcd (golang-jwt) accepts SEC1 `EC PRIVATE KEY` files, which
/// `openssl ecparam -genkey` writes, as well as PKCS#8; jsonwebtoken reads only PKCS#8, so a SEC1
/// key is wrapped into PKCS#8 first.
fn ec_private_key(pem: &[u8]) -> Result<EncodingKey, jsonwebtoken::errors::Error> {
    use base64::Engine as _;
    const SEC1_BEGIN: &str = "-----BEGIN EC PRIVATE KEY-----";
    const SEC1_END: &str = "-----END EC PRIVATE KEY-----";
    let text = String::from_utf8_lossy(pem);
    let Some(start) = text.find(SEC1_BEGIN) else {
        return EncodingKey::from_ec_pem(pem);
    };
    let body = &text[start + SEC1_BEGIN.len()..];
    let body = &body[..body.find(SEC1_END).unwrap_or(body.len())];
    let body: String = body.lines().filter(|l| !l.contains(':')).collect::<String>();
    let invalid = || jsonwebtoken::errors::Error::from(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat);
    let sec1 = base64::engine::general_purpose::STANDARD.decode(body.trim()).map_err(|_| invalid())?;
    let pkcs8 = sec1_to_pkcs8(&sec1).ok_or_else(invalid)?;
    Ok(EncodingKey::from_ec_der(&pkcs8))
}

/// Wrap a SEC1 `ECPrivateKey` (RFC 5915) in a PKCS#8 `PrivateKeyInfo` (RFC 5208), taking the
/// curve from the key's own `[0] parameters` field.
fn sec1_to_pkcs8(sec1: &[u8]) -> Option<Vec<u8>> {
    /// One DER element at `at`: (tag, content start, content end).
    fn element(der: &[u8], at: usize) -> Option<(u8, usize, usize)> {
        let tag = *der.get(at)?;
        let first = *der.get(at + 1)? as usize;
        let (len, start) = if first < 0x80 {
            (first, at + 2)
        } else {
            let n = first & 0x7f;
            let bytes = der.get(at + 2..at + 2 + n)?;
            (bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), at + 2 + n)
        };
        let end = start.checked_add(len)?;
        (end <= der.len()).then_some((tag, start, end))
    }
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }
    let (tag, mut at, end) = element(sec1, 0)?;
    if tag != 0x30 {
        return None;
    }
    let mut curve = None;
    while at < end {
        let (tag, start, stop) = element(sec1, at)?;
        if tag == 0xa0 {
            curve = Some(sec1[start..stop].to_vec()); // the curve's OID element
        }
        at = stop;
    }
    const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let algorithm = der(0x30, &[EC_PUBLIC_KEY_OID, &curve?].concat());
    Some(der(0x30, &[&[0x02, 0x01, 0x00][..], &algorithm, &der(0x04, sec1)].concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_look_like_etcds_and_expire() {
        let prefix = simple_token_prefix();
        assert_eq!(prefix.len(), 16);
        assert!(prefix.chars().all(|c| c.is_ascii_alphabetic()));
        let tokens = SimpleTokens::new(Duration::from_millis(50));
        let token = tokens.assign("alice", &prefix, 42);
        assert_eq!(token, format!("{prefix}.42"));
        assert_eq!(tokens.info(&token).as_deref(), Some("alice"));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(tokens.info(&token), None);
    }

    #[test]
    fn simple_tokens_are_dropped_per_user() {
        let tokens = SimpleTokens::new(Duration::from_secs(60));
        let a = tokens.assign("alice", "aaaaaaaaaaaaaaaa", 1);
        let b = tokens.assign("bob", "bbbbbbbbbbbbbbbb", 2);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.info(&a), None);
        assert_eq!(tokens.info(&b).as_deref(), Some("bob"));
        tokens.clear();
        assert_eq!(tokens.info(&b), None);
    }

    #[test]
    fn jwt_round_trip_with_hmac_and_forgery_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secret");
        std::fs::write(&key, b"a shared secret").unwrap();
        let flag = format!("jwt,priv-key={},sign-method=HS256,ttl=1m", key.display());
        let provider = TokenProvider::from_flags(&flag, Duration::from_secs(300)).unwrap();
        let token = provider.assign("root", 7, "", 0).unwrap();
        assert_eq!(provider.info(&token, 99), Some(AuthInfo { username: "root".into(), revision: 7 }));
        // Flip one character of the signature.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(provider.info(std::str::from_utf8(&forged).unwrap(), 99), None);
        assert_eq!(provider.info("not-a-token", 99), None);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(TokenProvider::from_flags("jwt,sign-method=RS256,bogus=1", Duration::from_secs(1)).is_err());
        assert!(TokenProvider::from_flags("jwt,pub-key=/nonexistent", Duration::from_secs(1)).is_err());
        assert!(TokenProvider::from_flags("jwt,sign-method=ES512,pub-key=/x", Duration::from_secs(1)).is_err());
        assert!(TokenProvider::from_flags("opaque", Duration::from_secs(1)).is_err());
    }

    /// A fresh P-521 key pair written as PEM files: (PKCS#8 private, SEC1 private, SPKI public).
    fn p521_pem_files(dir: &std::path::Path, name: &str) -> (String, String, String) {
        ec_pem_files(dir, name, &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED_SIGNING)
    }

    fn ec_pem_files(
        dir: &std::path::Path,
        name: &str,
        curve: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
    ) -> (String, String, String) {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _};
        use base64::Engine as _;
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
            format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
        };
        let key = EcdsaKeyPair::generate(curve).unwrap();
        let files = [
            ("pkcs8", pem("PRIVATE KEY", key.to_pkcs8v1().unwrap().as_ref())),
            ("sec1", pem("EC PRIVATE KEY", key.private_key().as_der().unwrap().as_ref())),
            ("pub", pem("PUBLIC KEY", key.public_key().as_der().unwrap().as_ref())),
        ];
        let paths: Vec<String> = files
            .iter()
            .map(|(kind, text)| {
                let path = dir.join(format!("{name}.{kind}"));
                std::fs::write(&path, text).unwrap();
                path.to_str().unwrap().to_string()
            })
            .collect();
        (paths[0].clone(), paths[1].clone(), paths[2].clone())
    }

    fn es512_provider(priv_key: &str, pub_key: &str) -> TokenProvider {
        let flag = format!("jwt,pub-key={pub_key},priv-key={priv_key},sign-method=ES512,ttl=1m");
        TokenProvider::from_flags(&flag, Duration::from_secs(300)).unwrap()
    }

    #[test]
    fn es512_tokens_round_trip_with_pkcs8_and_sec1_keys() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (pkcs8, sec1, public) = p521_pem_files(dir.path(), "a");
        let from_pkcs8 = es512_provider(&pkcs8, &public);
        let from_sec1 = es512_provider(&sec1, &public);
        let decode = |part: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap();
        for (issuer, checker) in [(&from_pkcs8, &from_sec1), (&from_sec1, &from_pkcs8)] {
            let token = issuer.assign("root", 7, "", 0).unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            assert_eq!(decode(parts[0]), br#"{"alg":"ES512","typ":"JWT"}"#);
            let claims: Claims = serde_json::from_slice(&decode(parts[1])).unwrap();
            assert_eq!((claims.username.as_str(), claims.revision), ("root", 7));
            // r || s, 66 bytes each, as golang-jwt writes ES512 signatures.
            assert_eq!(decode(parts[2]).len(), 132);
            assert_eq!(checker.info(&token, 99), Some(AuthInfo { username: "root".into(), revision: 7 }));
        }
        // A member with only the public key verifies but cannot issue.
        let verify_only =
            TokenProvider::from_flags(&format!("jwt,pub-key={public},sign-method=ES512"), Duration::from_secs(300))
                .unwrap();
        assert_eq!(verify_only.assign("root", 1, "", 0), None);
        let token = from_pkcs8.assign("bob", 3, "", 0).unwrap();
        assert_eq!(verify_only.info(&token, 0), Some(AuthInfo { username: "bob".into(), revision: 3 }));
    }

    #[test]
    fn es512_forged_foreign_and_expired_tokens_are_refused() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let (key, _, public) = p521_pem_files(dir.path(), "a");
        let (other_key, _, other_public) = p521_pem_files(dir.path(), "b");
        let provider = es512_provider(&key, &public);
        let token = provider.assign("root", 7, "", 0).unwrap();
        // Flip one character of the signature.
        let mut forged = token.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(provider.info(std::str::from_utf8(&forged).unwrap(), 99), None);
        // Claims changed under the original signature.
        let parts: Vec<&str> = token.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = b64.encode(br#"{"exp":99999999999,"revision":7,"username":"mallory"}"#);
        assert_eq!(provider.info(&format!("{}.{claims}.{}", parts[0], parts[2]), 99), None);
        // Another key pair: its tokens are refused here and ours there.
        let other = es512_provider(&other_key, &other_public);
        assert_eq!(provider.info(&other.assign("root", 7, "", 0).unwrap(), 99), None);
        assert_eq!(other.info(&token, 99), None);
        // A header naming another method is refused even with our signature.
        let es256 = b64.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        assert_eq!(provider.info(&format!("{es256}.{}.{}", parts[1], parts[2]), 99), None);
        assert_eq!(provider.info("not-a-token", 99), None);
        assert_eq!(provider.info(&format!("{token}.x"), 99), None);
        // Expiry: a token is dead in its `exp` second already (golang-jwt's strict
        // `now.Before(exp)`), so one issued with ttl 0 is refused at once, whatever the method.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret").unwrap();
        for flag in [
            format!("jwt,pub-key={public},priv-key={key},sign-method=ES512,ttl=0s"),
            format!("jwt,priv-key={},sign-method=HS256,ttl=0s", secret.display()),
        ] {
            let expired = TokenProvider::from_flags(&flag, Duration::from_secs(300)).unwrap();
            let token = expired.assign("root", 7, "", 0).unwrap();
            assert_eq!(expired.info(&token, 99), None, "{flag}");
        }
    }

    #[test]
    fn es512_refuses_keys_that_are_not_p521() {
        let dir = tempfile::tempdir().unwrap();
        let (key, sec1, public) = p521_pem_files(dir.path(), "a");
        let (p256_key, p256_sec1, p256_public) =
            ec_pem_files(dir.path(), "p256", &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING);
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"not a pem").unwrap();
        let garbage = garbage.to_str().unwrap();
        for (priv_key, pub_key) in [
            (&key, &p256_public),
            (&p256_key, &public),
            (&p256_sec1, &public),
            (&sec1, &garbage.to_string()),
            (&garbage.to_string(), &public),
        ] {
            let flag = format!("jwt,pub-key={pub_key},priv-key={priv_key},sign-method=ES512");
            assert!(
                matches!(
                    TokenProvider::from_flags(&flag, Duration::from_secs(1)),
                    Err(TokenConfigError::BadKey { .. })
                ),
                "{priv_key} / {pub_key} accepted"
            );
        }
    }
}
