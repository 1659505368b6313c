//! `airlock ca serve`: the CA's HTTPS API.
//!
//! | method | path              | what                                             |
//! |--------|-------------------|--------------------------------------------------|
//! | POST   | `/v1/svid`        | `{csr, ttl?}` → `{spiffe_id, chain, bundle, expires_at}` |
//! | GET    | `/v1/bundle`      | trust bundle, PEM                                |
//! | GET    | `/v1/bundle.jwks` | trust bundle, SPIFFE bundle (JWKS)               |
//! | GET    | `/v1/revocations` | the deny list of revoked SVIDs and identities (JSON) |
//!
//! Order of checks on `POST /v1/svid`: rate limit → body size → JSON → CSR signature and
//! key type → ttl → caller authentication (nothing spent yet) → deny list → for a
//! renewal, the current issuer → issuance → only then is a join token spent, once, and
//! outside the request timeout, so a token is never burnt on a request that returns no
//! certificate.
//!
//! The deny list, the Kubernetes JWKS and (with a passphrase, as `ca serve` runs) the
//! issuing pair and bundle are re-read when their files change ([`crate::reload`]).
//!
//! The listener, its TLS and its own certificate are [`crate::listener`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_identity::{LeafSvid, SpiffeId};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;

use crate::authority::{CertificateAuthority, IssueError};
use crate::csr::public_key_from_csr;
use crate::jwt::JwtError;
use crate::ratelimit::RateLimiter;
use crate::reload::{LiveCa, StartError};
use crate::tokens::{TOKEN_PREFIX, TokenError, TokenStore};
use crate::wire::{SvidRequest, SvidResponse};

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
            IssueError::Revoked(_) => (StatusCode::FORBIDDEN, "identity_revoked"),
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
    /// `Authorization: Bearer airlock-join.…`: a join token, spent once the SVID is signed.
    JoinToken,
    /// `Authorization: Bearer <JWT>`: a Kubernetes projected service-account token.
    KubernetesServiceAccount,
    /// No Authorization header: the current SVID, presented as TLS client certificate.
    SvidRenewal,
}

impl AuthMethod {
    /// The value of the audit log's `auth_method` field: `join_token`,
    /// `k8s_service_account` or `svid_renewal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::JoinToken => "join_token",
            Self::KubernetesServiceAccount => "k8s_service_account",
            Self::SvidRenewal => "svid_renewal",
        }
    }
}

/// A verified client certificate: what it says, and the certificate itself.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The leaf's SPIFFE ID, validity and serial.
    pub svid: LeafSvid,
    /// The leaf as sent, to check which issuing certificate signed it.
    pub der: CertificateDer<'static>,
}

/// A caller that authenticated, with what is left to spend once the certificate exists.
struct Authenticated {
    id: SpiffeId,
    method: AuthMethod,
    /// A join token, redeemed only after issuance succeeded.
    token: Option<String>,
    /// For a renewal: the serial of the SVID presented, so the audit log links each SVID
    /// to the one it replaced.
    renewed_from: Option<String>,
}

/// Everything a request handler needs; shared by all connections. What files can change
/// lives in [`LiveCa`].
pub struct CaApi {
    pub(crate) live: Arc<LiveCa>,
    tokens: TokenStore,
    limiter: RateLimiter,
}

impl CaApi {
    /// Serves a loaded CA whose issuer stays fixed (the deny list and JWKS still follow
    /// their files).
    pub fn new(ca: CertificateAuthority) -> Result<Self, StartError> {
        Ok(Self::from_live(LiveCa::new(ca)?))
    }

