//! The health listener (`/live`, `/ready`, `/metrics`, `/app-health/<name>`; read-only,
//! pod IP) and the admin API (loopback only): `/config_dump`, `/certs`, `/logging`,
//! `POST /drain`, `POST /shutdown`, `inspect`'s `/status` and `POST /policy/eval`, and
//! `tap`'s `GET /tap` stream. Neither ever shows a key or a token.
//!
//! `/app-health/<name>` runs one of `admin.app_probes` against the app over loopback.
//! Capture sends the kubelet's own probes of an app port to the sidecar, where they
//! would count as plaintext from an unauthenticated peer; the injector points them here
//! instead. Anyone who reaches the pod can ask, so only the declared probes run, each at
//! most once per second however often it is asked (callers in between get its last
//! result), and `/config_dump` shows their header names but not their values.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::Shared;
use crate::config::AppProbe;
use crate::listener::accept_loop;

/// Open connections per admin or health listener: probes and operators, not traffic.
const MAX_CONNECTIONS: usize = 64;

/// However often a probe is asked for, the app sees it at most this often (the kubelet
/// probes once a second at the fastest).
const PROBE_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The last result of each declared probe, and one lock per probe so that concurrent
/// askers share one run.
#[derive(Default)]
struct ProbeResults {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<ProbeResult>>>>>,
}

#[derive(Clone)]
struct ProbeResult {
    at: Instant,
    status: StatusCode,
    body: String,
}

impl ProbeResults {
    /// `name` is a declared probe's (the caller looked it up), so the map stays as small
    /// as the configuration.
    async fn answer(&self, name: &str, probe: &AppProbe) -> Response<Full<Bytes>> {
        let slot = self
            .slots
            .lock()
            .expect("probe results lock poisoned")
            .entry(name.to_owned())
            .or_default()
            .clone();
        let mut last = slot.lock().await;
        let fresh = last
            .as_ref()
            .filter(|result| result.at.elapsed() < PROBE_MIN_INTERVAL)
            .cloned();
        let result = match fresh {
            Some(result) => result,
            None => {
                let (status, body) = app_probe(probe).await;
                let result = ProbeResult {
                    at: Instant::now(),
                    status,
                    body,
                };
                *last = Some(result.clone());
                result
            }
        };
        text(result.status, result.body)
    }
}

/// Which of the two listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    Health,
    Admin,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    surface: Surface,
    stop: watch::Receiver<bool>,
) {
    let metrics = shared.metrics.clone();
    let probe_results = Arc::new(ProbeResults::default());
    accept_loop(
        "admin",
        listener,
        MAX_CONNECTIONS,
        metrics,
        stop,
        move |tcp, _| {
            let shared = shared.clone();
            let probe_results = probe_results.clone();
            async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let shared = shared.clone();
                    let probe_results = probe_results.clone();
                    async move {
                        let probe = (surface == Surface::Health && request.method() == Method::GET)
                            .then(|| request.uri().path().strip_prefix("/app-health/"))
                            .flatten()
                            .map(|name| {
                                let probe = shared.config.admin.app_probes.get(name).cloned();
                                (name.to_owned(), probe)
                            });
                        let response = match probe {
                            Some((name, Some(probe))) => probe_results.answer(&name, &probe).await,
                            Some((_, None)) => text(StatusCode::NOT_FOUND, "no such app probe\n"),
                            None if surface == Surface::Admin
                                && crate::inspect::is_eval(&request) =>
                            {
                                crate::inspect::eval(&shared, request).await
                            }
                            None if surface == Surface::Admin
                                && request.method() == Method::GET
                                && request.uri().path() == "/tap" =>
                            {
                                return Ok(crate::tap::respond(&shared.tap, request.uri().query()));
                            }
                            None => route(&shared, surface, request),
                        };
                        Ok::<_, Infallible>(response.map(BodyExt::boxed_unsync))
                    }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(5))
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            }
        },
    )
    .await;
}

