//! Caller-side HTTP: on a service port whose registry entry says `protocol: http`, the
//! caller's sidecar serves the app's HTTP/1.1 and HTTP/2 (gRPC included) and sends
//! every request on its own, as one HTTP/2 request on the pooled mTLS connection to the
//! endpoint the balancer picks ([`crate::mesh_request`] says how it is addressed).
//!
//! Each request runs through a tower stack, outermost first:
//! `Timeout` (`timeouts.request`, 504 or `DEADLINE_EXCEEDED` when it lapses) →
//! `Retry` ([`retry::RetryPolicy`], bounded by the port's budget) →
//! [`attempt::Attempts`] (`timeouts.backend_request`; balancer pick, send, report).
//! The callee's sidecar authorizes each request as it does any other.
//!
//! A WebSocket upgrade is the exception: it travels in a CONNECT stream (`upgrade`).
//!
//! The module's parts: `balance` (P2C over peak-EWMA and failure accrual), `ewma`,
//! `retry`, `attempt`, `upgrade`, `metrics`; this file holds the per-port table and the
//! app-facing server.

pub(crate) mod attempt;
pub(crate) mod balance;
mod ewma;
pub(crate) mod metrics;
pub(crate) mod retry;
mod upgrade;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tower::retry::budget::TpsBudget;
use tower::timeout::error::Elapsed;

use self::attempt::{Answered, AttemptError, Attempts, Judge, Tried, Verdict};
use self::balance::Balancer;
use self::metrics::RouteMetrics;
use self::retry::{RetryCount, RetryPolicy, idempotent};
use crate::Shared;
use crate::access_log::Record;
use crate::config::routes::{MAX_RETRY_BODY_BYTES, RetryConstraint, ServicePort, ServiceProtocol};
use crate::config::{HttpLimits, RoutedLimits, Service, Services};
use crate::l7::body::{BoxError, ProxyBody};
use crate::l7::headers::{is_grpc, remove_hop_by_hop, wants_upgrade};
use crate::l7::refusal::{Refusal, refusal_response};
use crate::lifecycle::unix_now;
use crate::mesh_body::{HeldBody, MeshBody};
use crate::mesh_request::{AppProtocol, RouteTarget, stamp};
use crate::metrics::Disposition;
use crate::pool::StreamSlot;

/// The settings of `port` of `service`; an unlisted port is `tcp`. Borrowed: this runs
/// on every routed request.
fn port_settings(service: &Service, port: u16) -> Cow<'_, ServicePort> {
    service.port(port).map_or_else(
        || Cow::Owned(ServicePort::new(port, ServiceProtocol::Tcp)),
        Cow::Borrowed,
    )
}

/// What a sidecar keeps per destination service port: its balancer and retry budget.
pub(crate) struct RoutePort {
    pub(crate) balancer: Arc<Balancer>,
    budget: ArcSwap<TpsBudget>,
    constraint: Mutex<RetryConstraint>,
}

impl RoutePort {
    fn new(service: &Service, settings: &ServicePort) -> Self {
        Self {
            balancer: Arc::new(Balancer::new(&service.endpoints, settings.failure_accrual)),
            budget: ArcSwap::from_pointee(retry::budget(&settings.retry_constraint)),
            constraint: Mutex::new(settings.retry_constraint),
        }
    }

    fn update(&self, service: &Service, settings: &ServicePort) {
        self.balancer
            .update(&service.endpoints, settings.failure_accrual);
        let mut constraint = self
            .constraint
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *constraint != settings.retry_constraint {
            *constraint = settings.retry_constraint;
            self.budget
                .store(Arc::new(retry::budget(&settings.retry_constraint)));
        }
    }
}

/// Every destination service port this sidecar has sent to, the limits of the app's
/// routed connections, and the routed-request metrics.
pub(crate) struct Routes {
    table: Mutex<Table>,
    /// The server settings of routed app connections (`outbound.http`).
    limits: HttpLimits,
    /// Routed requests in flight, over every port and connection.
    in_flight: Arc<Semaphore>,
    pub(crate) metrics: Arc<RouteMetrics>,
}

