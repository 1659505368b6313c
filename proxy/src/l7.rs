//! L7: HTTP/1.1 and HTTP/2 (gRPC included) on an inbound stream. Every request is checked
//! for shape and limits, its path normalized, authorized on (peer identity, source IP,
//! port, method, normalized path, host, headers, time), and — when allowed — forwarded to
//! the app through a pooled client, with the verified peer identity in a header that no
//! caller can set. One access log line per request.
//!
//! What the app receives is exactly what policy saw: the normalized path, the query
//! untouched, and identity headers written by this sidecar alone.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_identity::SpiffeId;
use airlock_policy::eval::HttpRequest;
use airlock_policy::http::effective_method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::time::{Instant, Sleep};

use crate::Shared;
use crate::access_log::Record;
use crate::authorize::{Admission, NoValidSvid, authorize};
use crate::config::{HttpLimits, InboundPort};
use crate::metrics::{Direction, DirectionLabels, Disposition, HttpLabels};
use crate::pool::DENY_REASON_HEADER;
use crate::request_shape::{
    Shape, ShapeRefusal, check_shape, screen_header_names, screen_trailers,
};
use crate::tunnels::{TunnelGuard, TunnelKey};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// Idle HTTP/1 connections kept to the app of one port; more are closed when they idle.
const MAX_IDLE_APP_CONNECTIONS: usize = 64;

pub use crate::request_shape::{PEER_IDENTITY_HEADER, XFCC_HEADER};

/// Who is on the other end of an inbound stream.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `None` for a plaintext (permissive) peer.
    pub identity: Option<SpiffeId>,
    pub addr: SocketAddr,
}

/// One HTTP port of this workload: its limits and a pooled client to the app.
pub struct HttpPort {
    pub port: u16,
    pub limits: HttpLimits,
    in_flight: Arc<Semaphore>,
    /// HTTP/1.1 requests go to the app as HTTP/1.1 through this pool; HTTP/2 ones (gRPC)
    /// as HTTP/2 with prior knowledge, through the caller connection's [`AppHttp2`].
    http1: Client<AppConnector, RequestBody>,
    app: SocketAddr,
    connect_timeout: Duration,
}

impl HttpPort {
    pub fn new(port: &InboundPort, connect_timeout: Duration) -> Self {
        let connector = AppConnector {
            app: port.app_addr(),
            timeout: connect_timeout,
        };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(MAX_IDLE_APP_CONNECTIONS)
            .build(connector);
        Self {
            port: port.port,
            limits: port.http.clone(),
            in_flight: Arc::new(Semaphore::new(port.http.max_concurrent_requests)),
            http1,
            app: port.app_addr(),
            connect_timeout,
        }
    }
}

/// The HTTP/2 connection to the app that carries one caller connection's requests. Each
/// caller connection gets its own, opened at its first HTTP/2 request and closed with it:
/// callers never queue behind one another on a single shared connection, and the app sees
/// as many connections as it would without the mesh.
struct AppHttp2 {
    sender: tokio::sync::Mutex<Option<SendRequest<RequestBody>>>,
}

impl AppHttp2 {
    async fn send(
        &self,
        port: &HttpPort,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut sender = {
            let mut slot = self.sender.lock().await;
            match slot.as_ref().filter(|s| !s.is_closed()) {
                Some(sender) => sender.clone(),
                None => {
                    let sender = Self::connect(port).await?;
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }

    async fn connect(port: &HttpPort) -> Result<SendRequest<RequestBody>, BoxError> {
        let stream = tokio::time::timeout(port.connect_timeout, TcpStream::connect(port.app))
            .await
            .map_err(|_| "connecting to the app timed out")??;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection to the app ended");
            }
        });
        Ok(sender)
    }
}

/// Connects to the app's address whatever the request URI says: the port's pool has one
/// key, and an HTTP/2 URI can keep the caller's authority.
#[derive(Clone)]
struct AppConnector {
    app: SocketAddr,
    timeout: Duration,
}

impl tower_service::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (app, timeout) = (self.app, self.timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(app))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}