/// Why an app probe failed: the body of the 503 that `/app-health/<name>` answers.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// The app's port did not accept the connection.
    #[error("connecting to {app}: {source}")]
    Connect {
        app: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange with the app failed (handshake or request).
    #[error("HTTP to {app}: {source}")]
    Http {
        app: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    /// The probe's request could not be built from its path and headers.
    #[error("probe request: {0}")]
    Request(#[source] http::Error),
    /// The app answered, but neither with success nor with a redirection.
    #[error("the app answered {0}")]
    Status(StatusCode),
    /// No answer within the probe's timeout.
    #[error("the app did not answer within {0:?}")]
    Timeout(Duration),
}

/// 200 when the app passes the probe within its timeout, else 503 saying why.
async fn app_probe(probe: &AppProbe) -> (StatusCode, String) {
    let outcome = tokio::time::timeout(probe.timeout, run_app_probe(probe))
        .await
        .unwrap_or(Err(ProbeError::Timeout(probe.timeout)));
    match outcome {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn run_app_probe(probe: &AppProbe) -> Result<(), ProbeError> {
    let app = SocketAddr::from(([127, 0, 0, 1], probe.port));
    let stream = TcpStream::connect(app)
        .await
        .map_err(|source| ProbeError::Connect { app, source })?;
    let Some(path) = &probe.path else {
        return Ok(());
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProbeError::Http { app, source })?;
    tokio::spawn(connection);
    // As the kubelet does: the probe's own headers replace these defaults.
    let mut request = Request::get(path.as_str());
    let own = |name: &http::HeaderName| {
        probe
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name.as_str()))
    };
    for (name, value) in [
        (http::header::HOST, app.to_string()),
        (http::header::USER_AGENT, "kube-probe (airlock)".to_owned()),
    ] {
        if !own(&name) {
            request = request.header(name, value);
        }
    }
    for header in &probe.headers {
        request = request.header(header.name.as_str(), header.value.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::Request)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| ProbeError::Http { app, source })?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(ProbeError::Status(status))
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body.into()));
    *response.status_mut() = status;
    response
}

fn json_body(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(
        serde_json::to_vec_pretty(value).expect("serializable"),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().expect("valid"),
    );
    response
}

fn route(shared: &Shared, surface: Surface, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path();
    match (surface, &method, path) {
        (Surface::Health, &Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (Surface::Health, &Method::GET, "/ready") => {
            if shared.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        (Surface::Health, &Method::GET, "/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
                Ok(()) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8"
                            .parse()
                            .expect("valid"),
                    );
                    response
                }
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "metrics encoding failed\n",
                ),
            }
        }
        (Surface::Admin, &Method::GET, "/config_dump") => {
            // The config holds file paths only; the token and keys never enter it. Probe
            // headers may carry credentials (as a kubelet probe's can): names only.
            let mut dump = serde_json::to_value(&*shared.config).unwrap_or_default();
            if let Some(probes) = dump["admin"]["app_probes"].as_object_mut() {
                for header in probes
                    .values_mut()
                    .filter_map(|probe| probe["headers"].as_array_mut())
                    .flatten()
                {
                    header["value"] = json!("<redacted>");
                }
            }
            json_body(&dump)
        }
        (Surface::Admin, &Method::GET, "/certs") => crate::inspect::certs(shared),
        (Surface::Admin, &Method::GET, "/status") => crate::inspect::status(shared),
        (Surface::Admin, &Method::GET, "/logging") => {
            text(StatusCode::OK, format!("{}\n", shared.log_level()))
        }
        (Surface::Admin, &Method::POST, "/logging") => {
            let level = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("level=")))
                .unwrap_or("");
            match shared.set_log_level(level) {
                Ok(()) => text(StatusCode::OK, format!("{level}\n")),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Surface::Admin, &Method::POST, "/drain") => {
            shared.start_drain();
            text(StatusCode::OK, "draining\n")
        }
        (Surface::Admin, &Method::POST, "/shutdown") => {
            shared.request_shutdown();
            text(StatusCode::OK, "shutting down\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}