#[derive(Default)]
struct Table {
    /// Service name → port → its state; keyed so that a lookup by `&str` allocates
    /// nothing (it runs on every routed request and TCP connection).
    ports: HashMap<Arc<str>, HashMap<u16, Arc<RoutePort>>>,
    /// The registry of the last [`Routes::update`]: a port made after it is made from it,
    /// not from an older snapshot its caller may still hold.
    latest: Option<Arc<Services>>,
    /// What the last update took away: forgotten again at the next, since requests in
    /// flight at the time answer afterwards and record their series once more.
    departed: Vec<Departed>,
}

/// What left the registry.
enum Departed {
    /// A whole service, with the endpoints it had.
    Service {
        name: Arc<str>,
        endpoints: Vec<SocketAddr>,
    },
    /// One endpoint of a service that stays.
    Endpoint {
        service: Arc<str>,
        endpoint: SocketAddr,
    },
}

impl Departed {
    /// Drops its metric series, unless it came back in `services`.
    fn forget(&self, metrics: &RouteMetrics, services: &Services) {
        match self {
            Self::Service { name, endpoints } if !services.contains_key(&**name) => {
                metrics.forget_service(name, endpoints)
            }
            Self::Endpoint { service, endpoint } => {
                let back = services
                    .get(&**service)
                    .is_some_and(|s| s.endpoints.contains(endpoint));
                if !back {
                    metrics.forget_endpoint(service, *endpoint)
                }
            }
            Self::Service { .. } => {}
        }
    }
}

impl Routes {
    pub(crate) fn new(limits: &RoutedLimits) -> Self {
        Self {
            table: Mutex::default(),
            limits: limits.as_http_limits(),
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            metrics: Arc::default(),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The balancer and budget of `port` of service `name` (`service` as the caller's
    /// registry snapshot has it), made at first use.
    pub(crate) fn port(&self, name: &str, service: &Service, port: u16) -> Arc<RoutePort> {
        let mut table = self.table();
        let Table { ports, latest, .. } = &mut *table;
        if let Some(known) = ports.get(name).and_then(|by_port| by_port.get(&port)) {
            return known.clone();
        }
        let service = latest
            .as_ref()
            .and_then(|services| services.get(name))
            .unwrap_or(service);
        let made = Arc::new(RoutePort::new(service, &port_settings(service, port)));
        ports
            .entry(Arc::from(name))
            .or_default()
            .insert(port, made.clone());
        made
    }

    /// Follows a new registry: endpoint sets and settings change in place (what is known
    /// of remaining endpoints is kept); ports of services that left are forgotten.
    /// The metric series of endpoints and services that left are dropped with them.
    pub(crate) fn update(&self, services: &Arc<Services>) {
        let mut table = self.table();
        let mut departed = Vec::new();
        table
            .ports
            .retain(|name, by_port| match services.get(&**name) {
                Some(service) => {
                    let listed: HashSet<&SocketAddr> = service.endpoints.iter().collect();
                    for (port, route) in by_port.iter() {
                        let before = route.balancer.addrs();
                        route.update(service, &port_settings(service, *port));
                        departed.extend(before.into_iter().filter(|a| !listed.contains(a)).map(
                            |endpoint| Departed::Endpoint {
                                service: name.clone(),
                                endpoint,
                            },
                        ));
                    }
                    true
                }
                None => {
                    let mut endpoints: Vec<_> =
                        by_port.values().flat_map(|r| r.balancer.addrs()).collect();
                    endpoints.sort_unstable();
                    endpoints.dedup();
                    departed.push(Departed::Service {
                        name: name.clone(),
                        endpoints,
                    });
                    false
                }
            });
        let before = std::mem::replace(&mut table.departed, departed);
        for gone in before.iter().chain(&table.departed) {
            gone.forget(&self.metrics, services);
        }
        table.latest = Some(services.clone());
    }
}

/// Where an app connection's requests go: a port of a service, and the endpoint the app
/// dialed when it dialed one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoutedTarget {
    pub(crate) port: u16,
    /// Set for a transparently captured connection to an endpoint's own address: its
    /// requests go there (with the port's timeouts and retries), not to the balancer's
    /// pick; an explicit upstream leaves it unset.
    pub(crate) pinned: Option<IpAddr>,
}

/// Serves one app connection to service `name` as HTTP, routing each request.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    app: TcpStream,
    name: Arc<str>,
    target: RoutedTarget,
) {
    let port = target.port;
    let app_addr = app.peer_addr().ok();
    let mut stop = shared.stop_signal();
    let handler_shared = shared.clone();
    let service = hyper::service::service_fn(move |request| {
        let (shared, name) = (handler_shared.clone(), name.clone());
        async move {
            let exchange = RoutedExchange {
                shared: &shared,
                name: &name,
                port,
                pinned: target.pinned,
                app_addr,
            };
            Ok::<_, std::convert::Infallible>(exchange.handle(request).await)
        }
    });
    let limits = &shared.routes.limits;
    if let Err(e) =
        crate::l7::serve_connection(limits, &shared.metrics, app, service, &mut stop).await
    {
        tracing::debug!(port, error = %e, "routed app connection ended");
    }
}

/// One app request to one service port.
struct RoutedExchange<'a> {
    shared: &'a Arc<Shared>,
    name: &'a Arc<str>,
    port: u16,
    pinned: Option<IpAddr>,
    app_addr: Option<std::net::SocketAddr>,
}

