//! The retry layer of a routed request: tower's `Retry` with a policy that sends an
//! answered request again only when the route says so (a listed 5xx, an idempotent
//! method, a body held in memory) and the port's budget still has room.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Method, Request};
use tower::retry::budget::{Budget, TpsBudget};

use super::attempt::{Answered, AttemptError};
use crate::config::routes::{RetryConstraint, RouteRetry};
use crate::mesh_body::{MeshBody, try_copy};

/// Builds the budget a port's requests share.
pub(crate) fn budget(constraint: &RetryConstraint) -> TpsBudget {
    let rate = &constraint.min_retry_rate;
    // The budget counts whole retries per second: a slower floor (1 per 3 s) rounds up.
    let per_second = f64::from(rate.count) / rate.interval.as_secs_f64();
    TpsBudget::new(
        constraint.budget.interval,
        per_second.ceil() as u32,
        constraint.budget.percent as f32 / 100.0,
    )
}

/// Methods a retry cannot turn into a second effect (RFC 9110 §9.2.2).
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// What became of a request's retries, read after it is answered.
#[derive(Debug, Default)]
pub(crate) struct RetryCount {
    /// Retries sent.
    pub(crate) retries: AtomicU32,
    /// A retry was wanted and the budget refused it.
    pub(crate) budget_exhausted: AtomicU32,
}

/// The retry policy of one request. Clones share the request's count and the port's
/// budget.
#[derive(Clone)]
pub(crate) struct RetryPolicy {
    route: Option<RouteRetry>,
    budget: Arc<TpsBudget>,
    count: Arc<RetryCount>,
    left: u32,
}

impl RetryPolicy {
    /// The policy for one request: `route` (none: no retries on answers), drawing on
    /// `budget`. Depositing here counts the request towards the budget's base.
    pub(crate) fn new(
        route: Option<RouteRetry>,
        budget: Arc<TpsBudget>,
        count: Arc<RetryCount>,
    ) -> Self {
        budget.deposit();
        let left = route.as_ref().map_or(0, |r| r.attempts);
        Self {
            route,
            budget,
            count,
            left,
        }
    }

    fn wants_retry(&self, result: &Result<Answered, AttemptError>) -> bool {
        let Some(route) = &self.route else {
            return false;
        };
        match result {
            Ok(answered) => route.codes.contains(&answered.response.status().as_u16()),
            // Sent, then the stream failed or the attempt's deadline lapsed: the
            // endpoint may have acted on it; a held, idempotent request may go again.
            Err(AttemptError::Failed { .. } | AttemptError::BackendTimeout { .. }) => true,
            Err(AttemptError::NoEndpoint | AttemptError::Unreachable { .. }) => false,
        }
    }
}

impl tower::retry::Policy<Request<MeshBody>, Answered, AttemptError> for RetryPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut Request<MeshBody>,
        result: &mut Result<Answered, AttemptError>,
    ) -> Option<Self::Future> {
        if self.left == 0 || !self.wants_retry(result) {
            return None;
        }
        if !self.budget.withdraw() {
            self.count.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.left -= 1;
        self.count.retries.fetch_add(1, Ordering::Relaxed);
        let backoff = self.route.as_ref().map_or(Duration::ZERO, |r| r.backoff);
        Some(Box::pin(tokio::time::sleep(backoff)))
    }

    fn clone_request(&mut self, request: &Request<MeshBody>) -> Option<Request<MeshBody>> {
        if self.left == 0 || !idempotent(request.method()) {
            return None;
        }
        try_copy(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_the_floor_then_a_share_of_requests() {
        use crate::config::routes::{RetryBudget, RetryRate};
        let constraint = RetryConstraint {
            budget: RetryBudget {
                percent: 20,
                interval: Duration::from_secs(10),
            },
            min_retry_rate: RetryRate {
                count: 1,
                interval: Duration::from_secs(1),
            },
        };
        let budget = Arc::new(budget(&constraint));
        let count = Arc::new(RetryCount::default());
        // 100 requests: a fifth of them, plus the floor of 1 per second over the 10 s
        // window, may be retried.
        for _ in 0..100 {
            RetryPolicy::new(None, budget.clone(), count.clone());
        }
        let allowed = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(allowed, 30);
    }

    #[test]
    fn only_idempotent_methods_with_held_bodies_are_copied() {
        let route = RouteRetry {
            codes: vec![503],
            attempts: 2,
            backoff: Duration::ZERO,
        };
        let budget = Arc::new(budget(&RetryConstraint::default()));
        let mut policy = RetryPolicy::new(Some(route), budget.clone(), Arc::default());
        let request = |method: Method| {
            let mut request = Request::new(MeshBody::empty());
            *request.method_mut() = method;
            request
        };
        use tower::retry::Policy;
        for (method, copied) in [
            (Method::GET, true),
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::POST, false),
            (Method::PATCH, false),
        ] {
            let copy = policy.clone_request(&request(method.clone()));
            assert_eq!(copy.is_some(), copied, "{method}");
        }
        // No route retry: nothing is copied at all.
        let mut none = RetryPolicy::new(None, budget, Arc::default());
        assert!(none.clone_request(&request(Method::GET)).is_none());
    }
}
