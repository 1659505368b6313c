//! `airlock injector`: the mutating admission webhook over HTTPS.
//!
//! `POST /inject` takes an AdmissionReview v1 and answers one (see `review`), `POST
//! /validate-policy` answers a validating review of an AuthorizationPolicy (see
//! `review_policy`), and `GET /healthz` answers 200 for probes. The serving certificate is re-read when its files
//! change (cert-manager renews Secrets in place), so a renewal needs no restart. Every
//! connection is bounded: handshake, header and request timeouts, a body limit and a
//! connection limit. Pod specs can hold secrets in `env`, so objects are never logged,
//! only what was done to which object.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::pod::InjectOptions;
use crate::review::{review, review_policy};

/// AdmissionReviews of large pods stay well under this; the API server caps objects at
/// about 1.5 MiB.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 256;
/// Reviews computed at once; each holds a few copies of its object in memory (bounded by
/// `review::MAX_JSON_VALUES`), so this bounds the process's memory.
const REVIEWS_AT_ONCE: usize = 2;
/// Request bodies buffered at once (each up to `MAX_BODY_BYTES`).
const BODIES_AT_ONCE: usize = 8;
/// A connection is asked to close after this long, and closed this much later still,
/// so a client that stops reading cannot keep a slot.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
const CLOSE_GRACE: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The API server sends a review at once; a body that trickles in holds a reading slot
/// for at most this long.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);
const CERT_POLL: Duration = Duration::from_secs(10);

/// The serving certificate chain and key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate chain, leaf first (`--cert`). Re-read every 10 seconds; a changed
    /// pair that is valid replaces the served certificate.
    pub cert: PathBuf,
    /// The leaf's private key (`--key`), in any PEM form rustls reads (PKCS#8, PKCS#1,
    /// SEC1).
    pub key: PathBuf,
}

impl CertFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), CertError> {
        let read = |path: &PathBuf, flag: &'static str| {
            std::fs::read(path).map_err(|source| CertError::Read {
                flag,
                path: path.clone(),
                source,
            })
        };
        Ok((read(&self.cert, "--cert")?, read(&self.key, "--key")?))
    }
}

/// Why the webhook's certificate pair was not served: at start the webhook does not
/// start; on a reload the current certificate stays.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// `--cert` or `--key` could not be read.
    #[error("{flag} {}: {source}", path.display())]
    Read {
        /// The flag naming the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// `--cert` is no PEM, or holds no `CERTIFICATE`.
    #[error("--cert {}: {reason}", path.display())]
    Chain {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong in it.
        reason: String,
    },
    /// `--key` holds no private key rustls reads.
    #[error("--key {}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// The PEM reader's reason.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key does not sign for the certificate (or the key type is not supported).
    #[error("--cert/--key: {0}")]
    Mismatch(#[source] rustls::Error),
    /// The TLS 1.3-only configuration was refused by the crypto provider.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    files: &CertFiles,
) -> Result<CertifiedKey, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Chain {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::Chain {
            path: files.cert.clone(),
            reason: "no CERTIFICATE in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| CertError::Key {
        path: files.key.clone(),
        source,
    })?;
    let provider = airlock_identity::tls::provider();
    CertifiedKey::from_der(chain, key, &provider).map_err(CertError::Mismatch)
}

/// Serves the current certificate; swapped by `keep_cert_fresh`.
#[derive(Debug)]
struct ReloadingCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Re-reads the files every few seconds and swaps in a changed, valid pair. A broken pair
/// (half-written, mismatched) is logged and the previous certificate stays.
async fn keep_cert_fresh(
    files: CertFiles,
    current: Arc<ReloadingCert>,
    mut seen: (Vec<u8>, Vec<u8>),
) {
    loop {
        tokio::time::sleep(CERT_POLL).await;
        let Ok(contents) = files.read() else {
            tracing::warn!(
                "the webhook certificate files are unreadable; keeping the current certificate"
            );
            continue;
        };
        if contents == seen {
            continue;
        }
        match certified_key(&contents.0, &contents.1, &files) {
            Ok(certified) => {
                current.0.store(Arc::new(certified));
                tracing::info!("webhook certificate reloaded");
                seen = contents;
            }
            Err(e) => {
                tracing::warn!(error = %e, "new webhook certificate refused; keeping the current one")
            }
        }
    }
}

