//! `airlock ca serve`: the CA's HTTPS API.
//!
//! | method | path              | what                                             |
//! |--------|-------------------|--------------------------------------------------|
//! | POST   | `/v1/svid`        | `{csr, ttl?}` → `{spiffe_id, chain, bundle, expires_at}` |
//! | GET    | `/v1/bundle`      | trust bundle, PEM                                |
//! | GET    | `/v1/bundle.jwks` | trust bundle, SPIFFE bundle (JWKS)               |
//!
//! Order of checks on `POST /v1/svid`: rate limit → body size → JSON → CSR signature and
//! key type → ttl → caller authentication → issuance. Authentication comes after the cheap
//! request checks so that a malformed request never burns a single-use join token.
//!
//! The listener speaks TLS 1.3 only and presents an SVID for `spiffe://<td>/ns/airlock/sa/ca`
//! (plus DNS/IP names so `curl --cacert bundle.pem` works), renewed at half its lifetime.
//! A client certificate is optional; when one is presented it is fully verified and can
//! authenticate a renewal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_identity::{BundleStore, LeafSvid, SpiffeId, SvidStore, peer_svid, tls};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rcgen::{KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::authority::{CertificateAuthority, IssueError, ca_server_id};
use crate::csr::public_key_from_csr;
use crate::jwt::{JwtError, KubernetesAuthenticator};
use crate::ratelimit::{RateLimiter, caller_key};
use crate::tokens::{TOKEN_PREFIX, TokenError, TokenStore};

/// Lifetime of the API's own certificate (capped by `max_ttl`).
const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest request head hyper buffers before answering 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Body of `POST /v1/svid`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidRequest {
    /// PEM PKCS#10 request; only its public key is used.
    pub csr: String,
    /// Requested lifetime in seconds (default: the CA's `default_ttl`).
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// Answer of `POST /v1/svid`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SvidResponse {
    pub spiffe_id: SpiffeId,
    /// Leaf first, then the intermediate, one PEM each.
    pub chain: Vec<String>,
    /// Trust bundle roots, one PEM each.
    pub bundle: Vec<String>,
    /// RFC 3339.
    pub expires_at: String,
}

/// An API error: an HTTP status and a stable machine-readable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = json_response(self.status, &body);
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, seconds.to_string().parse().expect("digits"));
        }
        response
    }
}

impl From<IssueError> for ApiError {
    fn from(error: IssueError) -> Self {
        let (status, code) = match &error {
            IssueError::Csr(_) => (StatusCode::BAD_REQUEST, "csr_rejected"),
            IssueError::TtlTooLong { .. } | IssueError::TtlZero => {
                (StatusCode::BAD_REQUEST, "ttl_rejected")
            }
            IssueError::ForeignTrustDomain { .. } | IssueError::ReservedIdentity(_) => {
                (StatusCode::FORBIDDEN, "identity_not_permitted")
            }
            IssueError::IssuerExpired | IssueError::Sign(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        Self::new(status, code, error.to_string())
    }
}

/// How the caller of `POST /v1/svid` proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    JoinToken,
    KubernetesServiceAccount,
    SvidRenewal,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JoinToken => "join_token",
            Self::KubernetesServiceAccount => "k8s_service_account",
            Self::SvidRenewal => "svid_renewal",
        }
    }
}

/// Everything a request handler needs; shared by all connections.
pub struct CaApi {
    ca: CertificateAuthority,
    tokens: TokenStore,
    kubernetes: Option<KubernetesAuthenticator>,
    limiter: RateLimiter,
}