impl RoutedExchange<'_> {
    async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let grpc = is_grpc(request.headers());
        let mut record = self.record(&request);
        let tried: Tried = Arc::default();
        let count = Arc::new(RetryCount::default());
        let result = self.route(request, &tried, &count).await;
        let retries = count.retries.load(Ordering::Relaxed);
        let exhausted = count.budget_exhausted.load(Ordering::Relaxed);
        let metrics = &self.shared.routes.metrics;
        metrics.retried(self.name, retries, exhausted);
        let tried = std::mem::take(
            &mut *tried
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        let (response, reason) = match result {
            Ok(response) => (response, None),
            Err(refusal) => {
                if refusal.status == StatusCode::GATEWAY_TIMEOUT {
                    metrics.timed_out(self.name);
                }
                if let Some(limit) = refusal.limit {
                    self.shared.metrics.limit(limit);
                }
                (refusal_response(&refusal, grpc), Some(refusal.reason))
            }
        };
        let answered_by = reason.is_none().then(|| tried.last().copied()).flatten();
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        metrics.answered(self.name, answered_by, status, elapsed.as_secs_f64());
        if let Some(record) = &mut record {
            record.status = Some(status);
            record.duration_ms = elapsed.as_secs_f64() * 1000.0;
            record.destination_addr = tried.last().map(ToString::to_string);
            record.endpoints = tried.iter().map(ToString::to_string).collect();
            record.attempts = Some(tried.len() as u32);
            record.reason = reason;
            self.shared.record(record);
        }
        response
    }

    /// The request's access log record, if the log is on or a tap streams.
    fn record(&self, request: &Request<Incoming>) -> Option<Record> {
        let shared = self.shared;
        if !shared.recording() {
            return None;
        }
        let masker = &shared.access_log.masker;
        let uri = request.uri();
        let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        let services = shared.services();
        Some(Record {
            time: crate::lifecycle::rfc3339_now(),
            direction: "outbound",
            kind: "http",
            source: shared.identity.store.current().map(|s| s.id.to_string()),
            destination: services.get(&**self.name).map(|s| s.identity.to_string()),
            source_addr: self.app_addr.map(|a| a.to_string()),
            port: self.port,
            protocol: Some(if is_grpc(request.headers()) {
                "grpc"
            } else if request.version() == Version::HTTP_2 {
                "http2"
            } else {
                "http1"
            }),
            method: Some(request.method().to_string()),
            path: Some(masker.target(uri.path(), uri.query())),
            authority: authority.map(|a| masker.header("host", &a)),
            decision: Disposition::Allow,
            ..Record::default()
        })
    }

    /// Sends the request through the port's stack; a refusal names why it failed.
    async fn route(
        &self,
        request: Request<Incoming>,
        tried: &Tried,
        count: &Arc<RetryCount>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let shared = self.shared;
        let services = shared.services();
        let service = services
            .get(&**self.name)
            .ok_or_else(|| unavailable("the service left the registry"))?;
        if shared.identity.valid_svid(unix_now()).is_none() {
            return Err(unavailable(
                "this sidecar has no valid SVID: failing closed",
            ));
        }
        if request.method() == http::Method::CONNECT {
            // A tunnel to wherever the app names is not a request to this service port.
            return Err(Refusal {
                status: StatusCode::METHOD_NOT_ALLOWED,
                reason: "CONNECT is not routed; this listener leads to one service port".into(),
                decision: Disposition::Rejected,
                limit: None,
            });
        }
        let permit = shared
            .routes
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Refusal::limit(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "concurrent_requests",
                    "too many routed requests in flight (outbound.http.max_concurrent_requests)",
                )
            })?;
        let route_port = shared.routes.port(self.name, service, self.port);
        if wants_upgrade(request.version(), request.headers()) {
            let balancer = &route_port.balancer;
            let identity = &service.identity;
            let target = RoutedTarget {
                port: self.port,
                pinned: self.pinned,
            };
            return upgrade::upgrade(shared, balancer, identity, target, request, tried).await;
        }
        let settings = port_settings(service, self.port);
        let (timeouts, retry) = settings.route_for(request.uri().path());
        let retryable = retry.is_some() && idempotent(request.method());
        let request =
            mesh_request(request, self.name, self.port, retryable, timeouts.request).await?;
        let attempts = Attempts {
            shared: shared.clone(),
            judge: Judge {
                balancer: route_port.balancer.clone(),
                metrics: shared.routes.metrics.clone(),
                service: self.name.clone(),
            },
            identity: service.identity.clone(),
            backend_timeout: timeouts.backend_request,
            tried: tried.clone(),
            pinned: self.pinned,
        };
        let policy = RetryPolicy::new(retry.cloned(), route_port.budget.load_full(), count.clone());
        let stack = tower::ServiceBuilder::new()
            .option_layer(timeouts.request.map(tower::timeout::TimeoutLayer::new))
            .map_err(boxed_attempt_error as fn(AttemptError) -> BoxError)
            .layer(tower::retry::RetryLayer::new(policy))
            .service(attempts);
        // Boxed to a plain `Send` future: the stack's own future type trips rustc's
        // higher-ranked `Send` check inside hyper's service (a known rustc limitation).
        let call: Pin<Box<dyn Future<Output = Result<Answered, BoxError>> + Send>> =
            Box::pin(stack.oneshot(request));
        let Answered {
            response,
            slot,
            verdict,
        } = call.await.map_err(|error| failure(&error))?;
        Ok(response.map(|inner| {
            AnswerBody {
                inner,
                verdict,
                _slot: slot,
                _permit: permit,
            }
            .boxed()
        }))
    }
}

