//! The CA's client, as sidecars use it: a key generated in memory (it never touches
//! disk), a CSR that carries only that key, `POST /v1/svid`, and the bundle.
//!
//! The client pins the CA by its SPIFFE ID (`spiffe://<td>/ns/airlock/sa/ca`) against the
//! trust bundle it was given; a renewal presents the current SVID as client certificate.

use std::sync::Arc;
use std::time::Duration;

use airlock_identity::revocation::RevocationDocument;
use airlock_identity::{BundleStore, PeerMatch, SvidStore, tls};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::wire::{SvidResponse, ca_server_id};

/// Time allowed to connect and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one request/response exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to the CA failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA URL is not `https://host:port`: another scheme, a path, or no port.
    #[error("CA URL {0:?} must look like https://host:port")]
    BadUrl(String),
    /// The TCP connection or the TLS handshake failed, including when the CA's
    /// certificate does not chain to the bundle or is not the CA's pinned SPIFFE ID.
    #[error("cannot reach the CA at {addr}: {reason}")]
    Connect {
        /// The `host:port` dialled.
        addr: String,
        /// The underlying error, as text.
        reason: String,
    },
    /// Connecting took over 10 seconds, or one request/response exchange over 30.
    #[error("the CA at {addr} timed out")]
    Timeout {
        /// The `host:port` dialled.
        addr: String,
    },
    /// The HTTP/1.1 handshake or exchange failed on an open connection.
    #[error("HTTP exchange with the CA failed: {0}")]
    Http(#[from] hyper::Error),
    /// The CA answered with a status other than 2xx.
    #[error("the CA refused: {status} {code}: {message}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// The API's machine-readable error code (`unauthenticated`, `rate_limited`, …);
        /// `unknown` when the body carries none.
        code: String,
        /// The API's human-readable message; empty when the body carries none.
        message: String,
    },
    /// The request could not be built, or the CA's answer does not parse (JSON, the PEM
    /// chain, a bundle that is not UTF-8).
    #[error("the CA's answer is unreadable: {0}")]
    BadResponse(String),
    /// Generating the in-memory key or its CSR failed.
    #[error("cannot make a key or CSR: {0}")]
    Key(#[from] rcgen::Error),
}

/// A certificate and key fresh from the CA.
pub struct Credentials {
    /// The CA's answer as received: identity, PEM chain, bundle roots and expiry.
    pub response: SvidResponse,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The PKCS#8 private key of the leaf, generated in memory for this request; the
    /// client never writes it to disk, and `Debug` never shows it.
    pub key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("spiffe_id", &self.response.spiffe_id)
            .field("expires_at", &self.response.expires_at)
            .finish_non_exhaustive()
    }
}

/// How to reach and authenticate the CA.
#[derive(Clone)]
pub struct CaClient {
    addr: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl CaClient {
    /// `url` is `https://host:port`; `bundle` holds the roots the CA's certificate must
    /// chain to; `svid` is presented as client certificate whenever it holds one.
    pub fn new(
        url: &str,
        bundle: Arc<BundleStore>,
        svid: Arc<SvidStore>,
    ) -> Result<Self, ClientError> {
        let bad_url = || ClientError::BadUrl(url.to_owned());
        let uri: http::Uri = url.parse().map_err(|_| bad_url())?;
        if uri.scheme_str() != Some("https") || uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad_url());
        }
        let authority = uri.authority().ok_or_else(bad_url)?;
        let port = authority.port_u16().ok_or_else(bad_url)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone()).map_err(|_| bad_url())?;
        let expected = ca_server_id(bundle.current().trust_domain());
        let config = tls::client_config(svid, bundle, PeerMatch::Exactly(expected), &[b"http/1.1"]);
        Ok(Self {
            addr: format!("{}:{port}", authority.host()),
            server_name,
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Opens one keep-alive connection for several requests.
    pub async fn connect(&self) -> Result<CaSession, ClientError> {
        let connect = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| self.connect_error(e))?;
            tcp.set_nodelay(true).map_err(|e| self.connect_error(e))?;
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| self.connect_error(e))?;
            let (sender, connection) = http1::handshake(TokioIo::new(tls)).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "CA connection closed");
                }
            });
            Ok::<_, ClientError>(sender)
        };
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
            })??;
        Ok(CaSession {
            sender,
            addr: self.addr.clone(),
        })
    }

    fn connect_error(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Connect {
            addr: self.addr.clone(),
            reason: e.to_string(),
        }
    }

    /// One-shot: a new key, a CSR, and `POST /v1/svid` on a fresh connection.
    /// `bearer`: a join token or service-account JWT; `None` renews with the current SVID.
    pub async fn obtain_svid(
        &self,
        bearer: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<Credentials, ClientError> {
        self.connect().await?.obtain_svid(bearer, ttl).await
    }

    /// `GET /v1/bundle` (PEM) and `GET /v1/revocations` on one connection: the roots
    /// and the deny list that travels with them.
    pub async fn fetch_trust(&self) -> Result<(String, RevocationDocument), ClientError> {
        let mut session = self.connect().await?;
        let pem = session.fetch_bundle_pem().await?;
        let revocations = session.fetch_revocations().await?;
        Ok((pem, revocations))
    }
}

/// One open connection to the CA.
pub struct CaSession {
    sender: http1::SendRequest<Full<Bytes>>,
    addr: String,
}

impl CaSession {
    /// A new in-memory P-256 key, its CSR, and the SVID the CA issues for it.
    pub async fn obtain_svid(
        &mut self,
        bearer: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<Credentials, ClientError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key)?.pem()?;
        let response = self.request_svid(&csr, bearer, ttl).await?;
        let chain = response
            .chain
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ClientError::BadResponse(format!("chain: {e}")))?;
        Ok(Credentials {
            response,
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }

    /// `POST /v1/svid` for an existing CSR.
    pub async fn request_svid(
        &mut self,
        csr_pem: &str,
        bearer: Option<&str>,
        ttl: Option<Duration>,
    ) -> Result<SvidResponse, ClientError> {
        let body = serde_json::json!({"csr": csr_pem, "ttl": ttl.map(|t| t.as_secs())});
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/v1/svid")
            .header(HOST, &self.addr)
            .header(CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::from(serde_json::to_vec(&body).expect("serializable")))
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        let bytes = self.exchange(request).await?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `GET /v1/bundle`: the trust bundle as PEM.
    pub async fn fetch_bundle_pem(&mut self) -> Result<String, ClientError> {
        let bytes = self.get("/v1/bundle").await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// `GET /v1/revocations`: the deny list.
    pub async fn fetch_revocations(&mut self) -> Result<RevocationDocument, ClientError> {
        let bytes = self.get("/v1/revocations").await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::BadResponse(format!("/v1/revocations: {e}")))
    }

    async fn get(&mut self, path: &str) -> Result<Bytes, ClientError> {
        let request = Request::builder()
            .uri(path)
            .header(HOST, &self.addr)
            .body(Full::default())
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        self.exchange(request).await
    }

    async fn exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Bytes, ClientError> {
        let exchange = async {
            // Keep-alive: the previous exchange's connection state must settle first.
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, ClientError>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
            })??;
        if status.is_success() {
            return Ok(body);
        }
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Err(ClientError::Refused {
            status,
            code: error["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_owned(),
            message: error["error"]["message"].as_str().unwrap_or("").to_owned(),
        })
    }
}
