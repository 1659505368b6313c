//! L7: HTTP/1.1 and HTTP/2 (gRPC included) on an inbound stream. Every request is checked
//! for shape and limits, its path normalized, authorized on (peer identity, source IP,
//! port, method, normalized path, host, headers, time), and — when allowed — forwarded to
//! the app through a pooled client, with the verified peer identity in a header that no
//! caller can set. One access log line per request.
//!
//! What the app receives is exactly what policy saw: the normalized path, the query
//! untouched, and identity headers written by this sidecar alone.
//!
//! This module is the request path, in the order it runs (`handle`,
//! `authorize_and_forward`, `forward`); the rest is split by job:
//! - `app`: the clients to the app (a pooled HTTP/1.1 client per port, one HTTP/2
//!   connection per caller connection);
//! - `headers`: hop-by-hop headers, upgrades, gRPC, identity headers (pure);
//! - `refusal`: what a refused caller gets (text, or a gRPC status);
//! - `body`: the request and response bodies, counted, capped and timed;
//! - `exchange`: each request's access log line and metrics, written once.

mod app;
pub(crate) mod body;
mod exchange;
pub(crate) mod headers;
pub(crate) mod refusal;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use airlock_policy::eval::HttpRequest;
use airlock_policy::http::effective_method;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) use self::app::{AppHttp2, HttpPort};
use self::body::{
    BODY_OK, BODY_TIMED_OUT, BODY_TOO_LARGE, BoxError, Held, ProxyBody, RequestBody, ResponseBody,
};
use self::exchange::{Exchange, base_record};
use self::headers::{remove_hop_by_hop, set_identity_headers, wants_upgrade};
use self::refusal::{Refusal, refusal_response};
use crate::Shared;
use crate::authorize::{Admission, NoValidSvid, authorize};
use crate::config::HttpLimits;
use crate::metrics::{Direction, Disposition, Metrics};
use crate::request_shape::{Shape, check_shape, screen_header_names};
use crate::tunnels::Peer;

pub(crate) use crate::request_shape::{PEER_IDENTITY_HEADER, XFCC_HEADER};

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `io` with `service`, `limits` on
/// heads and streams, until the peer closes it or `stop` turns true (then in-flight
/// requests finish and the connection closes): what inbound HTTP ports and the caller
/// side's routed listeners both run.
pub(crate) async fn serve_connection<IO, S>(
    limits: &HttpLimits,
    metrics: &Metrics,
    io: IO,
    service: S,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = http_server(limits);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = crate::stopped(stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = &served {
        // hyper answers an HTTP/1 head over the size or count limit with 431 itself, and
        // closes a connection whose head does not arrive in time (slowloris) without an
        // answer, as nginx does.
        match e.downcast_ref::<hyper::Error>() {
            Some(e) if e.is_timeout() => metrics.limit("header_read_timeout"),
            Some(e) if e.is_parse_too_large() => metrics.limit("headers"),
            _ => {}
        }
    }
    served
}

fn http_server(limits: &HttpLimits) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(limits.max_concurrent_requests).unwrap_or(u32::MAX))
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Serves HTTP/1.1 and HTTP/2 on one stream until the peer closes it or `stop` turns
/// true (then in-flight requests finish, and the connection closes).
pub(crate) async fn serve<IO>(
    shared: Arc<Shared>,
    port: Arc<HttpPort>,
    peer: Arc<Peer>,
    io: IO,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handler_port = port.clone();
    let handler_shared = shared.clone();
    let app_http2 = Arc::new(AppHttp2::new());
    let service = hyper::service::service_fn(move |request| {
        let (shared, port, peer) = (handler_shared.clone(), handler_port.clone(), peer.clone());
        let app_http2 = app_http2.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle(&shared, &port, &peer, &app_http2, request).await,
            )
        }
    });
    if let Err(e) = serve_connection(&port.limits, &shared.metrics, io, service, &mut stop).await {
        tracing::debug!(port = port.port, error = %e, "HTTP connection ended");
    }
}

