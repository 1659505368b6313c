//! Prometheus metrics of one sidecar (`/metrics` on the health listener).

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

lower_case_label!(Direction, Inbound => "inbound", Outbound => "outbound");

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Flow {
    /// Towards the app (inbound) or towards the mesh (outbound).
    Forward,
    /// The answers.
    Reverse,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    pub direction: Direction,
    pub flow: Flow,
}

lower_case_label!(Flow, Forward => "forward", Reverse => "reverse");

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
    /// A live tunnel closed because policy no longer allows it.
    Terminate,
}

lower_case_label!(Verdict, Allow => "allow", Deny => "deny", Terminate => "terminate");

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub decision: Verdict,
    /// `namespace/name`, `none` (no ALLOW matched) or `default`.
    pub policy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// Every metric the sidecar exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_opened: Family<DirectionLabels, Counter>,
    pub connections_closed: Family<DirectionLabels, Counter>,
    pub bytes: Family<BytesLabels, Counter>,
    pub authz: Family<AuthzLabels, Counter>,
    pub tls_handshake_errors: Family<ReasonLabels, Counter>,
    pub connect_refused: Family<ReasonLabels, Counter>,
    pub cert_expiry_seconds: Gauge,
    pub cert_refreshes: Counter,
    pub cert_refresh_failures: Counter,
    pub bundle_refresh_failures: Counter,
    pub policy_reloads: Counter,
    pub policy_reload_errors: Counter,
    pub pool_connections: Gauge,
    pub pool_streams: Counter,
}

impl Metrics {
    /// Registers every metric under the `airlock_` prefix.
    pub fn register(&self, registry: &mut Registry) {
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
        r.register(
            "cert_expiry_timestamp_seconds",
            "NotAfter of the current SVID (Unix seconds)",
            self.cert_expiry_seconds.clone(),
        );
        r.register(
            "cert_refreshes",
            "SVIDs obtained from the CA",
            self.cert_refreshes.clone(),
        );
        r.register(
            "cert_refresh_failures",
            "Failed attempts to obtain an SVID",
            self.cert_refresh_failures.clone(),
        );
        r.register(
            "bundle_refresh_failures",
            "Failed trust bundle refreshes",
            self.bundle_refresh_failures.clone(),
        );
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
            "pool_connections",
            "Open pooled mesh connections",
            self.pool_connections.clone(),
        );
        r.register(
            "pool_streams",
            "CONNECT streams opened on pooled connections",
            self.pool_streams.clone(),
        );
    }

    pub fn authz(&self, decision: Verdict, policy: &str) {
        self.authz
            .get_or_create(&AuthzLabels {
                decision,
                policy: policy.to_owned(),
            })
            .inc();
    }

    /// Bytes a tunnel moved: `forward` towards the app (inbound) or the mesh (outbound).
    pub fn count_bytes(&self, direction: Direction, forward: u64, reverse: u64) {
        for (flow, bytes) in [(Flow::Forward, forward), (Flow::Reverse, reverse)] {
            self.bytes
                .get_or_create(&BytesLabels { direction, flow })
                .inc_by(bytes);
        }
    }

    pub fn reason(family: &Family<ReasonLabels, Counter>, reason: &str) {
        family
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
