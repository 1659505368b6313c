//! The inbound mesh transport (15008): TLS 1.3 with a mandatory, fully verified client
//! SVID, then HTTP/2; each CONNECT stream names the target port. On a `tcp` port the
//! stream is authorized — (peer identity, source IP, port) — before a single byte reaches
//! the app: denied streams get 403 with the reason, allowed ones are relayed to the app on
//! loopback. On an `http` port every request on the stream is authorized by [`crate::l7`];
//! an `auto` port decides between the two from the client's first bytes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_identity::peer_svid;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::Shared;
use crate::access_log::Record;
use crate::authorize::{Admission, authorize};
use crate::config::{InboundPort, PortProtocol};
use crate::detect::{Detected, FirstBytes, detect, watch_first_bytes};
use crate::l7;
use crate::l7::body::ProxyBody;
use crate::lifecycle::unix_now;
use crate::listener::accept_loop;
use crate::mesh_request;
use crate::metrics::{Direction, DirectionLabels, Metrics};
use crate::pool::DENY_REASON_HEADER;
use crate::relay::{Ended, relay};
use crate::tunnels::{Peer, TunnelGuard};

/// Accepts mesh connections until `stop` turns true.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    stop: watch::Receiver<bool>,
) {
    let limit = shared.config.limits.max_connections;
    let metrics = shared.metrics.clone();
    let connection_stop = stop.clone();
    accept_loop(
        "inbound",
        listener,
        limit,
        metrics,
        stop,
        move |tcp, peer| {
            handle_connection(
                shared.clone(),
                acceptor.clone(),
                tcp,
                peer,
                connection_stop.clone(),
            )
        },
    )
    .await;
}

async fn handle_connection(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    // Garbage, plaintext or silent clients are dropped at the handshake deadline, each on
    // its own task, so they cannot hold up anyone else.
    let tls =
        match tokio::time::timeout(shared.config.limits.handshake_timeout, acceptor.accept(tcp))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = crate::tls_failure::reason(&e);
                Metrics::reason(&shared.metrics.tls_handshake_errors, reason);
                tracing::info!(%peer, error = %e, "inbound TLS handshake refused");
                return;
            }
            Err(_) => {
                Metrics::reason(&shared.metrics.tls_handshake_errors, "timeout");
                return;
            }
        };
    let streams_limit =
        u32::try_from(shared.config.limits.max_streams_per_connection).unwrap_or(u32::MAX);
    let Some(peer_svid) = peer_svid(tls.get_ref().1) else {
        return; // unreachable: the verifier requires a client certificate
    };
    let peer_not_after = peer_svid.not_after;
    let peer_svid = Arc::new(peer_svid);
    // Routed HTTP/2 requests of this connection reach an HTTP/2 app on one connection
    // of their own, as a caller's connection does.
    let app_http2 = Arc::new(l7::AppHttp2::new());
    let mut bundle_changes = shared.identity.bundle_changes.subscribe();
    let identity = shared.identity.clone();
    let connection_svid = peer_svid.clone();
    let service = service_fn(move |request| {
        let shared = shared.clone();
        let app_http2 = app_http2.clone();
        let peer = Peer {
            identity: Some(peer_svid.id.clone()),
            svid: Some(peer_svid.clone()),
            addr: peer,
        };
        async move {
            Ok::<_, Infallible>(
                handle_stream(shared, request, peer, peer_not_after, &app_http2).await,
            )
        }
    });
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(streams_limit)
        .max_frame_size(crate::MESH_MAX_FRAME_SIZE)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(connection);
    // The handshake vouched for the peer until its SVID's NotAfter only: then no new
    // streams (GOAWAY; live tunnels finish), and the peer reconnects with its renewed
    // SVID. Drain ends the connection the same way.
    // A revocation published while the connection lives ends it the same way: no new
    // streams (each is refused anyway), and the re-check cuts its live tunnels.
    let until_expiry = Duration::from_secs((peer_not_after - unix_now()).max(0) as u64);
    let expiry = tokio::time::sleep(until_expiry);
    tokio::pin!(expiry);
    let ended = loop {
        tokio::select! {
            served = connection.as_mut() => break Some(served),
            () = &mut expiry => break None,
            () = crate::stopped(&mut stop) => break None,
            changed = bundle_changes.changed() => {
                let revoked = identity.revoked(&connection_svid);
                if let Some(revoked) = revoked {
                    tracing::info!(%peer, reason = crate::tunnels::revoked_reason(revoked), "closing a mesh connection");
                }
                if changed.is_err() || revoked.is_some() {
                    break None;
                }
            }
        }
    };
    let served = match ended {
        Some(served) => served,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "inbound mesh connection ended");
    }
}

