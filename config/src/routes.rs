//! How a caller's sidecar treats each port of a registry service: as an opaque TCP
//! tunnel (the default), or as HTTP whose every request is balanced, timed and retried
//! on its own.
//!
//! The field names follow the Gateway API (`HTTPRoute` rules with `matches`,
//! `timeouts.request`/`backendRequest` and `retry.codes`/`attempts`/`backoff`, and
//! `BackendTrafficPolicy`'s `retryConstraint`), spelled in this file's snake case, so
//! that a controller can later fill them from those objects without a second vocabulary.
//!
//! ```yaml
//! registry:
//!   payments:
//!     identity: spiffe://demo.airlock/ns/pay/sa/payments
//!     endpoints: [10.0.0.7:15008, 10.0.0.8:15008]
//!     ports:
//!     - port: 8080
//!       protocol: http
//!       timeouts: {request: 2s}
//!       retry: {codes: [503], attempts: 2}
//!       rules:
//!       - matches: [{path: {type: PathPrefix, value: /reports}}]
//!         timeouts: {request: 30s}
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The biggest request body a caller's sidecar holds back so that it can send the
/// request again; a longer body streams through and its request is not retried.
pub const MAX_RETRY_BODY_BYTES: usize = 64 * 1024;

/// One entry of a service's `ports`: what the callers' sidecars do with connections to
/// that port of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// The port on the destination workload (what an upstream's `port` names).
    pub port: u16,
    /// `tcp` (default): each app connection is one tunnel to one endpoint. `http`: the
    /// caller's sidecar serves the app's HTTP/1.1 and HTTP/2 (gRPC included) and sends
    /// every request on its own to the endpoint the balancer picks.
    #[serde(default)]
    pub protocol: ServiceProtocol,
    /// Deadlines of the port's requests (HTTP only).
    #[serde(default, skip_serializing_if = "RouteTimeouts::is_unset")]
    pub timeouts: RouteTimeouts,
    /// Which failed requests are sent again (HTTP only). Absent: only requests that no
    /// endpoint received (a refused connection or handshake) go to another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
    /// Per-path settings; the first rule whose match fits a request overrides the port's
    /// `timeouts` and `retry` for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// How many retries the port's requests may add, on top of their own number.
    #[serde(default, skip_serializing_if = "is_default")]
    pub retry_constraint: RetryConstraint,
    /// When an endpoint that keeps failing is taken out of the balancer.
    #[serde(default, skip_serializing_if = "is_default")]
    pub failure_accrual: FailureAccrual,
}

impl ServicePort {
    /// `port` with `protocol` and every routing setting at its default.
    pub fn new(port: u16, protocol: ServiceProtocol) -> Self {
        Self {
            port,
            protocol,
            timeouts: RouteTimeouts::default(),
            retry: None,
            rules: Vec::new(),
            retry_constraint: RetryConstraint::default(),
            failure_accrual: FailureAccrual::default(),
        }
    }

