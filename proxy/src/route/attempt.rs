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
use http::{HeaderMap, Request, Response};
use hyper::body::{Body, Incoming};

use super::balance::{Balancer, InFlight, Outcome};
use super::metrics::RouteMetrics;
use crate::Shared;
use crate::l7::headers::is_grpc_with_trailers;
use crate::mesh_body::{MeshBody, try_copy};
use crate::pool::{OpenError, SendError, StreamSlot};

/// Endpoints a request that was never processed tries before it fails.
const MAX_UNSENT_TRIES: usize = 3;

/// An endpoint's answer to an attempt.
pub(crate) struct Answered {
    pub(crate) response: Response<Incoming>,
    /// Holds the mesh stream's place in its connection's count until the body ends.
    pub(crate) slot: StreamSlot,
    /// Holds the request's place in its endpoint's outstanding count until the body ends.
    pub(crate) verdict: Verdict,
}

/// Why an attempt brought no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The service has no endpoints.
    #[error("the service has no endpoints")]
    NoEndpoint,
    /// No endpoint could be reached, or every one refused the request unprocessed.
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

/// Where an attempt's outcome is told: the port's balancer, and the metrics and log
/// line of an ejection.
#[derive(Clone)]
pub(crate) struct Judge {
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) metrics: Arc<RouteMetrics>,
    pub(crate) service: Arc<str>,
}

impl Judge {
    fn finish(&self, in_flight: &InFlight, outcome: Outcome) {
        let ejected = self.balancer.finish(in_flight, outcome);
        self.ejected(ejected, in_flight, outcome);
    }

    fn settle(&self, in_flight: &InFlight, outcome: Outcome) {
        let ejected = self.balancer.settle(in_flight, outcome);
        self.ejected(ejected, in_flight, outcome);
    }

    fn ejected(&self, ejected: bool, in_flight: &InFlight, outcome: Outcome) {
        if ejected {
            let endpoint = in_flight.endpoint();
            tracing::info!(service = %self.service, %endpoint, ?outcome, "endpoint taken out of the balancer");
            self.metrics.ejection(&self.service, endpoint);
        }
    }
}

/// Sends attempts of one request; cloned by the retry layer for each.
#[derive(Clone)]
pub(crate) struct Attempts {
    pub(crate) shared: Arc<Shared>,
    pub(crate) judge: Judge,
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
        let balancer = &self.judge.balancer;
        let mut unsent: Vec<SocketAddr> = Vec::new();
        loop {
            // A retry goes to an endpoint this request has not been to, while one is left.
            let avoid = self
                .tried
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            let picked = balancer
                .pick_for(self.pinned, &avoid)
                .ok_or(AttemptError::NoEndpoint)?;
            let endpoint = picked.endpoint();
            // Reported as a failure if the request's own deadline drops this attempt.
            let mut pending = Pending {
                judge: &self.judge,
                in_flight: Some(picked),
            };
            self.tried
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(endpoint);
            // Kept to send elsewhere should the endpoint refuse the stream unprocessed,
            // when there is an elsewhere.
            let another_try =
                unsent.len() + 1 < balancer.candidates(self.pinned).min(MAX_UNSENT_TRIES);
            let spare = another_try.then(|| try_copy(&request)).flatten();
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
            let (reason, next) = match sent {
                Ok(answer) => {
                    let in_flight = pending.in_flight.take().expect("reported only here");
                    let verdict = Verdict::new(self.judge.clone(), in_flight, &answer.response);
                    return Ok(Answered {
                        response: answer.response,
                        slot: answer.slot,
                        verdict,
                    });
                }
                Err(SendError::Failed(error)) => {
                    if unprocessed(&error) {
                        // Not a failure of the endpoint: it is draining, or at its
                        // stream limit. Nothing is reported.
                        drop(pending.in_flight.take());
                    } else {
                        pending.report(Outcome::Failure);
                    }
                    match spare {
                        Some(copy) if unprocessed(&error) => (error.to_string(), copy),
                        _ => return Err(AttemptError::Failed { endpoint, error }),
                    }
                }
                Err(SendError::NotSent(not_sent)) => {
                    // Only a refused connection or handshake says the endpoint is gone; a
                    // connection that closed under the request is one failure.
                    pending.report(match not_sent.error {
                        OpenError::Connect { .. } | OpenError::Tls { .. } => Outcome::Unreachable,
                        _ => Outcome::Failure,
                    });
                    (not_sent.error.to_string(), not_sent.request)
                }
            };
            unsent.push(endpoint);
            if !another_try {
                return Err(AttemptError::Unreachable { endpoint, reason });
            }
            tracing::debug!(%endpoint, error = %reason, "routed request not processed; trying another endpoint");
            request = next;
        }
    }
}

/// Whether an endpoint said that it did not process the stream, so that it may go to
/// another whatever its method (RFC 9113 §8.7): it refused the stream, or it closed the
/// connection gracefully with a GOAWAY that leaves the stream out.
fn unprocessed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away()
                    && h2.is_remote()
                    && h2.reason() == Some(h2::Reason::NO_ERROR));
        }
        cause = error.source();
    }
    false
}

/// An attempt whose outcome the balancer has not heard yet. Dropped unheard (the
/// request's deadline ended it), it counts as a failure, so that an endpoint that
/// swallows requests is taken out like one that fails them.
struct Pending<'a> {
    judge: &'a Judge,
    in_flight: Option<InFlight>,
}