/// Serves the webhook on `listener` until `shutdown` completes. `on_ready` runs once the
/// certificate has loaded, just before the first connection is accepted.
pub async fn serve(
    listener: TcpListener,
    files: CertFiles,
    options: InjectOptions,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), CertError> {
    let contents = files.read()?;
    let certified = certified_key(&contents.0, &contents.1, &files)?;
    let resolver = Arc::new(ReloadingCert(ArcSwap::from_pointee(certified)));
    let mut tls = ServerConfig::builder_with_provider(airlock_identity::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(CertError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let reload = tokio::spawn(keep_cert_fresh(files, resolver, contents));
    let options = Arc::new(options);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let limits = Arc::new(Turns {
        bodies: Semaphore::new(BODIES_AT_ONCE),
        reviews: Semaphore::new(REVIEWS_AT_ONCE),
    });
    let (stop, stopping) = watch::channel(false);
    on_ready();
    airlock_listen::accept_loop(
        "webhook",
        listener,
        connections.clone(),
        shutdown,
        |peer| tracing::warn!(%peer, "connection limit reached; closing connection"),
        |tcp, peer| {
            let acceptor = acceptor.clone();
            let options = options.clone();
            let limits = limits.clone();
            let mut stopping = stopping.clone();
            async move {
                let Some(stream) =
                    airlock_listen::tls_handshake(&acceptor, tcp, HANDSHAKE_TIMEOUT, peer).await
                else {
                    return;
                };
                let service = service_fn(move |request| {
                    let options = options.clone();
                    let limits = limits.clone();
                    async move { Ok::<_, Infallible>(handle(request, options, &limits).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {
                        connection.as_mut().graceful_shutdown();
                        tokio::time::timeout(CLOSE_GRACE, connection).await.unwrap_or(Ok(()))
                    }
                    () = stopped(&mut stopping) => {
                        connection.as_mut().graceful_shutdown();
                        tokio::time::timeout(CLOSE_GRACE, connection).await.unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        },
    )
    .await;
    // Drain: the loop dropped the listener, so new connections are refused at once; open
    // ones finish the review they are on, then close.
    reload.abort();
    let _ = stop.send(true);
    let all = u32::try_from(MAX_CONNECTIONS).expect("a small constant");
    let _ = tokio::time::timeout(CLOSE_GRACE, connections.acquire_many(all)).await;
    Ok(())
}

/// Turns that bound the memory of reviews in progress.
struct Turns {
    bodies: Semaphore,
    reviews: Semaphore,
}

/// Completes once the server is stopping.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

async fn handle(
    request: Request<Incoming>,
    options: Arc<InjectOptions>,
    limits: &Turns,
) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, path @ ("/inject" | "/validate-policy")) => {
            let validating = path == "/validate-policy";
            // Bodies are buffered a few at a time, so that stalled senders cannot pile
            // up memory; one that is too slow loses its turn.
            // A declared length over the limit is refused before any of the body is read:
            // a client that sent `Expect: 100-continue` then never sends it, and none
            // is left unread when the connection closes (which would reset it and
            // could lose the 413).
            let declared = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
            if declared.is_some_and(|length| length > MAX_BODY_BYTES) {
                return too_large();
            }
            let Ok(_reading) = limits.bodies.acquire().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            };
            let body = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
            let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) => {
                    let too_large = e.is::<http_body_util::LengthLimitError>();
                    return if too_large {
                        self::too_large()
                    } else {
                        text(
                            StatusCode::BAD_REQUEST,
                            "the request body could not be read\n",
                        )
                    };
                }
                Err(_) => {
                    return text(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body was too slow\n",
                    );
                }
            };
            drop(_reading);
            let Ok(_turn) = limits.reviews.acquire().await else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
            };
            // Parsing and mutating is CPU work: keep it off the connection tasks.
            let reviewed = tokio::task::spawn_blocking(move || {
                if validating {
                    review_policy(&body)
                } else {
                    review(&body, &options)
                }
            })
            .await;
            let Ok((status, answer)) = reviewed else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "the review failed\n");
            };
            log_review(&answer);
            let body = serde_json::to_vec(&answer).expect("a review serializes");
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("a valid response")
        }
        (_, "/inject" | "/validate-policy" | "/healthz") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// One line per review: its uid, whether it was allowed, patched or warned, and why not.
fn log_review(answer: &serde_json::Value) {
    let response = &answer["response"];
    tracing::info!(
        uid = response["uid"].as_str().unwrap_or(""),
        allowed = response["allowed"].as_bool().unwrap_or(false),
        patched = response.get("patch").is_some(),
        refusal = response.pointer("/status/message").and_then(|m| m.as_str()).unwrap_or(""),
        warnings = %response.get("warnings").map(ToString::to_string).unwrap_or_default(),
        "admission review"
    );
}

fn too_large() -> Response<Full<Bytes>> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        "the AdmissionReview exceeds 3 MiB\n",
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("a valid response")
}
