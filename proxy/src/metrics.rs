//! Prometheus metrics of one sidecar (`/metrics` on the health listener).

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Label values are written in lower case, as Prometheus conventions have them.
macro_rules! lower_case_label {
    ($ty:ty, $($variant:ident => $text:literal),+) => {
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(match self { $(Self::$variant => $text),+ })
            }
        }
    };
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub direction: Direction,
}

lower_case_label!(Direction, Inbound => "inbound", Outbound => "outbound");

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Towards the app (inbound) or towards the mesh (outbound).
    Forward,
    /// The answers.
    Reverse,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BytesLabels {
    pub direction: Direction,
    pub flow: Flow,
}

lower_case_label!(Flow, Forward => "forward", Reverse => "reverse");

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    Deny,
    /// A live tunnel closed because policy no longer allows it.
    Terminate,
}

impl Verdict {
    /// Allow or deny, as policy decided.
    pub(crate) fn of(allowed: bool) -> Self {
        if allowed { Self::Allow } else { Self::Deny }
    }
}

lower_case_label!(Verdict, Allow => "allow", Deny => "deny", Terminate => "terminate");

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthzLabels {
    pub decision: Verdict,
    /// `namespace/name`, `none` (no ALLOW matched) or `default`.
    pub policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub reason: String,
}

/// What the sidecar did with a request or tunnel: the `decision` of its access log line
/// and of its metrics.
#[derive(Debug, Clone, Copy, Default, Hash, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Disposition {
    Allow,
    Deny,
    /// Refused before authorization: a bad shape or a limit.
    #[default]
    Rejected,
}

impl Disposition {
    /// Allow or deny, as policy decided.
    pub(crate) fn of(allowed: bool) -> Self {
        if allowed { Self::Allow } else { Self::Deny }
    }
}

lower_case_label!(Disposition, Allow => "allow", Deny => "deny", Rejected => "rejected");

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub direction: Direction,
    /// `2xx`, `4xx`, ...
    pub status_class: String,
    pub decision: Disposition,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DryRunLabels {
    pub policy: String,
    /// `would_allow` or `would_deny`.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LimitLabels {
    pub limit: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DetectionLabels {
    /// `http1`, `http2`, `tcp` or `timeout` (fell back to TCP).
    pub result: String,
}

/// Latency buckets from 100 µs to about 52 s, doubling.
pub(crate) fn duration_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 20,
    ))
}

type DurationFamily = Family<DirectionLabels, Histogram, fn() -> Histogram>;