/// Serves HTTP/1.1 and HTTP/2 on one stream until the peer closes it or `stop` turns
/// true (then in-flight requests finish, and the connection closes).
pub async fn serve<IO>(
    shared: Arc<Shared>,
    port: Arc<HttpPort>,
    peer: Arc<Peer>,
    io: IO,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = &port.limits;
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
    let handler_port = port.clone();
    let handler_shared = shared.clone();
    let app_http2 = Arc::new(AppHttp2 {
        sender: tokio::sync::Mutex::new(None),
    });
    let service = hyper::service::service_fn(move |request| {
        let (shared, port, peer) = (handler_shared.clone(), handler_port.clone(), peer.clone());
        let app_http2 = app_http2.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle(&shared, &port, &peer, &app_http2, request).await,
            )
        }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = crate::stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        // hyper answers an HTTP/1 head over the size or count limit with 431 itself, and
        // closes a connection whose head does not arrive in time (slowloris) without an
        // answer, as nginx does.
        match e.downcast_ref::<hyper::Error>() {
            Some(e) if e.is_timeout() => shared.metrics.limit("header_read_timeout"),
            Some(e) if e.is_parse_too_large() => shared.metrics.limit("headers"),
            _ => {}
        }
        tracing::debug!(port = port.port, error = %e, "HTTP connection ended");
    }
}

/// What ended a request body early.
const BODY_OK: u8 = 0;
const BODY_TOO_LARGE: u8 = 1;
const BODY_TIMED_OUT: u8 = 2;

/// A refusal before or instead of forwarding.
struct Refusal {
    status: StatusCode,
    reason: String,
    decision: Disposition,
    /// Counted under `airlock_http_limit_rejections` with this name.
    limit: Option<&'static str>,
}

impl Refusal {
    fn shape(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
            decision: Disposition::Rejected,
            limit: None,
        }
    }

    fn limit(status: StatusCode, limit: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            decision: Disposition::Rejected,
            limit: Some(limit),
        }
    }
}

impl From<ShapeRefusal> for Refusal {
    fn from(refusal: ShapeRefusal) -> Self {
        Self {
            status: refusal.status,
            reason: refusal.reason,
            decision: Disposition::Rejected,
            limit: refusal.limit,
        }
    }
}

/// The access log line and metrics of one request, written when its response ends.
struct Exchange {
    shared: Arc<Shared>,
    record: Record,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    decision: Disposition,
}

impl Exchange {
    fn finish(mut self, status: StatusCode, bytes_out: u64) {
        let elapsed = self.started.elapsed();
        let metrics = &self.shared.metrics;
        metrics
            .http_requests
            .get_or_create(&HttpLabels {
                direction: Direction::Inbound,
                status_class: format!("{}xx", status.as_u16() / 100),
                decision: self.decision,
            })
            .inc();
        metrics
            .http_request_duration
            .get_or_create(&DirectionLabels {
                direction: Direction::Inbound,
            })
            .observe(elapsed.as_secs_f64());
        self.record.status = Some(status.as_u16());
        self.record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.record.bytes_out = bytes_out;
        self.record.duration_ms = elapsed.as_secs_f64() * 1000.0;
        self.shared.access_log.write(&self.record);
    }
}

