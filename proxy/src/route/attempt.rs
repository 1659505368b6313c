//! The innermost service of a routed request: one attempt. It asks the balancer for an
//! endpoint, sends the request there on the pooled mesh connection, and tells the
//! balancer how it went. A request that never left (no connection, a refused handshake)
//! goes to the next endpoint at once, whatever its method: nothing reached anyone.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_identity::SpiffeId;
use http::{Request, Response};
use hyper::body::Incoming;

use super::balance::{Balancer, InFlight, Outcome};
use super::metrics::RouteMetrics;
use crate::Shared;
use crate::mesh_body::MeshBody;
use crate::pool::{OpenError, SendError, StreamSlot};

/// Endpoints a request that was never sent tries before it fails.
const MAX_UNSENT_TRIES: usize = 3;

/// An endpoint's answer to an attempt.
pub(crate) struct Answered {
    pub(crate) response: Response<Incoming>,
    /// Holds the mesh stream's place in its connection's count until the body ends.
    pub(crate) slot: StreamSlot,
}

/// Why an attempt brought no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The service has no endpoints.
    #[error("the service has no endpoints")]
    NoEndpoint,
    /// No endpoint could be reached; nothing was sent.
    #[error("no endpoint could be reached (last: {endpoint}: {reason})")]
    Unreachable {
        endpoint: SocketAddr,
        reason: String,
    },
    /// Sent, then the stream failed.
    #[error("{endpoint} failed the request: {error}")]
    Failed {
        endpoint: SocketAddr,
        error: hyper::Error,
    },
    /// Sent, and the attempt's deadline (`timeouts.backend_request`) lapsed.
    #[error("{endpoint} did not answer within the backend request timeout")]
    BackendTimeout { endpoint: SocketAddr },
}

/// The endpoints a request went to, in order, for its log line.
pub(crate) type Tried = Arc<Mutex<Vec<SocketAddr>>>;

/// Sends attempts of one request; cloned by the retry layer for each.
#[derive(Clone)]
pub(crate) struct Attempts {
    pub(crate) shared: Arc<Shared>,
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) metrics: Arc<RouteMetrics>,
    pub(crate) service: Arc<str>,
    pub(crate) identity: SpiffeId,
    pub(crate) backend_timeout: Option<Duration>,
    pub(crate) tried: Tried,
    /// The endpoint the app dialed by its own address (transparent capture), if it did.
    pub(crate) pinned: Option<IpAddr>,
}

impl tower::Service<Request<MeshBody>> for Attempts {
    type Response = Answered;
    type Error = AttemptError;
    type Future = Pin<Box<dyn Future<Output = Result<Answered, AttemptError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        // Readiness is per endpoint and found in `call`: the balancer picks there.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<MeshBody>) -> Self::Future {
        let attempts = self.clone();
        Box::pin(async move { attempts.attempt(request).await })
    }
}

impl Attempts {
    async fn attempt(self, mut request: Request<MeshBody>) -> Result<Answered, AttemptError> {
        let mut unsent: Vec<SocketAddr> = Vec::new();
        loop {
            // A retry goes to an endpoint this request has not been to, while one is left.
            let avoid = self
                .tried
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            let picked = self
                .balancer
                .pick_for(self.pinned, &avoid)
                .ok_or(AttemptError::NoEndpoint)?;
            let endpoint = picked.endpoint();
            // Reported as a failure if the request's own deadline drops this attempt.
            let mut pending = Pending {
                attempts: &self,
                in_flight: Some(picked),
            };
            self.tried
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(endpoint);
            let send = self.shared.pool.send(endpoint, &self.identity, request);
            let sent = match self.backend_timeout {
                None => send.await,
                Some(limit) => match tokio::time::timeout(limit, send).await {
                    Ok(sent) => sent,
                    Err(_) => {
                        pending.report(Outcome::Failure);
                        return Err(AttemptError::BackendTimeout { endpoint });
                    }
                },
            };
            match sent {
                Ok(answer) => {
                    pending.report(classify(&answer.response));
                    return Ok(Answered {
                        response: answer.response,
                        slot: answer.slot,
                    });
                }
                Err(SendError::Failed(error)) => {
                    pending.report(Outcome::Failure);
                    return Err(AttemptError::Failed { endpoint, error });
                }
                Err(SendError::NotSent(not_sent)) => {
                    // Only a refused connection or handshake says the endpoint is gone; a
                    // connection that closed under the request is one failure.
                    pending.report(match not_sent.error {
                        OpenError::Connect { .. } | OpenError::Tls { .. } => Outcome::Unreachable,
                        _ => Outcome::Failure,
                    });
                    unsent.push(endpoint);
                    tracing::debug!(%endpoint, error = %not_sent.error, "routed request not sent; trying another endpoint");
                    let reachable = self.balancer.candidates(self.pinned);
                    if unsent.len() >= reachable.min(MAX_UNSENT_TRIES) {
                        return Err(AttemptError::Unreachable {
                            endpoint,
                            reason: not_sent.error.to_string(),
                        });
                    }
                    request = not_sent.request;
                }
            }
        }
    }

    fn report(&self, in_flight: &InFlight, outcome: Outcome) {
        if self.balancer.finish(in_flight, outcome) {
            let endpoint = in_flight.endpoint();
            tracing::info!(service = %self.service, %endpoint, ?outcome, "endpoint taken out of the balancer");
            self.metrics.ejection(&self.service, endpoint);
        }
    }
}

/// An attempt whose outcome the balancer has not heard yet. Dropped unheard (the
/// request's deadline ended it), it counts as a failure, so that an endpoint that
/// swallows requests is taken out like one that fails them.
struct Pending<'a> {
    attempts: &'a Attempts,
    in_flight: Option<InFlight>,
}

impl Pending<'_> {
    fn report(&mut self, outcome: Outcome) {
        if let Some(in_flight) = self.in_flight.take() {
            self.attempts.report(&in_flight, outcome);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.report(Outcome::Failure);
    }
}

/// Whether an answer counts against its endpoint: a 5xx, or gRPC `UNAVAILABLE` in a
/// trailers-only answer (a status in trailers comes after the balancer has moved on).
pub(crate) fn classify<B>(response: &Response<B>) -> Outcome {
    let unavailable = response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status == "14");
    if response.status().is_server_error() || unavailable {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_grpc_unavailable_count_against_an_endpoint() {
        let cases = [
            (200, None, Outcome::Success),
            (404, None, Outcome::Success),
            (503, None, Outcome::Failure),
            (500, None, Outcome::Failure),
            (200, Some("14"), Outcome::Failure),
            (200, Some("5"), Outcome::Success),
        ];
        for (status, grpc, expected) in cases {
            let mut response = Response::new(());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            if let Some(grpc) = grpc {
                response
                    .headers_mut()
                    .insert("grpc-status", grpc.parse().unwrap());
            }
            assert_eq!(classify(&response), expected, "{status} {grpc:?}");
        }
    }
}