impl CaApi {
    /// Wraps a loaded CA; loads the Kubernetes JWKS when `ca.yaml` enables that method.
    pub fn new(ca: CertificateAuthority) -> Result<Self, crate::jwt::JwksLoadError> {
        let kubernetes = ca
            .config()
            .kubernetes
            .clone()
            .map(|k| KubernetesAuthenticator::load(k, ca.dir(), ca.trust_domain().clone()))
            .transpose()?;
        Ok(Self {
            tokens: TokenStore::new(ca.dir()),
            limiter: RateLimiter::new(ca.config().rate_limit.clone()),
            kubernetes,
            ca,
        })
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        peer_svid: Option<LeafSvid>,
    ) -> Response<Full<Bytes>> {
        let known_path = matches!(
            request.uri().path(),
            "/v1/svid" | "/v1/bundle" | "/v1/bundle.jwks"
        );
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/v1/bundle") => {
                let mut response = Response::new(Full::from(self.ca.bundle().to_pem()));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    "application/x-pem-file".parse().expect("valid"),
                );
                response
            }
            (&Method::GET, "/v1/bundle.jwks") => match self.ca.bundle().to_jwks() {
                Ok(jwks) => json_response(StatusCode::OK, &jwks),
                Err(e) => {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                        .into_response()
                }
            },
            (&Method::POST, "/v1/svid") => {
                let limit = self.ca.config().limits.request_timeout;
                match tokio::time::timeout(limit, self.issue_svid(request, peer, peer_svid)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => error.into_response(),
                    Err(_) => ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!("the request was not complete within {}s", limit.as_secs()),
                    )
                    .into_response(),
                }
            }
            _ if known_path => ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} is not allowed on {}",
                    request.method(),
                    request.uri().path()
                ),
            )
            .into_response(),
            _ => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
                .into_response(),
        }
    }

    async fn issue_svid(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        peer_svid: Option<LeafSvid>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        self.limiter
            .check(peer.ip(), Instant::now())
            .map_err(|seconds| ApiError {
                retry_after: Some(seconds),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests from this address",
                )
            })?;
        let (parts, body) = request.into_parts();
        let body = self.read_body(&parts.headers, body).await?;
        let request: SvidRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body: {e}"),
            )
        })?;
        let public_key = public_key_from_csr(&request.csr).map_err(IssueError::from)?;
        let ttl = self
            .ca
            .effective_ttl(request.ttl.map(Duration::from_secs))?;

        let (id, method) = self
            .clone()
            .authenticate(parts.headers.get(AUTHORIZATION), peer_svid)
            .await
            .inspect_err(|e| {
                tracing::warn!(target: "airlock::audit", event = "svid_refused", peer = %peer, code = e.code, reason = %e.message);
            })?;
        let issued = self.ca.issue_workload(&public_key, &id, Some(ttl))?;
        let expires_at = issued.not_after.format(&Rfc3339).expect("formattable");
        tracing::info!(
            target: "airlock::audit",
            event = "svid_issued",
            identity = %issued.id,
            serial = %issued.serial_hex,
            not_after = %expires_at,
            auth_method = method.as_str(),
            peer = %peer,
        );
        Ok(json_response(
            StatusCode::OK,
            &SvidResponse {
                spiffe_id: issued.id.clone(),
                chain: issued.chain_pem(),
                bundle: self.bundle_pems(),
                expires_at,
            },
        ))
    }

    fn bundle_pems(&self) -> Vec<String> {
        self.ca
            .bundle()
            .roots()
            .iter()
            .map(|der| airlock_identity::bundle::der_to_pem(der))
            .collect()
    }

    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        body: Incoming,
    ) -> Result<Bytes, ApiError> {
        let max = self.ca.config().limits.max_body_bytes;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body exceeds {max} bytes"),
            )
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max as u64) {
            return Err(too_large());
        }
        match Limited::new(body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the body: {e}"),
            )),
        }
    }

    /// Bearer join token, bearer service-account JWT, or (no Authorization header) the
    /// verified client SVID for a renewal of that same identity.
    async fn authenticate(
        self: Arc<Self>,
        authorization: Option<&http::HeaderValue>,
        peer_svid: Option<LeafSvid>,
    ) -> Result<(SpiffeId, AuthMethod), ApiError> {
        let unauthenticated =
            |message: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message);
        let Some(header) = authorization else {
            return match peer_svid {
                // The handshake verified the SVID, but a keep-alive connection can outlive
                // it: check its lifetime again for every request.
                Some(svid) if time::OffsetDateTime::now_utc().unix_timestamp() >= svid.not_after => Err(unauthenticated(
                    "the client certificate has expired since this connection was opened; reconnect with a valid SVID".into(),
                )),
                Some(svid) => Ok((svid.id, AuthMethod::SvidRenewal)),
                None => Err(unauthenticated(
                    "no credentials: send Authorization: Bearer <join token or service-account token>, or a valid SVID as client certificate".into(),
                )),
            };
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthenticated("the Authorization header must read \"Bearer <token>\"".into())
            })?
            .to_owned();
        if token.starts_with(TOKEN_PREFIX) {
            let api = self.clone();
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            // File lock and fsync: keep them off the async workers.
            let result = tokio::task::spawn_blocking(move || api.tokens.consume(&token, now))
                .await
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?;
            return match result {
                Ok(id) => Ok((id, AuthMethod::JoinToken)),
                Err(TokenError::Invalid) => Err(unauthenticated(TokenError::Invalid.to_string())),
                Err(other) => {
                    tracing::error!(error = %other, "join token store failure");
                    Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "join token store unavailable",
                    ))
                }
            };
        }
        let Some(kubernetes) = &self.kubernetes else {
            return Err(unauthenticated(
                "the bearer token is not a join token and Kubernetes authentication is not configured".into(),
            ));
        };
        match kubernetes.authenticate(&token) {
            Ok(id) => Ok((id, AuthMethod::KubernetesServiceAccount)),
            Err(e @ JwtError::NamespaceNotAllowed(_)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "identity_not_permitted",
                e.to_string(),
            )),
            Err(e) => Err(unauthenticated(e.to_string())),
        }
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(serde_json::to_vec(body).expect("serializable")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("valid"));
    response
}