    /// The timeouts and retry policy for a request to `path`: the first matching rule's
    /// settings where it has them, the port's otherwise.
    pub fn route_for(&self, path: &str) -> (RouteTimeouts, Option<&RouteRetry>) {
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.matches.iter().any(|m| m.path.matches(path)));
        match rule {
            Some(rule) => (
                RouteTimeouts {
                    request: rule.timeouts.request.or(self.timeouts.request),
                    backend_request: rule
                        .timeouts
                        .backend_request
                        .or(self.timeouts.backend_request),
                },
                rule.retry.as_ref().or(self.retry.as_ref()),
            ),
            None => (self.timeouts, self.retry.as_ref()),
        }
    }

    /// Checks the settings; `at` names the entry in the error (`registry.NAME.ports[I]`).
    pub(crate) fn validate(&self, at: &str) -> Result<(), String> {
        if self.port == 0 {
            return Err(format!("{at}.port: 0 is not a port"));
        }
        let tcp_only = self.timeouts.is_unset()
            && self.retry.is_none()
            && self.rules.is_empty()
            && self.retry_constraint == RetryConstraint::default();
        if self.protocol == ServiceProtocol::Tcp && !tcp_only {
            return Err(format!(
                "{at}: timeouts, retry, rules and retry_constraint apply to protocol http only"
            ));
        }
        self.timeouts.validate(&format!("{at}.timeouts"))?;
        if let Some(retry) = &self.retry {
            retry.validate(&format!("{at}.retry"))?;
        }
        for (index, rule) in self.rules.iter().enumerate() {
            let at = format!("{at}.rules[{index}]");
            if rule.matches.is_empty() {
                return Err(format!("{at}.matches: a rule needs at least one match"));
            }
            for (m, matched) in rule.matches.iter().enumerate() {
                if !matched.path.value.starts_with('/') {
                    return Err(format!("{at}.matches[{m}].path.value must start with /"));
                }
            }
            rule.timeouts.validate(&format!("{at}.timeouts"))?;
            if let Some(retry) = &rule.retry {
                retry.validate(&format!("{at}.retry"))?;
            }
        }
        self.retry_constraint
            .validate(&format!("{at}.retry_constraint"))?;
        self.failure_accrual
            .validate(&format!("{at}.failure_accrual"))
    }
}

/// What travels on a service port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    /// Opaque bytes: one tunnel per app connection.
    #[default]
    Tcp,
    /// HTTP/1.1 or HTTP/2 (gRPC included), routed per request.
    Http,
}

/// Request deadlines (Gateway API `HTTPRouteTimeouts`). Unset: no deadline beyond the
/// mesh's connect timeout, as for a streaming gRPC call that may rightly last for hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTimeouts {
    /// From the app's request to the response head, over every attempt: then the app
    /// gets 504 (gRPC: `DEADLINE_EXCEEDED`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub request: Option<Duration>,
    /// The same for one attempt at one endpoint; a retry may follow when it lapses.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_request: Option<Duration>,
}

impl RouteTimeouts {
    fn is_unset(&self) -> bool {
        self.request.is_none() && self.backend_request.is_none()
    }

    fn validate(&self, at: &str) -> Result<(), String> {
        if self.request.is_some_and(|d| d.is_zero())
            || self.backend_request.is_some_and(|d| d.is_zero())
        {
            return Err(format!("{at}: a timeout must be above zero"));
        }
        match (self.request, self.backend_request) {
            (Some(request), Some(backend)) if backend > request => Err(format!(
                "{at}.backend_request ({}) is longer than request ({})",
                humantime::format_duration(backend),
                humantime::format_duration(request)
            )),
            _ => Ok(()),
        }
    }
}

/// Which failed requests are sent again (Gateway API `HTTPRouteRetry`). Only idempotent
/// methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) with a body of at most
/// [`MAX_RETRY_BODY_BYTES`] are retried on a status; a request no endpoint received is
/// sent elsewhere whatever its method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRetry {
    /// Response statuses that mean "try another endpoint"; 500–599. Default `[503]`.
    #[serde(default = "defaults::retry_codes")]
    pub codes: Vec<u16>,
    /// Retries after the first attempt; default 1, at most 10.
    #[serde(default = "defaults::retry_attempts")]
    pub attempts: u32,
    /// The pause before each retry; default `25ms`.
    #[serde(default = "defaults::retry_backoff", with = "humantime_serde")]
    pub backoff: Duration,
}

impl RouteRetry {
    fn validate(&self, at: &str) -> Result<(), String> {
        if let Some(code) = self.codes.iter().find(|c| !(500..=599).contains(*c)) {
            return Err(format!("{at}.codes: {code} is not a 5xx status"));
        }
        if !(1..=10).contains(&self.attempts) {
            return Err(format!("{at}.attempts must be between 1 and 10"));
        }
        Ok(())
    }
}

/// One per-path entry of a port's `rules` (Gateway API `HTTPRouteRule`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// The rule applies to a request that any of these match.
    pub matches: Vec<RouteMatch>,
    /// Overrides the port's timeouts where set.
    #[serde(default, skip_serializing_if = "RouteTimeouts::is_unset")]
    pub timeouts: RouteTimeouts,
    /// Overrides the port's retry policy where set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
}

