//! The health listener (`/live`, `/ready`, `/metrics`; read-only, pod IP) and the admin
//! API (loopback only): `/config_dump`, `/certs`, `/logging`, `POST /drain`,
//! `POST /shutdown`. Neither ever shows a key or a token.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Shared;
use crate::lifecycle::unix_now;
use crate::listener::accept_loop;

/// Open connections per admin or health listener: probes and operators, not traffic.
const MAX_CONNECTIONS: usize = 64;

/// Which of the two listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Health,
    Admin,
}

pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    surface: Surface,
    stop: watch::Receiver<bool>,
) {
    let metrics = shared.metrics.clone();
    accept_loop(
        "admin",
        listener,
        MAX_CONNECTIONS,
        metrics,
        stop,
        move |tcp, _| {
            let shared = shared.clone();
            async move {
                let service = service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(route(&shared, surface, request)) }
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
            // The config holds file paths only; the token and keys never enter it.
            json_body(&serde_json::to_value(&*shared.config).unwrap_or_default())
        }
        (Surface::Admin, &Method::GET, "/certs") => certs(shared),
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

fn certs(shared: &Shared) -> Response<Full<Bytes>> {
    let now = unix_now();
    let svid = shared.identity.store.current().map(|svid| {
        json!({
            "spiffe_id": svid.id,
            "serial": svid.serial_hex,
            "not_before": svid.not_before,
            "not_after": svid.not_after,
            "valid": svid.not_before <= now && now < svid.not_after,
        })
    });
    let bundle = shared.identity.bundle.current();
    let roots: Vec<_> = bundle
        .roots()
        .iter()
        .filter_map(|der| {
            use x509_parser::prelude::FromDer;
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
            Some(json!({
                "subject": cert.subject().to_string(),
                "not_after": cert.validity().not_after.timestamp(),
                "serial": cert.raw_serial_as_string(),
            }))
        })
        .collect();
    json_body(&json!({
        "svid": svid,
        "trust_domain": bundle.trust_domain().as_str(),
        "bundle_roots": roots,
    }))
}
