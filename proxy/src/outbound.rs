//! The outbound side: each application connection to a TCP port becomes one CONNECT
//! stream to the destination's sidecar; one to an HTTP port is served as HTTP, each
//! request routed on its own ([`crate::route`]). Explicit upstream listeners
//! (`127.0.0.1:9001 → payments`) need no privileges; the transparent listener reads the
//! original destination of a connection that iptables REDIRECTed to it (SO_ORIGINAL_DST)
//! and looks it up in the registry (a connection to an endpoint's own address keeps
//! going to that endpoint, routed or not). A destination outside the mesh is refused:
//! egress is denied by default.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_identity::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::Shared;
use crate::access_log::Record;
use crate::config::routes::ServiceProtocol;
use crate::config::{Dialed, Service, service_at};
use crate::lifecycle::unix_now;
use crate::listener::accept_loop;
use crate::metrics::{Direction, DirectionLabels, Disposition, Metrics};
use crate::pool::OpenError;
use crate::relay::{Outcome as Relayed, relay};
use crate::route::RoutedTarget;
use crate::route::balance::{Balancer, InFlight, Outcome};

/// Where an accepted application connection should go.
#[derive(Debug, Clone)]
pub(crate) enum Route {
    /// An explicit upstream: this service, this port.
    Service { name: String, port: u16 },
    /// Transparent capture: whatever the original destination was.
    OriginalDestination,
}

/// Why an application connection was refused (logged as `outbound connection refused`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboundError {
    /// The upstream listener's service is not in the live registry: it left, or the
    /// control plane has not announced it (yet).
    #[error("service is not in the registry")]
    ServiceLeft,
    /// The service is known, but none of its endpoints can take traffic (all of its pods
    /// are gone, or ejected).
    #[error("service {0} has no endpoint to send to")]
    NoEndpoints(String),
    /// The original destination of a captured connection could not be read.
    #[error("SO_ORIGINAL_DST: {0}")]
    OriginalDestination(#[source] std::io::Error),
    /// A connection to the transparent listener that capture did not redirect there (it
    /// was aimed at loopback): relaying it would loop.
    #[error("{0} is not a redirected destination; refusing to loop")]
    NotRedirected(SocketAddr),
    /// The sidecar holds no valid SVID, so it opens no tunnel (fail closed).
    #[error("no valid SVID: failing closed")]
    NoSvid,
    /// The CONNECT stream to the service's sidecar could not be opened.
    #[error("{service}: {source}")]
    Open {
        service: String,
        #[source]
        source: OpenError,
    },
    /// A captured destination outside the mesh that no egress rule allows.
    #[error("{0} is outside the mesh and no egress rule allows it")]
    EgressDenied(SocketAddr),
    /// An allowed egress destination refused the connection.
    #[error("egress to {destination}: {source}")]
    EgressConnect {
        destination: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// An allowed egress destination did not accept within the connect timeout.
    #[error("egress to {0}: connect timed out")]
    EgressTimeout(SocketAddr),
}

/// Accepts application connections for one route until `stop` turns true.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    route: Route,
    stop: watch::Receiver<bool>,
) {
    let limit = shared.config.limits.max_connections;
    let metrics = shared.metrics.clone();
    accept_loop(
        "outbound",
        listener,
        limit,
        metrics,
        stop,
        move |app, peer| {
            let shared = shared.clone();
            let route = route.clone();
            async move {
                if let Err(reason) = forward(&shared, app, &route).await {
                    tracing::info!(app = %peer, %reason, "outbound connection refused");
                }
            }
        },
    )
    .await;
}

/// Where a connection goes: a mesh service's sidecar, or (captured, outside the mesh)
/// straight to its original destination if egress allows.
enum Destination {
    Mesh {
        service: String,
        identity: SpiffeId,
        endpoint: SocketAddr,
        target: SocketAddr,
        /// The balancer's count of this tunnel at its endpoint (explicit upstreams).
        balanced: Option<(Arc<Balancer>, InFlight)>,
    },
    /// An HTTP port of a service: every request is routed on its own.
    Routed {
        service: Arc<str>,
        target: RoutedTarget,
    },
    Outside(SocketAddr),
}