/// Rewrites the app's request for the mesh: HTTP/2, an absolute URI with the app's
/// authority, no hop-by-hop headers, the routing metadata; and, for a request that may
/// be retried, its body held in memory when it is small enough.
async fn mesh_request(
    request: Request<Incoming>,
    name: &str,
    port: u16,
    retryable: bool,
    request_timeout: Option<std::time::Duration>,
) -> Result<Request<MeshBody>, Refusal> {
    let (mut parts, body) = request.into_parts();
    let protocol = if parts.version == Version::HTTP_2 {
        AppProtocol::Http2
    } else {
        AppProtocol::Http1
    };
    remove_hop_by_hop(&mut parts.headers, false);
    let host = parts
        .headers
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_owned));
    let authority = match (parts.uri.authority(), host) {
        (Some(authority), _) => authority.as_str().to_owned(),
        (None, Some(host)) => host,
        // HTTP/1.0 without Host: the service's own name, as a Kubernetes client would use.
        (None, None) => format!("{name}:{port}"),
    };
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(target)
        .build()
        .map_err(|e| bad_request(format!("the request cannot be routed: {e}")))?;
    parts.version = Version::HTTP_2;
    stamp(&mut parts.headers, RouteTarget { port, protocol });
    let body = if body.is_end_stream() {
        // Nothing to stream: a body that can be sent again, should an endpoint refuse
        // the stream unprocessed.
        MeshBody::empty()
    } else if retryable {
        // A body held for a retry must arrive as promptly as the app's would: its
        // deadline is the port's request deadline, or the default one.
        let deadline = request_timeout.unwrap_or(HttpLimits::default().request_timeout);
        tokio::time::timeout(deadline, hold(body))
            .await
            .map_err(|_| Refusal {
                status: StatusCode::REQUEST_TIMEOUT,
                reason: "the request body did not arrive in time".into(),
                decision: Disposition::Rejected,
                limit: None,
            })??
    } else {
        MeshBody::Streaming(body)
    };
    Ok(Request::from_parts(parts, body))
}