fn refuse(status: StatusCode, reason: &str) -> Response<ProxyBody> {
    let mut response = Response::new(text_body(format!("{reason}\n")));
    *response.status_mut() = status;
    if let Ok(value) = reason.parse() {
        response.headers_mut().insert(DENY_REASON_HEADER, value);
    }
    response
}

fn text_body(text: String) -> ProxyBody {
    Full::from(text).map_err(|never| match never {}).boxed()
}

/// One stream of a mesh connection: a CONNECT tunnel to a port, or a routed request
/// ([`crate::mesh_request`]) for an HTTP port.
async fn handle_stream(
    shared: Arc<Shared>,
    mut request: Request<Incoming>,
    peer: Peer,
    peer_not_after: i64,
    app_http2: &l7::AppHttp2,
) -> Response<ProxyBody> {
    if shared.is_draining() {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "this sidecar is draining");
    }
    if unix_now() >= peer_not_after {
        return refuse(
            StatusCode::FORBIDDEN,
            "the peer's SVID has expired; reconnect with a current one",
        );
    }
    // The handshake checked the deny list of its time; a stream is checked against today's.
    if let Some(revoked) = peer
        .svid
        .as_deref()
        .and_then(|s| shared.identity.revoked(s))
    {
        Metrics::reason(&shared.metrics.connect_refused, "revoked");
        return refuse(
            StatusCode::FORBIDDEN,
            crate::tunnels::revoked_reason(revoked),
        );
    }
    // Routing metadata is read (and removed) whatever the method: a CONNECT that carries
    // it is no tunnel a sidecar asked for.
    let routed = mesh_request::take(request.headers_mut());
    match (request.method() == Method::CONNECT, routed) {
        (false, Some(Ok(target))) => {
            return serve_routed(&shared, request, target, &peer, app_http2).await;
        }
        (_, Some(Err(reason))) => return refuse(StatusCode::BAD_REQUEST, &reason),
        (true, Some(Ok(_))) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "a CONNECT carries no routing metadata",
            );
        }
        (false, None) => {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "the mesh transport accepts CONNECT and routed requests only",
            );
        }
        (true, None) => {}
    }
    let Some(port) = request.uri().authority().and_then(|a| a.port_u16()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "CONNECT needs an ip:port authority",
        );
    };
    let inbound_port = match declared_port(&shared, port, |_| true) {
        Ok(inbound_port) => inbound_port.clone(),
        Err((status, reason)) => return refuse(status, &reason),
    };
    if inbound_port.protocol != PortProtocol::Tcp {
        // HTTP: accept the stream; each request on it is authorized on its own.
        let on_upgrade = hyper::upgrade::on(request);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                serve_port(shared, &inbound_port, peer, TokioIo::new(upgraded)).await;
            }
        });
        return Response::new(text_body(String::new()));
    }
    match open_tunnel(&shared, &peer, &inbound_port).await {
        Ok(tunnel) => {
            let on_upgrade = hyper::upgrade::on(request);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    tunnel.relay(&shared, TokioIo::new(upgraded), 0).await;
                }
            });
            Response::new(text_body(String::new()))
        }
        Err((status, reason)) => refuse(status, &reason),
    }
}

/// A routed request: authorized and forwarded by [`l7`] like a request on a tunnel, to
/// the app in the protocol the calling app spoke.
async fn serve_routed(
    shared: &Arc<Shared>,
    mut request: Request<Incoming>,
    target: mesh_request::RouteTarget,
    peer: &Peer,
    app_http2: &l7::AppHttp2,
) -> Response<ProxyBody> {
    if let Err((status, reason)) = declared_port(shared, target.port, |_| true) {
        return refuse(status, &reason);
    }
    let Some(http_port) = shared.http_ports.get(&target.port).cloned() else {
        Metrics::reason(&shared.metrics.connect_refused, "routed_to_tcp_port");
        return refuse(
            StatusCode::BAD_GATEWAY,
            &format!(
                "port {} is tcp here; routed HTTP needs protocol http or auto",
                target.port
            ),
        );
    };
    *request.version_mut() = match target.protocol {
        mesh_request::AppProtocol::Http1 => http::Version::HTTP_11,
        mesh_request::AppProtocol::Http2 => http::Version::HTTP_2,
    };
    l7::handle(shared, &http_port, peer, app_http2, request).await
}