/// Looks the connection up in the registry. Only what the connection needs is copied
/// out, so a long tunnel does not keep a replaced registry alive.
fn destination(
    shared: &Shared,
    app: &TcpStream,
    route: &Route,
) -> Result<Destination, OutboundError> {
    let services = shared.services();
    let destination = match route {
        Route::Service { name, port } => {
            let service = services.get(name).ok_or(OutboundError::ServiceLeft)?;
            return balanced(shared, name, service, *port);
        }
        Route::OriginalDestination => {
            original_destination(app).map_err(OutboundError::OriginalDestination)?
        }
    };
    // Aimed at loopback, where the transparent listener itself is (an app that dialed
    // 15001 directly): relaying it would loop.
    if destination.ip().is_loopback() {
        Metrics::reason(&shared.metrics.connect_refused, "not_redirected");
        return Err(OutboundError::NotRedirected(destination));
    }
    let Some((name, service, dialed)) = service_at(&services, destination) else {
        return Ok(Destination::Outside(destination));
    };
    if dialed == Dialed::Address {
        // A ClusterIP: the service, balanced, as if through an upstream listener.
        return balanced(shared, name, service, destination.port());
    }
    if is_http(service, destination.port()) {
        // The app dialed this endpoint's own address: its requests go there.
        return Ok(Destination::Routed {
            service: Arc::from(name),
            target: RoutedTarget {
                port: destination.port(),
                pinned: Some(destination.ip()),
            },
        });
    }
    let endpoint = service
        .endpoints
        .iter()
        .find(|e| e.ip() == destination.ip())
        .copied()
        .ok_or(OutboundError::ServiceLeft)?;
    Ok(Destination::Mesh {
        service: name.to_owned(),
        identity: service.identity.clone(),
        endpoint,
        target: destination,
        balanced: None,
    })
}

/// `port` of service `name`, its endpoint picked by the balancer: routed per request on
/// an HTTP port, one tunnel otherwise.
fn balanced(
    shared: &Shared,
    name: &str,
    service: &Service,
    port: u16,
) -> Result<Destination, OutboundError> {
    if is_http(service, port) {
        return Ok(Destination::Routed {
            service: Arc::from(name),
            target: RoutedTarget { port, pinned: None },
        });
    }
    let balancer = shared.routes.port(name, service, port).balancer.clone();
    let in_flight = balancer
        .pick(&[])
        .ok_or_else(|| OutboundError::NoEndpoints(name.to_owned()))?;
    let endpoint = in_flight.endpoint();
    Ok(Destination::Mesh {
        service: name.to_owned(),
        identity: service.identity.clone(),
        endpoint,
        target: SocketAddr::new(endpoint.ip(), port),
        balanced: Some((balancer, in_flight)),
    })
}

/// Whether `port` of `service` is routed per request.
fn is_http(service: &Service, port: u16) -> bool {
    service
        .port(port)
        .is_some_and(|p| p.protocol == ServiceProtocol::Http)
}

async fn forward(shared: &Arc<Shared>, app: TcpStream, route: &Route) -> Result<(), OutboundError> {
    let _ = app.set_nodelay(true);
    let (service_name, identity, endpoint, target, balanced) =
        match destination(shared, &app, route)? {
            Destination::Mesh {
                service,
                identity,
                endpoint,
                target,
                balanced,
            } => (service, identity, endpoint, target, balanced),
            Destination::Routed { service, target } => {
                crate::route::serve(shared.clone(), app, service, target).await;
                return Ok(());
            }
            Destination::Outside(destination) => return egress(shared, app, destination).await,
        };
    if shared.identity.valid_svid(unix_now()).is_none() {
        Metrics::reason(&shared.metrics.connect_refused, "no_svid");
        return Err(OutboundError::NoSvid);
    }
    let opened = shared
        .pool
        .open(endpoint, &identity, &target.to_string())
        .await;
    // The balancer learns whether the endpoint can be reached; a refused tunnel (policy)
    // says nothing against it.
    if let Some((balancer, in_flight)) = &balanced {
        let outcome = match &opened {
            Err(OpenError::Connect { .. } | OpenError::Tls { .. }) => Outcome::Unreachable,
            _ => Outcome::Success,
        };
        balancer.finish(in_flight, outcome);
    }
    let stream = opened.map_err(|source| {
        Metrics::reason(&shared.metrics.connect_refused, source.kind());
        OutboundError::Open {
            service: service_name,
            source,
        }
    })?;
    let labels = DirectionLabels {
        direction: Direction::Outbound,
    };
    shared
        .metrics
        .connections_opened
        .get_or_create(&labels)
        .inc();
    // Outbound tunnels end on either side's close or idleness; the inbound side enforces
    // policy re-checks.
    let mut record = access_record(shared, &app, target);
    let outcome = relay(
        app,
        stream.io,
        shared.config.limits.idle_timeout,
        std::future::pending(),
    )
    .await;
    if let Some(record) = &mut record {
        record.destination = Some(identity.to_string());
    }
    log_outcome(shared, record, Disposition::Allow, None, Some(&outcome));
    shared
        .metrics
        .count_bytes(Direction::Outbound, outcome.forward, outcome.reverse);
    shared
        .metrics
        .connections_closed
        .get_or_create(&labels)
        .inc();
    Ok(())
}

