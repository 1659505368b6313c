//! Metrics of routed requests, per destination service and endpoint
//! (`airlock_route_*` on `/metrics`).

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::metrics::duration_histogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServiceLabels {
    pub(crate) service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointLabels {
    pub(crate) service: String,
    /// `ip:port` of the endpoint's sidecar; `none` when no endpoint answered.
    pub(crate) endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResponseLabels {
    pub(crate) service: String,
    pub(crate) endpoint: String,
    /// `2xx`, `5xx`, ...
    pub(crate) status_class: String,
}

/// The counters and histograms of the routed request path.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    requests: Family<ResponseLabels, Counter>,
    latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    retries: Family<ServiceLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    timeouts: Family<ServiceLabels, Counter>,
    ejections: Family<EndpointLabels, Counter>,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            timeouts: Family::default(),
            ejections: Family::default(),
        }
    }
}

fn service(service: &str) -> ServiceLabels {
    ServiceLabels {
        service: service.to_owned(),
    }
}

impl RouteMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("airlock_route");
        r.register(
            "requests",
            "Routed requests answered to the app, by service, final endpoint and status",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "From the app's request to the response head, by service and final endpoint",
            self.latency.clone(),
        );
        r.register(
            "retries",
            "Routed requests sent again",
            self.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries wanted but refused by the port's retry budget",
            self.budget_exhausted.clone(),
        );
        r.register(
            "timeouts",
            "Routed requests answered 504 (or DEADLINE_EXCEEDED): the request or backend request timeout lapsed",
            self.timeouts.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints taken out of their service's balancer by failure accrual",
            self.ejections.clone(),
        );
    }

    /// One answered request (by the endpoint, or by this sidecar when `endpoint` is none).
    pub(crate) fn answered(
        &self,
        service: &str,
        endpoint: Option<SocketAddr>,
        status: u16,
        seconds: f64,
    ) {
        let endpoint = endpoint.map_or_else(|| "none".to_owned(), |e| e.to_string());
        self.requests
            .get_or_create(&ResponseLabels {
                service: service.to_owned(),
                endpoint: endpoint.clone(),
                status_class: format!("{}xx", status / 100),
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels {
                service: service.to_owned(),
                endpoint,
            })
            .observe(seconds);
    }

    pub(crate) fn retried(&self, name: &str, retries: u32, exhausted: u32) {
        if retries > 0 {
            self.retries
                .get_or_create(&service(name))
                .inc_by(retries.into());
        }
        if exhausted > 0 {
            self.budget_exhausted
                .get_or_create(&service(name))
                .inc_by(exhausted.into());
        }
    }

    pub(crate) fn timed_out(&self, name: &str) {
        self.timeouts.get_or_create(&service(name)).inc();
    }

    /// Drops the series of an endpoint that left `service`, so that a sidecar following
    /// rollouts for weeks does not keep a series for every pod it ever saw.
    pub(crate) fn forget_endpoint(&self, service: &str, endpoint: SocketAddr) {
        self.forget(service, &endpoint.to_string());
    }

    /// Drops every series of a service that left the registry.
    pub(crate) fn forget_service(&self, name: &str, endpoints: &[SocketAddr]) {
        for endpoint in endpoints {
            self.forget_endpoint(name, *endpoint);
        }
        self.forget(name, "none");
        let labels = service(name);
        self.retries.remove(&labels);
        self.budget_exhausted.remove(&labels);
        self.timeouts.remove(&labels);
    }

    fn forget(&self, service: &str, endpoint: &str) {
        // Statuses run from 100 to 999.
        for class in 1..=9 {
            self.requests.remove(&ResponseLabels {
                service: service.to_owned(),
                endpoint: endpoint.to_owned(),
                status_class: format!("{class}xx"),
            });
        }
        let labels = EndpointLabels {
            service: service.to_owned(),
            endpoint: endpoint.to_owned(),
        };
        self.latency.remove(&labels);
        self.ejections.remove(&labels);
    }

    pub(crate) fn ejection(&self, name: &str, endpoint: SocketAddr) {
        self.ejections
            .get_or_create(&EndpointLabels {
                service: name.to_owned(),
                endpoint: endpoint.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(metrics: &RouteMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn series_of_endpoints_and_services_that_left_are_dropped() {
        let metrics = RouteMetrics::default();
        let (a, b) = (
            SocketAddr::from(([10, 0, 0, 1], 15008)),
            SocketAddr::from(([10, 0, 0, 2], 15008)),
        );
        for endpoint in [a, b] {
            metrics.answered("api", Some(endpoint), 200, 0.001);
            metrics.answered("api", Some(endpoint), 503, 0.001);
            metrics.ejection("api", endpoint);
        }
        metrics.answered("api", None, 503, 0.0);
        metrics.answered("web", Some(a), 200, 0.001);
        metrics.retried("api", 1, 1);
        metrics.timed_out("api");

        metrics.forget_endpoint("api", a);
        let text = encoded(&metrics);
        assert!(
            !text.contains("service=\"api\",endpoint=\"10.0.0.1:15008\""),
            "{text}"
        );
        assert!(
            text.contains("service=\"api\",endpoint=\"10.0.0.2:15008\""),
            "{text}"
        );
        assert!(
            text.contains("service=\"web\",endpoint=\"10.0.0.1:15008\""),
            "the same endpoint of another service stays: {text}"
        );

        metrics.forget_service("api", &[b]);
        let text = encoded(&metrics);
        assert!(!text.contains("service=\"api\""), "{text}");
        assert!(text.contains("service=\"web\""), "{text}");
    }
}