/// A request match (Gateway API `HTTPRouteMatch`; only `path` so far).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The request path must match this.
    pub path: PathMatch,
}

/// A path match (Gateway API `HTTPPathMatch`), compared with the request's path as the
/// app sent it (routing settings are no security boundary: the callee's policy decides
/// on the normalized path).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// `PathPrefix` (default) or `Exact`.
    #[serde(default, rename = "type")]
    pub kind: PathMatchKind,
    /// A path starting with `/`.
    pub value: String,
}

impl PathMatch {
    /// Whether `path` matches: a prefix matches whole segments only (`/api` matches
    /// `/api` and `/api/x`, not `/apix`), as the Gateway API defines it.
    pub fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathMatchKind::Exact => path == self.value,
            PathMatchKind::PathPrefix => {
                let prefix = self.value.trim_end_matches('/');
                path.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
        }
    }
}

/// How a [`PathMatch`] compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchKind {
    /// The path starts with the value, segment by segment.
    #[default]
    PathPrefix,
    /// The path is the value.
    Exact,
}

/// How many retries a port's requests may add (Gateway API `BackendTrafficPolicy`
/// `retryConstraint`): at most `budget.percent` of the requests of the last
/// `budget.interval`, plus `min_retry_rate`, so that retries cannot multiply the load on
/// a service that is already failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConstraint {
    /// The share of recent requests that may be retries.
    pub budget: RetryBudget,
    /// Retries allowed whatever the request rate, so a quiet service can still retry.
    pub min_retry_rate: RetryRate,
}

impl Default for RetryConstraint {
    fn default() -> Self {
        Self {
            budget: RetryBudget {
                percent: 20,
                interval: Duration::from_secs(10),
            },
            min_retry_rate: RetryRate {
                count: 10,
                interval: Duration::from_secs(1),
            },
        }
    }
}

impl RetryConstraint {
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.budget.percent > 1000 {
            return Err(format!("{at}.budget.percent must be at most 1000"));
        }
        // The budget keeps one slot per second of its window.
        let seconds = self.budget.interval.as_secs_f64();
        if !(1.0..=60.0).contains(&seconds) {
            return Err(format!("{at}.budget.interval must be between 1s and 60s"));
        }
        if self.min_retry_rate.interval.is_zero() || self.min_retry_rate.count > 1_000_000 {
            return Err(format!(
                "{at}.min_retry_rate: the interval must be above zero and the count at most 1000000"
            ));
        }
        Ok(())
    }
}

/// A share of requests over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    /// Retries as a percentage of requests; default 20, at most 1000.
    pub percent: u32,
    /// The window the requests are counted over; default `10s`, between 1 s and 60 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// A rate: `count` per `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRate {
    /// How many; default 10, at most 1000000. Counted per second, rounded up.
    pub count: u32,
    /// Per how long; default `1s`.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

/// When an endpoint is taken out of its service's balancer (as Linkerd's consecutive
/// failure accrual): after `consecutive_failures` failed requests in a row (connection
/// errors, 5xx, gRPC `UNAVAILABLE`), for `min_penalty`, doubling on each failed probe up
/// to `max_penalty`. A refused connection or handshake takes it out at once. The last
/// endpoint in service is never taken out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailureAccrual {
    /// Failures in a row that take an endpoint out; default 7.
    pub consecutive_failures: u32,
    /// The first time out; default `1s`.
    #[serde(with = "humantime_serde")]
    pub min_penalty: Duration,
    /// The longest time out; default `1m`.
    #[serde(with = "humantime_serde")]
    pub max_penalty: Duration,
}

impl Default for FailureAccrual {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            min_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(60),
        }
    }
}

impl FailureAccrual {
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.consecutive_failures == 0 {
            return Err(format!("{at}.consecutive_failures must be at least 1"));
        }
        if self.min_penalty.is_zero() || self.max_penalty < self.min_penalty {
            return Err(format!(
                "{at}: min_penalty must be above zero and max_penalty at least min_penalty"
            ));
        }
        Ok(())
    }
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