/// Issues the API's own certificate into `store`; returns its lifetime.
fn renew_server_svid(
    ca: &CertificateAuthority,
    store: &SvidStore,
    listen: SocketAddr,
) -> Result<Duration, String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut names: Vec<SanType> = ca
        .config()
        .server_names
        .iter()
        .chain(host_name().as_ref())
        .filter_map(|n| n.as_str().try_into().ok().map(SanType::DnsName))
        .collect();
    if !listen.ip().is_unspecified() {
        names.push(SanType::IpAddress(listen.ip()));
    }
    let ttl = SERVER_CERT_TTL.min(ca.config().max_ttl);
    let issued = ca
        .issue(&key, &ca_server_id(ca.trust_domain()), Some(ttl), &names)
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    store
        .install(issued.chain, key)
        .map_err(|e| e.to_string())?;
    Ok(ttl)
}

/// The machine's host name, when it is a valid DNS name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    rustls::pki_types::DnsName::try_from(name.as_str()).ok()?;
    Some(name)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    api: CaApi,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let api = Arc::new(api);
    let provider = tls::provider();
    let store = SvidStore::new(provider);
    let lifetime = renew_server_svid(&api.ca, &store, local).map_err(std::io::Error::other)?;
    let bundle = BundleStore::new(api.ca.bundle().clone());
    let tls_config = tls::server_config(store.clone(), bundle, false, &[b"http/1.1"]);
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));
    let renewal = tokio::spawn(keep_server_svid_fresh(api.clone(), store, local, lifetime));

    let limits = api.ca.config().limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(ConnectionsPerIp::new(limits.max_connections_per_ip));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "connection limit reached; closing connection");
            continue;
        };
        let Some(ip_slot) = per_ip.clone().acquire(peer.ip()) else {
            tracing::warn!(peer = %peer, "per-address connection limit reached; closing connection");
            continue;
        };
        let acceptor = acceptor.clone();
        let api = api.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _slots = (permit, ip_slot);
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(peer = %peer, "TLS handshake timed out");
                        return;
                    }
                };
            let peer_svid = peer_svid(stream.get_ref().1);
            let service = service_fn(move |request| {
                let api = api.clone();
                let peer_svid = peer_svid.clone();
                async move { Ok::<_, Infallible>(api.handle(request, peer, peer_svid).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            // Bound the connection's age: a client must reconnect (and show its current
            // certificate again) at least this often.
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = tokio::time::sleep(limits.max_connection_age) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    renewal.abort();
    Ok(())
}

/// Open connections per caller address (IPv6 by /64), so one client cannot hold every
/// connection slot.
struct ConnectionsPerIp {
    limit: usize,
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl ConnectionsPerIp {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: std::sync::Mutex::default(),
        }
    }

    fn acquire(self: Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let key = caller_key(ip);
        let mut counts = self.counts.lock().expect("connection counter poisoned");
        let count = counts.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        drop(counts);
        Some(IpSlot { owner: self, key })
    }
}

/// One connection's share of its address's limit; released on drop.
struct IpSlot {
    owner: Arc<ConnectionsPerIp>,
    key: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self
            .owner
            .counts
            .lock()
            .expect("connection counter poisoned");
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Renews the API certificate at half its lifetime; retries every minute on failure.
async fn keep_server_svid_fresh(
    api: Arc<CaApi>,
    store: Arc<SvidStore>,
    listen: SocketAddr,
    lifetime: Duration,
) {
    let mut wait = lifetime / 2;
    loop {
        tokio::time::sleep(wait).await;
        wait = match renew_server_svid(&api.ca, &store, listen) {
            Ok(lifetime) => lifetime / 2,
            Err(e) => {
                tracing::error!(error = %e, "renewing the CA API certificate failed; retrying in 60s");
                Duration::from_secs(60)
            }
        };
    }
}