/// Serves an accepted stream of `port` by its protocol. For `tcp` (and `auto` streams
/// that are not HTTP) the tunnel is authorized here, so a refusal just closes the stream.
async fn serve_port<IO>(shared: Arc<Shared>, port: &InboundPort, peer: Peer, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http_port = shared.http_ports.get(&port.port).cloned();
    match (port.protocol, http_port) {
        (PortProtocol::Http, Some(http_port)) => {
            let stop = shared.stop_signal();
            l7::serve(shared, http_port, Arc::new(peer), io, stop).await;
        }
        (PortProtocol::Auto, Some(http_port)) => {
            let (detected, timed_out, io) = detect(io, shared.config.inbound.detect_timeout).await;
            let result = match (detected, timed_out) {
                (Detected::Http1, _) => "http1",
                (Detected::Http2, _) => "http2",
                (_, true) => "timeout",
                _ => "tcp",
            };
            shared.metrics.detection(result);
            match (detected, timed_out) {
                (Detected::Http1 | Detected::Http2, _) => {
                    let stop = shared.stop_signal();
                    l7::serve(shared, http_port, Arc::new(peer), io, stop).await;
                }
                (_, true) => serve_silent(shared, port, http_port, peer, io).await,
                _ => serve_tcp(&shared, port, &peer, io).await,
            }
        }
        _ => serve_tcp(&shared, port, &peer, io).await,
    }
}

/// An `auto` stream whose caller said nothing within the detection timeout: a
/// server-first protocol, or a caller waiting to escape HTTP handling. The tunnel is
/// authorized and the app connected so that it can greet, but the caller's first bytes
/// are classified before any reach the app ([`watch_first_bytes`]).
async fn serve_silent<IO>(
    shared: Arc<Shared>,
    port: &InboundPort,
    http_port: Arc<l7::HttpPort>,
    peer: Peer,
    io: IO,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut tunnel = match open_tunnel(&shared, &peer, port).await {
        Ok(tunnel) => tunnel,
        Err((_, reason)) => {
            tracing::info!(peer = %peer.addr, port = port.port, %reason, "connection refused");
            return;
        }
    };
    let idle = shared.config.limits.idle_timeout;
    let patience = shared.config.inbound.detect_timeout;
    match watch_first_bytes(io, &mut tunnel.app, idle, patience, &mut tunnel.cancelled).await {
        FirstBytes::Opaque { io, greeted } => tunnel.relay(&shared, io, greeted).await,
        FirstBytes::Http(io) => {
            // HTTP after all: each request is authorized on its own; the raw app
            // connection is not needed.
            shared.metrics.detection("late_http");
            drop(tunnel);
            let stop = shared.stop_signal();
            l7::serve(shared, http_port, Arc::new(peer), io, stop).await;
        }
        FirstBytes::HttpAfterGreeting => {
            shared.metrics.detection("late_http_refused");
            tracing::info!(peer = %peer.addr, port = port.port, "connection refused: HTTP after the app's greeting on an auto port");
        }
        FirstBytes::Gone => {}
    }
}

async fn serve_tcp<IO: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    port: &InboundPort,
    peer: &Peer,
    io: IO,
) {
    match open_tunnel(shared, peer, port).await {
        Ok(tunnel) => tunnel.relay(shared, io, 0).await,
        Err((_, reason)) => {
            tracing::info!(peer = %peer.addr, port = port.port, %reason, "connection refused");
        }
    }
}

/// An authorized tunnel whose app connection is open.
struct Tunnel {
    app: TcpStream,
    port: u16,
    guard: TunnelGuard,
    cancelled: oneshot::Receiver<()>,
    /// Its access log line, finished when the tunnel ends.
    record: Record,
}

impl Tunnel {
    /// Relays between the peer and the app until either ends, idles out or is cut;
    /// `greeted` bytes of the app's already reached the peer.
    async fn relay<P: AsyncRead + AsyncWrite + Unpin>(
        self,
        shared: &Shared,
        peer: P,
        greeted: u64,
    ) {
        let labels = DirectionLabels {
            direction: Direction::Inbound,
        };
        shared
            .metrics
            .connections_opened
            .get_or_create(&labels)
            .inc();
        let cancelled = self.cancelled;
        let outcome = relay(
            peer,
            self.app,
            shared.config.limits.idle_timeout,
            async move {
                // A closed channel (the registration gone) ends the relay too.
                let _ = cancelled.await;
            },
        )
        .await;
        let reverse = outcome.reverse + greeted;
        shared
            .metrics
            .count_bytes(Direction::Inbound, outcome.forward, reverse);
        if outcome.ended == Ended::Cancelled {
            tracing::info!(port = self.port, "tunnel closed: no longer allowed");
        }
        let mut record = self.record;
        record.bytes_in = outcome.forward;
        record.bytes_out = reverse;
        record.duration_ms = outcome.elapsed.as_secs_f64() * 1000.0;
        shared.record(&record);
        shared
            .metrics
            .connections_closed
            .get_or_create(&labels)
            .inc();
        drop(self.guard);
    }
}