/// One request on an inbound HTTP stream, or one routed request: shape, authorize,
/// forward, log.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    port: &Arc<HttpPort>,
    peer: &Peer,
    app_http2: &AppHttp2,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    // No caller may speak for the sidecar: drop identity headers before anything reads them.
    request.headers_mut().remove(PEER_IDENTITY_HEADER);
    request.headers_mut().remove(XFCC_HEADER);
    let mut exchange = Exchange {
        shared: shared.clone(),
        record: base_record(shared, port.port, peer, &request),
        started,
        bytes_in: Arc::new(AtomicU64::new(0)),
        decision: Disposition::Rejected,
    };
    match authorize_and_forward(shared, port, peer, app_http2, request, &mut exchange).await {
        Ok((response, held)) => {
            let status = response.status();
            response.map(|inner| {
                ResponseBody {
                    inner,
                    bytes: 0,
                    status,
                    exchange: Some(exchange),
                    held,
                }
                .boxed()
            })
        }
        Err(refusal) => {
            if let Some(limit) = refusal.limit {
                shared.metrics.limit(limit);
            }
            exchange.decision = refusal.decision;
            exchange.record.decision = refusal.decision;
            exchange.record.reason = Some(refusal.reason.clone());
            let grpc = exchange.record.protocol == Some("grpc");
            let response = refusal_response(&refusal, grpc);
            exchange.finish(refusal.status, 0);
            response
        }
    }
}

async fn authorize_and_forward(
    shared: &Arc<Shared>,
    port: &Arc<HttpPort>,
    peer: &Peer,
    app_http2: &AppHttp2,
    mut request: Request<Incoming>,
    exchange: &mut Exchange,
) -> Result<(Response<Incoming>, Option<Held>), Refusal> {
    let limits = &port.limits;
    let permit = port.in_flight.clone().try_acquire_owned().map_err(|_| {
        Refusal::limit(
            StatusCode::SERVICE_UNAVAILABLE,
            "concurrent_requests",
            "too many requests in flight on this port",
        )
    })?;
    if shared.is_draining() {
        return Err(Refusal::limit(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this sidecar is draining",
        ));
    }
    screen_header_names(request.headers_mut(), limits.headers_with_underscores)?;
    let shape = check_shape(&request, limits)?;
    // Hop-by-hop headers go before the decision, so policy sees exactly the headers the
    // app will get (a `Connection` header cannot remove one after the fact).
    let upgrade = wants_upgrade(request.version(), request.headers());
    remove_hop_by_hop(request.headers_mut(), upgrade);
    let log = &shared.access_log;
    if shared.recording() {
        exchange.record.path = Some(log.masker.target(&shape.path, shape.query.as_deref()));
        exchange.record.authority = Some(log.masker.header("host", &shape.host));
    }

    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = request.method().as_str();
    let overriding = effective_method(
        method,
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        limits.allow_method_override,
    )
    .map_err(|e| Refusal::shape(e.to_string()))?;
    let request_key = HttpRequest {
        method: method.to_owned(),
        override_method: (overriding != method).then(|| overriding.to_owned()),
        path: shape.path.clone(),
        host: shape.host.clone(),
        headers,
    };
    let key = peer.key(port.port, Some(Arc::new(request_key)));
    let authorization = authorize(shared, key.clone()).map_err(|NoValidSvid| {
        Refusal::limit(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_svid",
            "this sidecar has no valid SVID",
        )
    })?;
    let decision = &authorization.decision;
    exchange.decision = Disposition::of(decision.allowed);
    if shared.recording() {
        exchange.record.note_decision(decision);
    } else {
        exchange.record.decision = exchange.decision;
    }
    // Registered until the response ends, so a policy change or lapsing grant can cut a
    // long-lived stream, and drain waits for it.
    let Some(Admission { guard, cancelled }) = authorization.admission else {
        tracing::info!(source = %key.source_text(), source_ip = %peer.addr.ip(), port = port.port, method = %request.method(), reason = %decision.reason, "request denied");
        return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            reason: decision.reason.to_string(),
            decision: Disposition::Deny,
            limit: None,
        });
    };
    set_identity_headers(
        request.headers_mut(),
        peer.identity.as_ref(),
        &authorization.own_id,
    );
    forward(
        shared,
        port,
        app_http2,
        request,
        shape,
        exchange,
        Held {
            guard,
            cancelled,
            permit,
        },
    )
    .await
}

