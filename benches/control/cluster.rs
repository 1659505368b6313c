//! The benchmark's cluster, as Kubernetes objects: Services of meshed pods behind one
//! EndpointSlice each, and policies selecting some of them.

use serde_json::{Value, json};

/// The trust domain the pods' identities are in.
pub(crate) const TRUST_DOMAIN: &str = "bench.local";
/// The service whose endpoints the propagation rounds add to.
pub(crate) const WATCHED: &str = "svc-0.ns-0";
const NAMESPACES: usize = 10;

fn namespace(service: usize) -> String {
    format!("ns-{}", service % NAMESPACES)
}

/// The SPIFFE ID of service `service`'s pods.
pub(crate) fn identity(service: usize) -> String {
    format!(
        "spiffe://{TRUST_DOMAIN}/ns/{}/sa/svc-{service}",
        namespace(service)
    )
}

fn pod_ip(service: usize, pod: usize) -> String {
    format!("10.{}.{}.{}", 1 + service / 256, service % 256, pod + 1)
}

fn pod(service: usize, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace(service), "labels": {"app": format!("svc-{service}")},
                     "annotations": {"airlock.dev/identity": identity(service)}},
        "spec": {"serviceAccountName": format!("svc-{service}"), "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": ip}})
}

/// Service `service`'s EndpointSlice: its pods, plus `extra` (name, ip) ones, each
/// ready unless it is `not_ready`.
fn slice(
    service: usize,
    pods: usize,
    extra: &[(String, String)],
    not_ready: Option<usize>,
) -> Value {
    let mut endpoints: Vec<Value> = (0..pods)
        .map(|p| {
            json!({"addresses": [pod_ip(service, p)],
                   "conditions": {"ready": not_ready != Some(p), "serving": true, "terminating": false},
                   "targetRef": {"kind": "Pod", "name": format!("svc-{service}-{p}"), "namespace": namespace(service)}})
        })
        .collect();
    endpoints.extend(extra.iter().map(|(name, ip)| {
        json!({"addresses": [ip], "conditions": {"ready": true},
               "targetRef": {"kind": "Pod", "name": name, "namespace": namespace(service)}})
    }));
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": format!("svc-{service}-x1"), "namespace": namespace(service),
                     "labels": {"kubernetes.io/service-name": format!("svc-{service}")}},
        "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

/// `services` Services of `pods` pods each, their slices, and `policies` policies.
pub(crate) fn objects(services: usize, pods: usize, policies: usize) -> Vec<Value> {
    let mut objects = Vec::new();
    for s in 0..services {
        objects.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{s}"), "namespace": namespace(s)},
            "spec": {"selector": {"app": format!("svc-{s}")},
                     "clusterIP": format!("10.96.{}.{}", s / 256, s % 256),
                     "ports": [{"name": "http", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]}}));
        for p in 0..pods {
            objects.push(pod(s, &format!("svc-{s}-{p}"), &pod_ip(s, p)));
        }
        objects.push(slice(s, pods, &[], None));
    }
    for k in 0..policies {
        objects.push(
            json!({"apiVersion": "airlock.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": format!("policy-{k}"), "namespace": namespace(k), "generation": 1},
            "spec": {"selector": {"identities": [identity(k)]}, "action": "ALLOW",
                     "rules": [{"from": [{"source": {"principals": [identity(k + 1)]}}]}]}}),
        );
    }
    objects
}

/// Round `round` of the propagation test: a new pod of service 0, service 0's slice
/// with it (and the earlier rounds' pods), and the mesh address subscribers wait for.
pub(crate) fn scale_up(round: usize) -> (Value, Value, String) {
    let added = |r: usize| (format!("svc-0-extra-{r}"), format!("10.200.0.{}", r + 1));
    let (name, ip) = added(round);
    let extra: Vec<(String, String)> = (0..=round).map(added).collect();
    let pods = crate::PODS_PER_SERVICE;
    (
        pod(0, &name, &ip),
        slice(0, pods, &extra, None),
        format!("{ip}:15008"),
    )
}

/// Change `tick` of the churn: one endpoint of a service other than 0 turns not ready,
/// or ready again.
pub(crate) fn flip(tick: usize, services: usize) -> Value {
    let service = 1 + tick % (services - 1);
    let round = tick / (services - 1);
    let not_ready = round
        .is_multiple_of(2)
        .then_some(round / 2 % crate::PODS_PER_SERVICE);
    slice(service, crate::PODS_PER_SERVICE, &[], not_ready)
}