/// The declared port `port`, if this listener (`port_allowed`) may serve it.
fn declared_port(
    shared: &Shared,
    port: u16,
    port_allowed: impl Fn(&InboundPort) -> bool,
) -> Result<&InboundPort, (StatusCode, String)> {
    shared
        .config
        .inbound
        .ports
        .iter()
        .find(|p| p.port == port && port_allowed(p))
        .ok_or_else(|| {
            Metrics::reason(&shared.metrics.connect_refused, "undeclared_port");
            (
                StatusCode::FORBIDDEN,
                format!("port {port} is not served here"),
            )
        })
}

/// Authorizes a TCP tunnel from `peer` to `inbound_port` with the live policy and
/// connects to the app. Errors carry the status and reason.
async fn open_tunnel(
    shared: &Shared,
    peer: &Peer,
    inbound_port: &InboundPort,
) -> Result<Tunnel, (StatusCode, String)> {
    let port = inbound_port.port;
    let key = peer.key(port, None);
    let Ok(authorization) = authorize(shared, key.clone()) else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "this sidecar has no valid SVID".into(),
        ));
    };
    let decision = &authorization.decision;
    let mut record = Record {
        time: crate::lifecycle::rfc3339_now(),
        direction: "inbound",
        kind: "tcp",
        source: key.source.as_ref().map(ToString::to_string),
        destination: Some(authorization.own_id.to_string()),
        source_addr: Some(peer.addr.to_string()),
        port,
        ..Record::default()
    };
    record.note_decision(decision);
    let Some(Admission { guard, cancelled }) = authorization.admission else {
        shared.record(&record);
        tracing::info!(source = %key.source_text(), source_ip = %key.source_ip, port, reason = %decision.reason, "tunnel denied");
        return Err((StatusCode::FORBIDDEN, decision.reason.to_string()));
    };
    let connect = TcpStream::connect(inbound_port.app_addr());
    let app = match tokio::time::timeout(shared.config.limits.connect_timeout, connect).await {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            Metrics::reason(&shared.metrics.connect_refused, "app_unreachable");
            return Err((
                StatusCode::BAD_GATEWAY,
                format!("the app on port {port} refused: {e}"),
            ));
        }
        Err(_) => {
            Metrics::reason(&shared.metrics.connect_refused, "app_timeout");
            return Err((
                StatusCode::GATEWAY_TIMEOUT,
                format!("the app on port {port} did not accept in time"),
            ));
        }
    };
    let _ = app.set_nodelay(true);
    // A tunnel's line is written when it closes, which may be hours away: a tap hears
    // of it now as well.
    shared.tap.publish(crate::tap::Event::Open, &record);
    Ok(Tunnel {
        app,
        port,
        guard,
        cancelled,
        record,
    })
}

/// Permissive mode: plaintext connections REDIRECTed here (SO_ORIGINAL_DST names the
/// port), for ports that allow it during a migration. The peer is unauthenticated, so
/// only policy rules without identity fields (e.g. `ipBlocks`) can allow it.
pub(crate) async fn serve_plaintext(
    shared: Arc<Shared>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
) {
    let limit = shared.config.limits.max_connections;
    let metrics = shared.metrics.clone();
    accept_loop("permissive", listener, limit, metrics, stop, move |tcp, peer| {
        let shared = shared.clone();
        async move {
            let _ = tcp.set_nodelay(true);
            let port = match crate::outbound::original_destination(&tcp) {
                Ok(destination) => destination.port(),
                Err(e) => {
                    Metrics::reason(&shared.metrics.connect_refused, "no_original_destination");
                    tracing::info!(%peer, error = %e, "plaintext connection without an original destination");
                    return;
                }
            };
            let inbound_port = match declared_port(&shared, port, |p| p.permissive) {
                Ok(inbound_port) => inbound_port.clone(),
                Err((_, reason)) => {
                    tracing::info!(%peer, port, %reason, "plaintext connection refused");
                    return;
                }
            };
            let peer = Peer { identity: None, svid: None, addr: peer };
            serve_port(shared, &inbound_port, peer, tcp).await;
        }
    })
    .await;
}
