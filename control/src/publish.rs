//! Where a source hands its results: each new mesh view goes to the subscriptions (and
//! marks the controller as having one), and each distinct set of refused source objects
//! is logged once and counted. Both sources publish through one [`Publisher`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;

use crate::health::Health;
use crate::metrics::Metrics;
use crate::view::MeshView;

/// A source's outlet.
pub(crate) struct Publisher {
    views: watch::Sender<Arc<MeshView>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// The problems logged last, so that an unchanged set is not logged again.
    reported: Vec<String>,
}

impl Publisher {
    pub(crate) fn new(
        views: watch::Sender<Arc<MeshView>>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            views,
            health,
            metrics,
            reported: Vec::new(),
        }
    }

    /// Logs the source objects refused, when they differ from the last set, and counts
    /// them.
    pub(crate) fn report(&mut self, problems: Vec<String>) {
        if problems != self.reported {
            for problem in &problems {
                tracing::error!(problem = %problem, "source object refused: a policy's last accepted version applies, a service is left out of the mesh");
            }
            self.reported = problems;
        }
        self.metrics.invalid_objects.set(self.reported.len() as i64);
    }

    /// Sends `view` to the subscriptions if it differs from the last (the first always
    /// goes: it makes the controller ready), sharing what did not change with the last.
    pub(crate) fn publish(&self, view: MeshView) {
        let metrics = &self.metrics;
        metrics.services.set(view.services.len() as i64);
        metrics.policies.set(view.policies.len() as i64);
        let first = !self.health.has_view.swap(true, Ordering::Relaxed);
        let view = view.reusing(&self.views.borrow());
        if first || self.views.borrow().version != view.version {
            tracing::info!(
                version = %view.version,
                services = view.services.len(),
                policies = view.policies.len(),
                "mesh view"
            );
            metrics.views.inc();
            self.views.send_replace(Arc::new(view));
        }
    }
}
