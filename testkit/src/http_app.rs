//! A small HTTP app (HTTP/1.1 and cleartext HTTP/2) that answers every request with what
//! it received, as JSON: the demo's workloads, and the end-to-end tests' witness of what
//! a sidecar forwarded.
//!
//! `GET /upgrade` with `Upgrade: websocket` switches protocols and echoes raw bytes back;
//! `/slow` answers after two seconds; `/kib` answers 1 KiB of text (benchmarks). Every
//! request target received is kept in `seen`. [`spawn_delayed`] makes an app that answers
//! everything late by a fixed time (the slow backend of a balancing benchmark).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// The request targets the app received, in order.
pub type Seen = Arc<Mutex<Vec<String>>>;

/// Starts the app on a free loopback port, on a runtime thread of its own.
pub fn spawn(name: &str) -> (SocketAddr, Seen) {
    spawn_delayed(name, Duration::ZERO)
}

/// [`spawn`], answering every request `delay` late.
pub fn spawn_delayed(name: &str, delay: Duration) -> (SocketAddr, Seen) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let (name, app_seen) = (name.to_owned(), seen.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            serve(listener, name, app_seen, delay).await;
        });
    });
    (addr, seen)
}

/// Serves on `listener` until the task is dropped; `name` is reported in every answer,
/// each `delay` late.
pub async fn serve(listener: TcpListener, name: String, seen: Seen, delay: Duration) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let name = name.clone();
                if let Some(target) = request.uri().path_and_query() {
                    seen.lock().unwrap().push(target.as_str().to_owned());
                }
                async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    Ok::<_, Infallible>(answer(&name, peer, request).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    name: &str,
    peer: SocketAddr,
    mut request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if request.uri().path() == "/upgrade" && request.headers().contains_key(hyper::header::UPGRADE)
    {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(hyper::header::CONNECTION, "upgrade")
            .header(hyper::header::UPGRADE, "websocket")
            .body(Full::default())
            .expect("static response");
    }
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    if request.uri().path() == "/kib" {
        return Response::new(Full::from(vec![b'a'; 1024]));
    }
    if request.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let method = request.method().to_string();
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    let version = format!("{:?}", request.version());
    let body_bytes = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => return Response::new(Full::from("body failed\n")),
    };
    let report = serde_json::json!({
        "app": name,
        "peer": peer.to_string(),
        "method": method,
        "path": target,
        "version": version,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::from(format!("{report}\n")))
        .expect("static response")
}