/// Sends an authorized request to the app; an upgrade (101) continues as a relay.
async fn forward(
    shared: &Arc<Shared>,
    port: &Arc<HttpPort>,
    app_http2: &AppHttp2,
    mut request: Request<Incoming>,
    shape: Shape,
    exchange: &mut Exchange,
    held: Held,
) -> Result<(Response<Incoming>, Option<Held>), Refusal> {
    let limits = &port.limits;
    let upgrade = wants_upgrade(request.version(), request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let target = match &shape.query {
        Some(query) => format!("{}?{query}", shape.path),
        None => shape.path.clone(),
    };
    let http2 = parts.version == Version::HTTP_2;
    let authority = if http2 {
        // HTTP/2 carries the caller's authority in the URI (`:authority`).
        shape
            .authority
            .map_or_else(|| format!("127.0.0.1:{}", port.port), |a| a.to_string())
    } else {
        // The HTTP/1 pool is keyed by the URI's authority: make it the app's address, so
        // a caller rotating Host values cannot open one idle app connection per value.
        // The caller's authority travels in the Host header, as it came.
        // Without one (HTTP/1.0), the app gets the port's loopback name, as it always has.
        if !parts.headers.contains_key(header::HOST) {
            let host = shape
                .authority
                .as_ref()
                .map_or_else(|| format!("127.0.0.1:{}", port.port), ToString::to_string);
            if let Ok(value) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, value);
            }
        }
        port.app.to_string()
    };
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(target)
        .build()
        .map_err(|e| Refusal::shape(format!("the request target cannot be forwarded: {e}")))?;
    parts.version = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let body_state = Arc::new(AtomicU8::new(BODY_OK));
    let body = RequestBody {
        inner: body,
        received: exchange.bytes_in.clone(),
        max: limits.max_body_bytes,
        deadline: Box::pin(tokio::time::sleep(limits.request_timeout)),
        state: body_state.clone(),
    };
    let outgoing = Request::from_parts(parts, body);
    let sending = async {
        if http2 {
            app_http2.send(port, outgoing).await
        } else {
            port.send_http1(outgoing).await
        }
    };
    let Held {
        guard,
        mut cancelled,
        permit,
    } = held;
    let sent = tokio::select! {
        sent = tokio::time::timeout(limits.response_timeout, sending) => sent,
        _ = &mut cancelled => return Err(Refusal {
            status: StatusCode::FORBIDDEN,
            reason: "no longer allowed".into(),
            decision: Disposition::Deny,
            limit: None,
        }),
    };
    let mut response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            return Err(match body_state.load(Ordering::Relaxed) {
                BODY_TOO_LARGE => Refusal::limit(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_bytes",
                    "the request body is too large",
                ),
                BODY_TIMED_OUT => Refusal::limit(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body did not arrive in time",
                ),
                _ => {
                    tracing::info!(port = port.port, error = %e, "the app did not answer");
                    Refusal {
                        status: StatusCode::BAD_GATEWAY,
                        reason: format!("the app on port {} did not answer", port.port),
                        decision: Disposition::Allow,
                        limit: None,
                    }
                }
            });
        }
        Err(_) => {
            return Err(Refusal::limit(
                StatusCode::GATEWAY_TIMEOUT,
                "response_timeout",
                "the app did not answer in time",
            ));
        }
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    remove_hop_by_hop(response.headers_mut(), switching && upgrade);
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let app_upgrade = hyper::upgrade::on(&mut response);
        let shared = shared.clone();
        tokio::spawn(async move {
            let (Ok(client), Ok(app)) = (client_upgrade.await, app_upgrade.await) else {
                return;
            };
            // Authorized once at the upgrade; re-checked like any tunnel from here on.
            let outcome = crate::relay::relay(
                TokioIo::new(client),
                TokioIo::new(app),
                shared.config.limits.idle_timeout,
                async move {
                    let _ = cancelled.await;
                },
            )
            .await;
            shared
                .metrics
                .count_bytes(Direction::Inbound, outcome.forward, outcome.reverse);
            drop((guard, permit));
        });
        return Ok((response, None));
    }
    Ok((
        response,
        Some(Held {
            guard,
            cancelled,
            permit,
        }),
    ))
}
