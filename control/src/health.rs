//! The controller's plaintext health port: `/live`, `/ready` (an SVID held and a first
//! view built, the Kubernetes readiness gate before a replica gets subscribers) and
//! `/metrics`. Read-only, GET only, small bounded requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_ca::workload::{Identity, unix_now};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

const MAX_CONNECTIONS: usize = 64;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the health port reports on.
pub(crate) struct Health {
    pub(crate) identity: Arc<Identity>,
    pub(crate) registry: Registry,
    /// True once the source produced its first view.
    pub(crate) has_view: AtomicBool,
}

impl Health {
    fn ready(&self) -> bool {
        self.has_view.load(Ordering::Relaxed) && self.identity.valid_svid(unix_now()).is_some()
    }

    fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .expect("a static response is valid")
        };
        if request.method() != Method::GET {
            return reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match request.uri().path() {
            "/live" => reply(StatusCode::OK, "live\n".into()),
            "/ready" if self.ready() => reply(StatusCode::OK, "ready\n".into()),
            "/ready" => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no valid SVID or no mesh view yet\n".into(),
            ),
            "/metrics" => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
                    Ok(()) => reply(StatusCode::OK, text),
                    Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, String::new()),
                }
            }
            _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
        }
    }
}

/// Serves `health` on `listener` until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    airlock_listen::accept_loop(
        "control health",
        listener,
        Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        },
        |peer| tracing::debug!(%peer, "health connection limit reached"),
        |tcp, _peer| {
            let health = health.clone();
            async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = health.answer(&request);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        },
    )
    .await;
}