async fn handle(
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

/// The parts of the log line known from the request head (masked).
fn base_record(shared: &Shared, port: u16, peer: &Peer, request: &Request<Incoming>) -> Record {
    let protocol = if is_grpc(request.headers()) {
        "grpc"
    } else if request.version() == Version::HTTP_2 {
        "http2"
    } else {
        "http1"
    };
    let log = &shared.access_log;
    // No line will be written: skip the formatting and the masking regexes, and keep
    // only what the refusal and the metrics read.
    if !log.enabled() {
        return Record {
            protocol: Some(protocol),
            ..Record::default()
        };
    }
    let header = |name: &str| {
        request.headers().get(name).map(|v| {
            log.masker
                .header(name, &String::from_utf8_lossy(v.as_bytes()))
        })
    };
    Record {
        time: crate::lifecycle::rfc3339_now(),
        direction: "inbound",
        kind: "http",
        source: peer.identity.as_ref().map(ToString::to_string),
        destination: shared
            .identity
            .store
            .current()
            .map(|svid| svid.id.to_string()),
        source_addr: Some(peer.addr.to_string()),
        port,
        protocol: Some(protocol),
        method: Some(request.method().as_str().to_owned()),
        request_id: header("x-request-id"),
        traceparent: header("traceparent"),
        headers: log
            .headers
            .iter()
            .filter_map(|name| Some((name.clone(), header(name)?)))
            .collect(),
        ..Record::default()
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
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
    let upgrade = wants_upgrade(&request);
    remove_hop_by_hop(request.headers_mut(), upgrade);
    let log = &shared.access_log;
    if log.enabled() {
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
    let key = TunnelKey {
        source: peer.identity.clone(),
        source_ip: peer.addr.ip(),
        port: port.port,
        http: Some(Arc::new(HttpRequest {
            method: method.to_owned(),
            override_method: (overriding != method).then(|| overriding.to_owned()),
            path: shape.path.clone(),
            host: shape.host.clone(),
            headers,
        })),
    };
    let authorization = authorize(shared, key.clone()).map_err(|NoValidSvid| {
        Refusal::limit(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_svid",
            "this sidecar has no valid SVID",
        )
    })?;
    let decision = &authorization.decision;
    exchange.decision = Disposition::of(decision.allowed);
    if shared.access_log.enabled() {
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
    set_identity_headers(request.headers_mut(), peer, &authorization.own_id);
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

/// What an allowed request holds until its response ends.
struct Held {
    guard: TunnelGuard,
    cancelled: oneshot::Receiver<()>,
    permit: OwnedSemaphorePermit,
}

/// The verified peer for the app: `x-airlock-peer-identity` and `x-forwarded-client-cert`
/// (none for a plaintext peer; both were stripped from the incoming request).
fn set_identity_headers(headers: &mut HeaderMap, peer: &Peer, own_id: &SpiffeId) {
    let Some(identity) = &peer.identity else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(identity.as_str()) {
        headers.insert(PEER_IDENTITY_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("By={own_id};URI={identity}")) {
        headers.insert(XFCC_HEADER, value);
    }
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
    let upgrade = wants_upgrade(&request);
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
            port.http1.request(outgoing).await.map_err(BoxError::from)
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

/// A WebSocket upgrade (the one protocol switch relayed). Any other `Upgrade`, such as
/// `h2c`, is dropped as a hop-by-hop header: after a switch the bytes are no longer
/// authorized request by request, so only a protocol meant for it may switch.
fn wants_upgrade(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_11
        && request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && connection_tokens(request.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the headers that belong to one hop (RFC 9110 §7.6.1), keeping `Upgrade` and
/// `Connection: upgrade` for a protocol switch and `TE: trailers` (gRPC needs it).
fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !(upgrading && t.eq_ignore_ascii_case("upgrade")))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        header::TRANSFER_ENCODING.as_str(),
        header::TRAILER.as_str(),
    ] {
        headers.remove(name);
    }
    if !upgrading {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    } else {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

fn refusal_response(refusal: &Refusal, grpc: bool) -> Response<ProxyBody> {
    let reason = refusal.reason.as_str();
    let mut response = if grpc && refusal.status == StatusCode::FORBIDDEN {
        // gRPC: HTTP 200 with trailers only; status 7 is PERMISSION_DENIED.
        let mut response = Response::new(empty());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static("7"));
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(reason)) {
            response.headers_mut().insert("grpc-message", message);
        }
        response
    } else {
        let mut response = Response::new(full(format!("{reason}\n")));
        *response.status_mut() = refusal.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if let Ok(value) = HeaderValue::from_str(reason) {
        response.headers_mut().insert(DENY_REASON_HEADER, value);
    }
    response
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, the rest `%XX`.
fn grpc_percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

/// The request body on its way to the app: counted, capped and timed.
struct RequestBody {
    inner: Incoming,
    received: Arc<AtomicU64>,
    max: Option<u64>,
    deadline: Pin<Box<Sleep>>,
    state: Arc<AtomicU8>,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Trailers cannot carry identity headers to the app either.
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        screen_trailers(&mut trailers);
                        Frame::trailers(trailers)
                    }
                    Err(frame) => frame,
                };
                if let Some(data) = frame.data_ref() {
                    let total = this
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if this.max.is_some_and(|max| total > max) {
                        this.state.store(BODY_TOO_LARGE, Ordering::Relaxed);
                        return Poll::Ready(Some(Err("request body too large".into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.state.store(BODY_TIMED_OUT, Ordering::Relaxed);
                    return Poll::Ready(Some(Err("request body timed out".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The app's response body on its way to the peer. It holds the request's registration
/// (so a re-check can cut it), its concurrency permit, and its log line, written when the
/// body ends, fails or is dropped.
struct ResponseBody {
    inner: Incoming,
    bytes: u64,
    status: StatusCode,
    exchange: Option<Exchange>,
    held: Option<Held>,
}

impl ResponseBody {
    fn finish(&mut self) {
        self.held = None;
        if let Some(exchange) = self.exchange.take() {
            exchange.finish(self.status, self.bytes);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(held) = &mut this.held
            && Pin::new(&mut held.cancelled).poll(cx).is_ready()
        {
            this.finish();
            return Poll::Ready(Some(Err("closed: the request is no longer allowed".into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.finish();
    }
}