    /// Serves `live`; its issuer follows its files when built with
    /// [`LiveCa::reloading_keys`]. The rate limit is the one `ca.yaml` set at this call.
    pub fn from_live(live: LiveCa) -> Self {
        let ca = live.ca();
        Self {
            tokens: TokenStore::new(ca.dir()),
            limiter: RateLimiter::new(ca.config().rate_limit.clone()),
            live: Arc::new(live),
        }
    }

    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        peer_cert: Option<PeerCertificate>,
    ) -> Response<Full<Bytes>> {
        let known_path = matches!(
            request.uri().path(),
            "/v1/svid" | "/v1/bundle" | "/v1/bundle.jwks" | "/v1/revocations"
        );
        let ca = self.live.ca();
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/v1/bundle") => {
                let mut response = Response::new(Full::from(ca.bundle().to_pem()));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    "application/x-pem-file".parse().expect("valid"),
                );
                response
            }
            (&Method::GET, "/v1/bundle.jwks") => match ca.bundle().to_jwks() {
                Ok(jwks) => json_response(StatusCode::OK, &jwks),
                Err(e) => {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                        .into_response()
                }
            },
            (&Method::GET, "/v1/revocations") => {
                json_response(StatusCode::OK, self.live.revocations().document())
            }
            (&Method::POST, "/v1/svid") => {
                let limit = ca.config().limits.request_timeout;
                let prepared = tokio::time::timeout(
                    limit,
                    self.clone().prepare_svid(request, peer, peer_cert),
                )
                .await;
                match prepared {
                    // Past the timeout on purpose: once the token is being spent, the
                    // certificate must reach the caller.
                    Ok(Ok(prepared)) => self.deliver_svid(prepared, peer).await,
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

    /// Every check and the signing, within the request timeout; spends nothing.
    async fn prepare_svid(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        peer_cert: Option<PeerCertificate>,
    ) -> Result<(Authenticated, crate::authority::IssuedSvid), ApiError> {
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
        let ca = self.live.ca();
        let (parts, body) = request.into_parts();
        let body = read_body(ca.config().limits.max_body_bytes, &parts.headers, body).await?;
        let request: SvidRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("request body: {e}"),
            )
        })?;
        let public_key = public_key_from_csr(&request.csr).map_err(IssueError::from)?;
        let ttl = ca.effective_ttl(request.ttl.map(Duration::from_secs))?;

        let refused = |e: ApiError| {
            tracing::warn!(target: "airlock::audit", event = "svid_refused", peer = %peer, code = e.code, reason = %e.message);
            e
        };
        let caller = self
            .clone()
            .authenticate(parts.headers.get(AUTHORIZATION), peer_cert, &ca)
            .await
            .map_err(refused)?;
        let revocations = self.live.revocations();
        ca.check_workload(&caller.id, &revocations)
            .map_err(|e| refused(e.into()))?;
        ca.ensure_can_issue()?;
        let issued = ca.issue_workload(&public_key, &caller.id, Some(ttl), &revocations)?;
        Ok((caller, issued))
    }

    /// Spends the join token (if one authenticated the caller) and answers with the SVID;
    /// a token that can no longer be spent (a concurrent request won) gets no certificate.
    async fn deliver_svid(
        self: Arc<Self>,
        (caller, issued): (Authenticated, crate::authority::IssuedSvid),
        peer: SocketAddr,
    ) -> Response<Full<Bytes>> {
        if let Some(token) = caller.token
            && let Err(error) = self.clone().spend_token(token).await
        {
            tracing::warn!(target: "airlock::audit", event = "svid_refused", peer = %peer, code = error.code, reason = %error.message);
            return error.into_response();
        }
        let expires_at = issued.not_after.format(&Rfc3339).expect("formattable");
        tracing::info!(
            target: "airlock::audit",
            event = "svid_issued",
            identity = %issued.id,
            serial = %issued.serial_hex,
            not_after = %expires_at,
            auth_method = caller.method.as_str(),
            renewed_from = caller.renewed_from.as_deref().unwrap_or(""),
            peer = %peer,
        );
        json_response(
            StatusCode::OK,
            &SvidResponse {
                spiffe_id: issued.id.clone(),
                chain: issued.chain_pem(),
                bundle: self.bundle_pems(),
                expires_at,
            },
        )
    }

    /// Runs a token-store operation off the async workers (file lock and fsync).
    async fn with_tokens<T: Send + 'static>(
        self: Arc<Self>,
        operation: impl FnOnce(&TokenStore, i64) -> Result<T, TokenError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let result = tokio::task::spawn_blocking(move || operation(&self.tokens, now))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })?;
        result.map_err(|error| match error {
            TokenError::Invalid => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                TokenError::Invalid.to_string(),
            ),
            other => {
                tracing::error!(error = %other, "join token store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "join token store unavailable",
                )
            }
        })
    }

    async fn spend_token(self: Arc<Self>, token: String) -> Result<(), ApiError> {
        self.with_tokens(move |tokens, now| tokens.consume(&token, now).map(drop))
            .await
    }

    fn bundle_pems(&self) -> Vec<String> {
        self.live
            .ca()
            .bundle()
            .roots()
            .iter()
            .map(|der| airlock_identity::bundle::der_to_pem(der))
            .collect()
    }

    /// Bearer join token, bearer service-account JWT, or (no Authorization header) the
    /// verified client SVID for a renewal of that same identity, issued by the current
    /// issuing CA and not revoked since the connection opened.
    async fn authenticate(
        self: Arc<Self>,
        authorization: Option<&http::HeaderValue>,
        peer_cert: Option<PeerCertificate>,
        ca: &CertificateAuthority,
    ) -> Result<Authenticated, ApiError> {
        let unauthenticated =
            |message: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message);
        let Some(header) = authorization else {
            let Some(PeerCertificate { svid, der }) = peer_cert else {
                return Err(unauthenticated(
                    "no credentials: send Authorization: Bearer <join token or service-account token>, or a valid SVID as client certificate".into(),
                ));
            };
            // The handshake verified the SVID, but a keep-alive connection can outlive
            // it, its issuer and its revocation: check again for every request.
            if time::OffsetDateTime::now_utc().unix_timestamp() >= svid.not_after {
                return Err(unauthenticated(
                    "the client certificate has expired since this connection was opened; reconnect with a valid SVID".into(),
                ));
            }
            if self.live.revocations().check(&svid).is_some() {
                return Err(unauthenticated("the client certificate is revoked".into()));
            }
            if !ca.may_renew(&der) {
                return Err(unauthenticated(
                    "the client certificate was signed by a retired issuing CA and cannot renew; authenticate with a join token or service-account token".into(),
                ));
            }
            return Ok(Authenticated {
                id: svid.id,
                method: AuthMethod::SvidRenewal,
                token: None,
                renewed_from: Some(svid.serial_hex),
            });
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
            let checked = token.clone();
            let id = self
                .with_tokens(move |tokens, now| tokens.check(&checked, now))
                .await?;
            return Ok(Authenticated {
                id,
                method: AuthMethod::JoinToken,
                token: Some(token),
                renewed_from: None,
            });
        }
        let Some(kubernetes) = self.live.kubernetes() else {
            return Err(unauthenticated(
                "the bearer token is not a join token and Kubernetes authentication is not configured".into(),
            ));
        };
        match kubernetes.authenticate(&token) {
            Ok(id) => Ok(Authenticated {
                id,
                method: AuthMethod::KubernetesServiceAccount,
                token: None,
                renewed_from: None,
            }),
            Err(e @ JwtError::NamespaceNotAllowed(_)) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "identity_not_permitted",
                e.to_string(),
            )),
            Err(e) => Err(unauthenticated(e.to_string())),
        }
    }
}

async fn read_body(
    max: usize,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Bytes, ApiError> {
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

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(serde_json::to_vec(body).expect("serializable")));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().expect("valid"));
    response
}