/// Reads a small body whole so that the request can be sent again; a body that says it
/// is longer than [`MAX_RETRY_BODY_BYTES`], or does not say, streams (and is sent once).
async fn hold(body: Incoming) -> Result<MeshBody, Refusal> {
    let small = body
        .size_hint()
        .upper()
        .is_some_and(|upper| upper <= MAX_RETRY_BODY_BYTES as u64);
    if !small {
        return Ok(MeshBody::Streaming(body));
    }
    let collected = Limited::new(body, MAX_RETRY_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| bad_request(format!("the request body could not be read: {e}")))?;
    let trailers = collected.trailers().cloned();
    Ok(MeshBody::Held(HeldBody::new(
        collected.to_bytes(),
        trailers,
    )))
}

fn boxed_attempt_error(error: AttemptError) -> BoxError {
    Box::new(error)
}

/// What the app gets when no endpoint answered.
fn failure(error: &BoxError) -> Refusal {
    if error.is::<Elapsed>() {
        return Refusal {
            status: StatusCode::GATEWAY_TIMEOUT,
            reason: "the request timeout lapsed".into(),
            decision: Disposition::Allow,
            limit: None,
        };
    }
    let (status, reason) = match error.downcast_ref::<AttemptError>() {
        Some(e @ (AttemptError::NoEndpoint | AttemptError::Unreachable { .. })) => {
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Some(e @ AttemptError::BackendTimeout { .. }) => {
            (StatusCode::GATEWAY_TIMEOUT, e.to_string())
        }
        Some(e @ AttemptError::Failed { .. }) => (StatusCode::BAD_GATEWAY, e.to_string()),
        None => (StatusCode::BAD_GATEWAY, error.to_string()),
    };
    Refusal {
        status,
        reason,
        decision: Disposition::Allow,
        limit: None,
    }
}

fn unavailable(reason: &str) -> Refusal {
    Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason: reason.into(),
        decision: Disposition::Rejected,
        limit: None,
    }
}

fn bad_request(reason: String) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        reason,
        decision: Disposition::Rejected,
        limit: None,
    }
}

/// An endpoint's response body on its way to the app. Until it ends it holds the mesh
/// stream's slot in its connection's count, the request's place in its endpoint's
/// outstanding count and in the sidecar's routed requests in flight; its trailers
/// settle a gRPC answer's outcome.
struct AnswerBody {
    inner: Incoming,
    verdict: Verdict,
    _slot: StreamSlot,
    _permit: OwnedSemaphorePermit,
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.verdict.trailers(trailers);
                } else if this.inner.is_end_stream() {
                    // hyper polls no further once the body says it ended.
                    this.verdict.ended_without_status();
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.verdict.ended_without_status(),
            Poll::Pending => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoint_is_503_a_lapsed_deadline_504_and_a_failed_stream_502() {
        let endpoint = std::net::SocketAddr::from(([127, 0, 0, 9], 15008));
        let cases: [(BoxError, StatusCode); 4] = [
            (Box::new(Elapsed::new()), StatusCode::GATEWAY_TIMEOUT),
            (
                Box::new(AttemptError::NoEndpoint),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                Box::new(AttemptError::Unreachable {
                    endpoint,
                    reason: "refused".into(),
                }),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                Box::new(AttemptError::BackendTimeout { endpoint }),
                StatusCode::GATEWAY_TIMEOUT,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(failure(&error).status, status, "{error}");
        }
    }
}