mod defaults {
    use std::time::Duration;

    pub(super) fn retry_codes() -> Vec<u16> {
        vec![503]
    }
    pub(super) fn retry_attempts() -> u32 {
        1
    }
    pub(super) fn retry_backoff() -> Duration {
        Duration::from_millis(25)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(yaml: &str) -> Result<ServicePort, String> {
        let port: ServicePort = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        port.validate("registry.pay.ports[0]").map(|()| port)
    }

    #[test]
    fn path_prefixes_match_whole_segments() {
        let cases = [
            ("/api", PathMatchKind::PathPrefix, "/api", true),
            ("/api", PathMatchKind::PathPrefix, "/api/x", true),
            ("/api/", PathMatchKind::PathPrefix, "/api/x", true),
            ("/api", PathMatchKind::PathPrefix, "/apix", false),
            ("/", PathMatchKind::PathPrefix, "/anything", true),
            ("/api", PathMatchKind::Exact, "/api", true),
            ("/api", PathMatchKind::Exact, "/api/", false),
        ];
        for (value, kind, path, expected) in cases {
            let matcher = PathMatch {
                kind,
                value: value.into(),
            };
            assert_eq!(
                matcher.matches(path),
                expected,
                "{kind:?} {value} vs {path}"
            );
        }
    }

    #[test]
    fn the_first_matching_rule_overrides_what_it_sets() {
        let port = port(
            "port: 80\nprotocol: http\ntimeouts: {request: 2s, backend_request: 1s}\n\
             retry: {codes: [503]}\nrules:\n\
             - matches: [{path: {value: /slow}}]\n  timeouts: {request: 30s}\n\
             - matches: [{path: {type: Exact, value: /pay}}]\n  retry: {codes: [502], attempts: 3}\n",
        )
        .unwrap();
        let (timeouts, retry) = port.route_for("/slow/report");
        assert_eq!(timeouts.request, Some(Duration::from_secs(30)));
        assert_eq!(timeouts.backend_request, Some(Duration::from_secs(1)));
        assert_eq!(retry.unwrap().codes, [503]);
        let (timeouts, retry) = port.route_for("/pay");
        assert_eq!(timeouts.request, Some(Duration::from_secs(2)));
        assert_eq!(retry.unwrap().attempts, 3);
        let (timeouts, _) = port.route_for("/other");
        assert_eq!(timeouts.request, Some(Duration::from_secs(2)));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let cases = [
            (
                "port: 80\ntimeouts: {request: 1s}\n",
                "apply to protocol http only",
            ),
            (
                "port: 80\nprotocol: http\nretry: {codes: [404]}\n",
                "retry.codes: 404",
            ),
            (
                "port: 80\nprotocol: http\nretry: {attempts: 0}\n",
                "retry.attempts",
            ),
            (
                "port: 80\nprotocol: http\ntimeouts: {request: 1s, backend_request: 2s}\n",
                "timeouts.backend_request (2s) is longer than request (1s)",
            ),
            (
                "port: 80\nprotocol: http\nrules:\n- matches: [{path: {value: api}}]\n",
                "rules[0].matches[0].path.value must start with /",
            ),
            (
                "port: 80\nprotocol: http\nretry_constraint: {budget: {percent: 20, interval: 90s}}\n",
                "retry_constraint.budget.interval",
            ),
            (
                "port: 80\nfailure_accrual: {consecutive_failures: 0}\n",
                "failure_accrual.consecutive_failures",
            ),
            ("port: 80\nprotocol: grpc\n", "unknown variant `grpc`"),
        ];
        for (yaml, expected) in cases {
            let error = port(yaml).unwrap_err();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        // The control case: the same shapes, valid, pass.
        port("port: 80\nprotocol: http\ntimeouts: {request: 2s, backend_request: 1s}\nretry: {}\n")
            .unwrap();
        port("port: 5432\n").unwrap();
    }
}