impl Pending<'_> {
    fn report(&mut self, outcome: Outcome) {
        if let Some(in_flight) = self.in_flight.take() {
            self.judge.finish(&in_flight, outcome);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.report(Outcome::Failure);
    }
}

/// An answered attempt while its body streams to the app. The request counts as
/// outstanding at its endpoint until the body ends (a long download is load, as the
/// balancer should see it). Its latency was recorded at the head; its failure accrual
/// too, unless it is a gRPC answer whose status comes in trailers: then the trailers
/// decide.
pub(crate) struct Verdict {
    judge: Judge,
    in_flight: InFlight,
    awaiting_trailers: bool,
}

impl Verdict {
    fn new(judge: Judge, mut in_flight: InFlight, response: &Response<Incoming>) -> Self {
        judge.balancer.answered(&mut in_flight);
        let outcome = match classify(response) {
            // A gRPC answer whose body has already ended will bring no status.
            Classified::AtTrailers if response.body().is_end_stream() => Some(Outcome::Failure),
            Classified::AtTrailers => None,
            Classified::Now(outcome) => Some(outcome),
        };
        if let Some(outcome) = outcome {
            judge.settle(&in_flight, outcome);
        }
        let awaiting_trailers = outcome.is_none();
        Self {
            judge,
            in_flight,
            awaiting_trailers,
        }
    }

    /// The body's trailers arrived.
    pub(crate) fn trailers(&mut self, trailers: &HeaderMap) {
        self.settle(grpc_outcome(trailers))
    }

    /// The body ended without trailers, or failed: for a gRPC answer, a failure (a
    /// call without a status did not complete).
    pub(crate) fn ended_without_status(&mut self) {
        self.settle(Outcome::Failure)
    }

    fn settle(&mut self, outcome: Outcome) {
        if std::mem::take(&mut self.awaiting_trailers) {
            self.judge.settle(&self.in_flight, outcome);
        }
    }
}

/// When an answer's outcome for its endpoint is known.
#[derive(Debug, PartialEq, Eq)]
enum Classified {
    /// From the head: the status, or a gRPC status in a trailers-only answer.
    Now(Outcome),
    /// A gRPC answer with no status in its head: from the trailers.
    AtTrailers,
}

/// Whether an answer counts against its endpoint: a 5xx, or gRPC `UNAVAILABLE`.
fn classify<B>(response: &Response<B>) -> Classified {
    if response.status().is_server_error() {
        return Classified::Now(Outcome::Failure);
    }
    let headers = response.headers();
    if headers.contains_key("grpc-status") {
        Classified::Now(grpc_outcome(headers))
    } else if is_grpc_with_trailers(headers) {
        Classified::AtTrailers
    } else {
        Classified::Now(Outcome::Success)
    }
}

fn grpc_outcome(fields: &HeaderMap) -> Outcome {
    if fields
        .get("grpc-status")
        .is_some_and(|status| status == "14")
    {
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
        use Classified::*;
        let grpc = "application/grpc";
        let cases = [
            (200, None, None, Now(Outcome::Success)),
            (404, None, None, Now(Outcome::Success)),
            (503, None, None, Now(Outcome::Failure)),
            (500, Some(grpc), None, Now(Outcome::Failure)),
            // Trailers-only gRPC answers carry their status in the head.
            (200, Some(grpc), Some("14"), Now(Outcome::Failure)),
            (200, Some(grpc), Some("5"), Now(Outcome::Success)),
            // Otherwise the status comes in trailers.
            (200, Some(grpc), None, AtTrailers),
            (200, Some("application/grpc+proto"), None, AtTrailers),
            (200, Some("application/json"), None, Now(Outcome::Success)),
            (
                200,
                Some("application/grpc-web"),
                None,
                Now(Outcome::Success),
            ),
        ];
        for (status, content_type, grpc_status, expected) in cases {
            let mut response = Response::new(());
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            let headers = response.headers_mut();
            if let Some(content_type) = content_type {
                headers.insert("content-type", content_type.parse().unwrap());
            }
            if let Some(grpc_status) = grpc_status {
                headers.insert("grpc-status", grpc_status.parse().unwrap());
            }
            assert_eq!(
                classify(&response),
                expected,
                "{status} {content_type:?} {grpc_status:?}"
            );
        }
        let trailers = |status: &str| {
            let mut fields = HeaderMap::new();
            fields.insert("grpc-status", status.parse().unwrap());
            fields
        };
        assert_eq!(grpc_outcome(&trailers("14")), Outcome::Failure);
        assert_eq!(grpc_outcome(&trailers("0")), Outcome::Success);
        assert_eq!(grpc_outcome(&trailers("2")), Outcome::Success);
    }

    #[test]
    fn a_refused_stream_was_not_processed_and_other_failures_may_have_been() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(unprocessed(&refused));
        // Nested, as hyper holds it: the cause of its own error.
        #[derive(Debug)]
        struct Wrapper(h2::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("http2 error")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(unprocessed(&Wrapper(h2::Reason::REFUSED_STREAM.into())));
        assert!(!unprocessed(&Wrapper(h2::Reason::CANCEL.into())));
        for other in [
            h2::Reason::CANCEL,
            h2::Reason::INTERNAL_ERROR,
            h2::Reason::NO_ERROR,
        ] {
            assert!(!unprocessed(&h2::Error::from(other)), "{other:?}");
        }
        assert!(!unprocessed(&std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        )));
    }
}