/// The start of an outbound access-log record, or `None` when the log is off and nobody
/// taps (then no time is formatted and no string is built).
fn access_record(shared: &Shared, app: &TcpStream, destination: SocketAddr) -> Option<Record> {
    shared.recording().then(|| Record {
        time: crate::lifecycle::rfc3339_now(),
        direction: "outbound",
        kind: "tcp",
        source: shared.identity.store.current().map(|s| s.id.to_string()),
        source_addr: app.peer_addr().ok().map(|a| a.to_string()),
        destination_addr: Some(destination.to_string()),
        port: destination.port(),
        ..Record::default()
    })
}

/// Completes and writes `record` (if the log is on or a tap streams).
fn log_outcome(
    shared: &Shared,
    record: Option<Record>,
    decision: Disposition,
    reason: Option<&str>,
    outcome: Option<&Relayed>,
) {
    let Some(mut record) = record else {
        return;
    };
    record.decision = decision;
    record.reason = reason.map(str::to_owned);
    if let Some(outcome) = outcome {
        record.bytes_in = outcome.forward;
        record.bytes_out = outcome.reverse;
        record.duration_ms = outcome.elapsed.as_secs_f64() * 1000.0;
    }
    shared.record(&record);
}

/// A captured connection to a destination outside the mesh: relayed as plain TCP when an
/// egress rule allows it, refused (logged and counted) otherwise.
async fn egress(
    shared: &Shared,
    app: TcpStream,
    destination: SocketAddr,
) -> Result<(), OutboundError> {
    let record = access_record(shared, &app, destination);
    if !shared.config.outbound.egress_allows(destination) {
        Metrics::reason(&shared.metrics.connect_refused, "egress_outside_mesh");
        let reason = "outside the mesh; no egress rule allows it";
        log_outcome(shared, record, Disposition::Deny, Some(reason), None);
        return Err(OutboundError::EgressDenied(destination));
    }
    let connect = TcpStream::connect(destination);
    let upstream = match tokio::time::timeout(shared.config.limits.connect_timeout, connect).await {
        Ok(Ok(upstream)) => upstream,
        failed => {
            Metrics::reason(&shared.metrics.connect_refused, "egress_unreachable");
            let reason = "egress rule; the destination did not accept";
            log_outcome(shared, record, Disposition::Allow, Some(reason), None);
            return Err(match failed {
                Ok(Err(source)) => OutboundError::EgressConnect {
                    destination,
                    source,
                },
                _ => OutboundError::EgressTimeout(destination),
            });
        }
    };
    let _ = upstream.set_nodelay(true);
    let outcome = relay(
        app,
        upstream,
        shared.config.limits.idle_timeout,
        std::future::pending(),
    )
    .await;
    shared
        .metrics
        .count_bytes(Direction::Outbound, outcome.forward, outcome.reverse);
    log_outcome(
        shared,
        record,
        Disposition::Allow,
        Some("egress rule"),
        Some(&outcome),
    );
    Ok(())
}

/// The destination a connection had before iptables REDIRECT rewrote it, IPv4 or IPv6
/// by the family of the socket.
pub(crate) fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let original = if stream.local_addr()?.is_ipv6() {
        socket.original_dst_v6()?
    } else {
        socket.original_dst_v4()?
    };
    original
        .as_socket()
        .ok_or_else(|| std::io::Error::other("the original destination is not an IP address"))
}