/// Every metric the sidecar exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub connections_opened: Family<DirectionLabels, Counter>,
    pub connections_closed: Family<DirectionLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub authz: Family<AuthzLabels, Counter>,
    pub tls_handshake_errors: Family<ReasonLabels, Counter>,
    pub connect_refused: Family<ReasonLabels, Counter>,
    /// The SVID and bundle upkeep's (`airlock_ca::workload`).
    pub workload: airlock_ca::workload::Metrics,
    pub policy_reloads: Counter,
    pub policy_reload_errors: Counter,
    pub registry_reloads: Counter,
    pub registry_reload_errors: Counter,
    pub discovery_updates: Counter,
    pub discovery_refused: Counter,
    pub discovery_reconnects: Counter,
    pub pool_connections: Gauge,
    pub pool_streams: Counter,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_duration: DurationFamily,
    pub dry_run: Family<DryRunLabels, Counter>,
    pub http_limit_rejections: Family<LimitLabels, Counter>,
    pub protocol_detections: Family<DetectionLabels, Counter>,
    pub access_log_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_opened: Family::default(),
            connections_closed: Family::default(),
            bytes: Family::default(),
            authz: Family::default(),
            tls_handshake_errors: Family::default(),
            connect_refused: Family::default(),
            workload: airlock_ca::workload::Metrics::default(),
            policy_reloads: Counter::default(),
            policy_reload_errors: Counter::default(),
            registry_reloads: Counter::default(),
            registry_reload_errors: Counter::default(),
            discovery_updates: Counter::default(),
            discovery_refused: Counter::default(),
            discovery_reconnects: Counter::default(),
            pool_connections: Gauge::default(),
            pool_streams: Counter::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(duration_histogram),
            dry_run: Family::default(),
            http_limit_rejections: Family::default(),
            protocol_detections: Family::default(),
            access_log_dropped: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `airlock_` prefix.
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("airlock");
        r.register(
            "connections_opened",
            "TCP connections opened",
            self.connections_opened.clone(),
        );
        r.register(
            "connections_closed",
            "TCP connections closed",
            self.connections_closed.clone(),
        );
        r.register("bytes", "Bytes copied through tunnels", self.bytes.clone());
        r.register(
            "authz",
            "Authorization decisions (terminate: live tunnel closed by a policy change)",
            self.authz.clone(),
        );
        r.register(
            "tls_handshake_errors",
            "Failed TLS handshakes by reason",
            self.tls_handshake_errors.clone(),
        );
        r.register(
            "connect_refused",
            "Mesh connections refused before a tunnel existed, by reason",
            self.connect_refused.clone(),
        );
        self.workload.register(r);
        r.register(
            "policy_reloads",
            "Policy reloads that changed the live set",
            self.policy_reloads.clone(),
        );
        r.register(
            "policy_reload_errors",
            "Policy reloads refused because the files were invalid",
            self.policy_reload_errors.clone(),
        );
        r.register(
            "registry_reloads",
            "Reloads of registry_file that changed the live registry",
            self.registry_reloads.clone(),
        );
        r.register(
            "registry_reload_errors",
            "Reloads of registry_file refused because the file was invalid",
            self.registry_reload_errors.clone(),
        );
        r.register(
            "discovery_updates",
            "Controller updates that changed the sidecar's mesh view",
            self.discovery_updates.clone(),
        );
        r.register(
            "discovery_refused",
            "Controller updates refused (the last view stays)",
            self.discovery_refused.clone(),
        );
        r.register(
            "discovery_reconnects",
            "Subscriptions to the controller opened again after one ended or failed",
            self.discovery_reconnects.clone(),
        );
        r.register(
            "pool_connections",
            "Open pooled mesh connections",
            self.pool_connections.clone(),
        );
        r.register(
            "pool_streams",
            "CONNECT streams opened on pooled connections",
            self.pool_streams.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests by direction, status class and decision",
            self.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request duration, from the request head to the end of the response",
            self.http_request_duration.clone(),
        );
        r.register(
            "dry_run",
            "Dry-run policy outcomes (never enforced)",
            self.dry_run.clone(),
        );
        r.register(
            "http_limit_rejections",
            "HTTP requests and connections refused by a limit",
            self.http_limit_rejections.clone(),
        );
        r.register(
            "protocol_detections",
            "Protocol detection results on auto ports",
            self.protocol_detections.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
    }

    /// Counts dry-run outcomes of one decision.
    pub(crate) fn dry_run(&self, outcomes: &[airlock_policy::eval::DryRunOutcome]) {
        for outcome in outcomes {
            self.dry_run
                .get_or_create(&DryRunLabels {
                    policy: outcome.policy.to_string(),
                    outcome: if outcome.would_allow {
                        "would_allow"
                    } else {
                        "would_deny"
                    }
                    .to_owned(),
                })
                .inc();
        }
    }

    pub(crate) fn limit(&self, limit: &str) {
        self.http_limit_rejections
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .inc();
    }

    pub(crate) fn authz(&self, decision: Verdict, policy: &str) {
        self.authz
            .get_or_create(&AuthzLabels {
                decision,
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// Bytes a tunnel moved: `forward` towards the app (inbound) or the mesh (outbound).
    pub(crate) fn count_bytes(&self, direction: Direction, forward: u64, reverse: u64) {
        for (flow, bytes) in [(Flow::Forward, forward), (Flow::Reverse, reverse)] {
            self.bytes
                .get_or_create(&BytesLabels { direction, flow })
                .inc_by(bytes);
        }
    }

    pub(crate) fn detection(&self, result: &str) {
        self.protocol_detections
            .get_or_create(&DetectionLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub(crate) fn reason(family: &Family<ReasonLabels, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
