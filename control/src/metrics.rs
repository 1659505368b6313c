//! The controller's metrics, under `airlock_control_` (and the SVID upkeep's under
//! `airlock_`, as in the sidecar).

use airlock_api::proto::Ack;
use airlock_identity::SpiffeId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `result` of an acknowledgement.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AckLabels {
    result: &'static str,
}

/// Everything the controller counts.
#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) subscribers: Gauge,
    pub(crate) updates_sent: Counter,
    pub(crate) acks: Family<AckLabels, Counter>,
    pub(crate) views: Counter,
    pub(crate) services: Gauge,
    pub(crate) policies: Gauge,
    pub(crate) invalid_objects: Gauge,
    pub(crate) workload: airlock_ca::workload::Metrics,
}

/// Counts a live subscription until dropped.
pub(crate) struct Subscribed<'a>(&'a Gauge);

impl Drop for Subscribed<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let airlock = registry.sub_registry_with_prefix("airlock");
        self.workload.register(airlock);
        let r = airlock.sub_registry_with_prefix("control");
        r.register(
            "subscribers",
            "Live subscriptions",
            self.subscribers.clone(),
        );
        r.register(
            "updates_sent",
            "Snapshots and updates sent to subscribers",
            self.updates_sent.clone(),
        );
        r.register(
            "acks",
            "Subscribers' answers to updates (applied or refused)",
            self.acks.clone(),
        );
        r.register(
            "views",
            "Mesh views built from the source",
            self.views.clone(),
        );
        r.register(
            "services",
            "Services in the current view",
            self.services.clone(),
        );
        r.register(
            "policies",
            "Policies in the current view",
            self.policies.clone(),
        );
        r.register(
            "invalid_objects",
            "Source objects refused at the last look (their last valid version applies)",
            self.invalid_objects.clone(),
        );
    }

    /// Counts one more live subscription, until the guard drops.
    pub(crate) fn subscribed(&self) -> Subscribed<'_> {
        self.subscribers.inc();
        Subscribed(&self.subscribers)
    }

    /// Records a subscriber's answer; a refusal is logged with its reason.
    pub(crate) fn acked(&self, subscriber: &SpiffeId, ack: &Ack) {
        let result = if ack.error.is_empty() {
            "applied"
        } else {
            tracing::warn!(%subscriber, version = %ack.version, error = %ack.error, "subscriber refused an update");
            "refused"
        };
        self.acks.get_or_create(&AckLabels { result }).inc();
    }
}
