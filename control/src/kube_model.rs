//! From Kubernetes objects to the mesh view: pure, so that every rule is a table test
//! over objects as `kubectl get -o json` prints them.
//!
//! - A Service with a selector whose endpoints are pods that all carry the sidecar (the
//!   injector's `airlock.dev/identity` annotation) and all run as one service account
//!   becomes the service `<name>.<namespace>`, its identity that account's SPIFFE ID, its
//!   endpoints the pods' IPs on the mesh port with their EndpointSlice conditions, its
//!   addresses its ClusterIPs, and each port's protocol from `appProtocol` or the port's
//!   name. A Service whose pods carry no sidecar is not part of the mesh and is left out
//!   silently; one that mixes meshed and unmeshed pods, or service accounts, is left out
//!   and reported, as is one whose port and targetPort differ.
//! - An `AuthorizationPolicy` (`airlock.dev/v1alpha1`) becomes the policy document it
//!   holds, read by the policy loader. An invalid one is reported, and the version the
//!   controller last accepted (kept in its `status.acceptedSpec`, so that every replica
//!   and every restart agrees) keeps applying.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use airlock_api::proto::{Endpoint as WireEndpoint, Service as WireService};
use airlock_config::PortProtocol;
use airlock_config::routes::{ServicePort as RegistryPort, ServiceProtocol};
use airlock_identity::{SpiffeId, TrustDomain};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

use crate::view::ViewPolicy;

/// The label an EndpointSlice names its Service by.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The policy resource's group, version and kind.
pub const POLICY_API_VERSION: &str = airlock_policy::model::API_VERSION;
/// The policy resource's kind.
pub const POLICY_KIND: &str = "AuthorizationPolicy";

/// The `AuthorizationPolicy` resource (`airlock.dev/v1alpha1`, plural
/// `authorizationpolicies`).
pub fn policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("airlock.dev", "v1alpha1", POLICY_KIND),
        "authorizationpolicies",
    )
}

/// Everything the controller reads from the cluster.
#[derive(Debug, Default, Clone)]
pub struct Cluster {
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// EndpointSlices (`discovery.k8s.io/v1`).
    pub slices: Vec<Arc<EndpointSlice>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// `AuthorizationPolicy` objects.
    pub policies: Vec<Arc<DynamicObject>>,
}

/// What one policy object came to.
#[derive(Debug, Clone)]
pub struct PolicyOutcome {
    /// `namespace/name` of the object.
    pub key: String,
    /// `metadata.generation`, what a status condition observes.
    pub generation: Option<i64>,
    /// The policy that applies: the object's spec when valid, else the last accepted.
    pub applied: Option<ViewPolicy>,
    /// Why the spec was refused; `None` when it is valid.
    pub refused: Option<String>,
    /// True when the spec is valid and differs from `status.acceptedSpec`: the status
    /// should be brought up to date.
    pub accepted_stale: bool,
}

/// The mesh as the cluster describes it.
#[derive(Debug, Default)]
pub struct Translation {
    /// The mesh's services.
    pub services: Vec<WireService>,
    /// Every policy object.
    pub policies: Vec<PolicyOutcome>,
    /// Services left out, one line each: `Service ns/name: reason`.
    pub problems: Vec<String>,
}

/// Translates `cluster` for `trust_domain`, with sidecars' mesh listeners on `mesh_port`.
pub fn translate(cluster: &Cluster, trust_domain: &TrustDomain, mesh_port: u16) -> Translation {
    let pods: HashMap<(&str, &str), &Pod> = cluster
        .pods
        .iter()
        .filter_map(|pod| {
            Some((
                (namespace(&pod.metadata)?, pod.metadata.name.as_deref()?),
                &**pod,
            ))
        })
        .collect();
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in &cluster.slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(service)) = (namespace(&slice.metadata), service) {
            slices
                .entry((ns, service.as_str()))
                .or_default()
                .push(slice);
        }
    }
    let mut translation = Translation::default();
    for service in &cluster.services {
        let (Some(ns), Some(name)) = (
            namespace(&service.metadata),
            service.metadata.name.as_deref(),
        ) else {
            continue;
        };
        let service_slices = slices.get(&(ns, name)).map(Vec::as_slice).unwrap_or(&[]);
        match mesh_service(
            service,
            ns,
            name,
            service_slices,
            &pods,
            trust_domain,
            mesh_port,
        ) {
            Ok(Some(wire)) => translation.services.push(wire),
            Ok(None) => {}
            Err(reason) => translation
                .problems
                .push(format!("Service {ns}/{name}: {reason}")),
        }
    }
    translation.services.sort_by(|a, b| a.name.cmp(&b.name));
    translation.policies = cluster.policies.iter().map(|p| policy(p)).collect();
    translation.policies.sort_by(|a, b| a.key.cmp(&b.key));
    translation
}

fn namespace(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<&str> {
    Some(meta.namespace.as_deref().unwrap_or("default"))
}

/// One Service: `Ok(None)` when it is not part of the mesh.
fn mesh_service(
    service: &Service,
    ns: &str,
    name: &str,
    slices: &[&EndpointSlice],
    pods: &HashMap<(&str, &str), &Pod>,
    trust_domain: &TrustDomain,
    mesh_port: u16,
) -> Result<Option<WireService>, String> {
    let Some(spec) = &service.spec else {
        return Ok(None);
    };
    if spec.selector.as_ref().is_none_or(BTreeMap::is_empty) {
        // Its endpoints are whatever someone wrote, not pods the mesh can vouch for.
        return Ok(None);
    }
    let mut endpoints = Vec::new();
    let mut accounts = BTreeSet::new();
    let mut meshed = Vec::new();
    let mut unmeshed = Vec::new();
    let mut seen = BTreeSet::new();
    for slice in slices {
        for endpoint in &slice.endpoints {
            let Some(target) = endpoint
                .target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
            else {
                continue;
            };
            let pod_name = target.name.as_deref().unwrap_or_default();
            let Some(pod) = pods.get(&(ns, pod_name)) else {
                // The slice names a pod the pod watch has yet to deliver: next time.
                continue;
            };
            if !has_sidecar(pod) {
                unmeshed.push(pod_name.to_owned());
                continue;
            }
            meshed.push(pod_name.to_owned());
            let account = pod
                .spec
                .as_ref()
                .and_then(|spec| spec.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned());
            accounts.insert(account);
            let Some(ip) = endpoint.addresses.first() else {
                continue;
            };
            let ip: IpAddr = ip
                .parse()
                .map_err(|_| format!("endpoint address {ip:?} is not an IP address"))?;
            let address = SocketAddr::new(ip, mesh_port).to_string();
            if !seen.insert(address.clone()) {
                continue; // the same pod in two slices during a slice handover
            }
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            // The API: a nil `ready` means ready, a nil `serving` means what `ready`
            // says, a nil `terminating` means not terminating.
            let ready = conditions.ready.unwrap_or(true);
            endpoints.push(WireEndpoint {
                address,
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                zone: endpoint.zone.clone().unwrap_or_default(),
            });
        }
    }
    if meshed.is_empty() {
        return Ok(None);
    }
    if !unmeshed.is_empty() {
        unmeshed.sort();
        return Err(format!(
            "it mixes pods with the sidecar and without ({}): callers cannot pin one identity for both",
            unmeshed.join(", ")
        ));
    }
    if accounts.len() > 1 {
        return Err(format!(
            "its pods run as several service accounts ({}), and a caller pins one identity",
            accounts.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    let account = accounts
        .into_iter()
        .next()
        .expect("one account per meshed pod");
    let meshed_pods: Vec<&Pod> = meshed
        .iter()
        .filter_map(|pod| pods.get(&(ns, pod.as_str())).copied())
        .collect();
    let identity: SpiffeId = airlock_inject::service_account_identity(trust_domain, ns, &account)
        .map_err(|e| e.to_string())?;
    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let number =
            u16::try_from(port.port).map_err(|_| format!("port {} is not a port", port.port))?;
        let target = match &port.target_port {
            None => Some(port.port),
            Some(IntOrString::Int(target)) => Some(*target),
            Some(IntOrString::String(named)) => container_port(&meshed_pods, named),
        };
        if target != Some(port.port) {
            let target = match &port.target_port {
                Some(IntOrString::String(named)) => format!("{named:?} ({target:?} in its pods)"),
                _ => format!("{}", target.unwrap_or_default()),
            };
            return Err(format!(
                "port {} has targetPort {target}; the callee's sidecar serves the port the \
                 caller dialed, so a Service of the mesh keeps port and targetPort equal",
                port.port
            ));
        }
        let protocol = match airlock_inject::protocol_of_port(
            port.app_protocol.as_deref(),
            port.name.as_deref(),
        ) {
            PortProtocol::Http => ServiceProtocol::Http,
            PortProtocol::Tcp | PortProtocol::Auto => ServiceProtocol::Tcp,
        };
        ports.push(RegistryPort::new(number, protocol));
    }
    let addresses = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .collect::<BTreeSet<_>>();
    let mut entry = airlock_config::Service::new(identity, Vec::new());
    entry.ports = ports;
    entry.addresses = addresses.into_iter().collect();
    let mut wire = airlock_api::service_to_wire(&format!("{name}.{ns}"), &entry);
    endpoints.sort_by(|a, b| a.address.cmp(&b.address));
    wire.endpoints = endpoints;
    Ok(Some(wire))
}

/// The number of the container port `name` in `pods`, when they all agree on it.
fn container_port(pods: &[&Pod], name: &str) -> Option<i32> {
    let numbers: BTreeSet<i32> = pods
        .iter()
        .filter_map(|pod| pod.spec.as_ref())
        .flat_map(|spec| spec.containers.iter())
        .flat_map(|container| container.ports.iter().flatten())
        .filter(|port| port.name.as_deref() == Some(name))
        .map(|port| port.container_port)
        .collect();
    match numbers.len() {
        1 => numbers.into_iter().next(),
        _ => None,
    }
}

fn has_sidecar(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(airlock_inject::annotation::IDENTITY))
}

/// One policy object: its spec if valid, else what the controller last accepted.
fn policy(object: &DynamicObject) -> PolicyOutcome {
    let ns = object.metadata.namespace.as_deref().unwrap_or("default");
    let name = object.metadata.name.as_deref().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let source = format!("{POLICY_KIND} {key}");
    let spec = object.data.get("spec").cloned().unwrap_or(Value::Null);
    let accepted = object.data.pointer("/status/acceptedSpec").cloned();
    let read = |spec: &Value| {
        ViewPolicy::from_document(
            &source,
            airlock_policy::load::resource_document(ns, name, spec),
        )
    };
    let (applied, refused, accepted_stale) = match read(&spec) {
        Ok(policy) => (Some(policy), None, accepted.as_ref() != Some(&spec)),
        Err(reason) => {
            let last = accepted.as_ref().and_then(|spec| read(spec).ok());
            (last, Some(reason), false)
        }
    };
    PolicyOutcome {
        key,
        generation: object.metadata.generation,
        applied,
        refused,
        accepted_stale,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The objects of a `kubectl get … -o json` List, by kind.
    pub(crate) fn cluster(files: &[&str]) -> Cluster {
        let mut cluster = Cluster::default();
        for file in files {
            let path = format!("{}/tests/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
            let list: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            for item in list["items"].as_array().unwrap() {
                let item = item.clone();
                match item["kind"].as_str().unwrap() {
                    "Service" => cluster
                        .services
                        .push(Arc::new(serde_json::from_value(item).unwrap())),
                    "EndpointSlice" => cluster
                        .slices
                        .push(Arc::new(serde_json::from_value(item).unwrap())),
                    "Pod" => cluster
                        .pods
                        .push(Arc::new(serde_json::from_value(item).unwrap())),
                    "AuthorizationPolicy" => {
                        cluster
                            .policies
                            .push(Arc::new(serde_json::from_value(item).unwrap()));
                    }
                    other => panic!("unexpected kind {other}"),
                }
            }
        }
        cluster
    }

    fn translated() -> Translation {
        let td = TrustDomain::parse("cluster.local").unwrap();
        translate(&cluster(&["cluster.json", "policies.json"]), &td, 15008)
    }

    /// (address, ready, serving, terminating, zone) of each endpoint.
    fn endpoints(service: &WireService) -> Vec<(&str, bool, bool, bool, &str)> {
        service
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.as_str(),
                    e.ready,
                    e.serving,
                    e.terminating,
                    e.zone.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn meshed_services_become_entries_with_pod_endpoints_and_conditions() {
        let translation = translated();
        let names: Vec<&str> = translation
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["api.shop", "db.shop", "ledger.bank"]);
        let by_name = |name: &str| {
            translation
                .services
                .iter()
                .find(|s| s.name == name)
                .unwrap()
        };

        let api = by_name("api.shop");
        assert_eq!(api.identity, "spiffe://cluster.local/ns/shop/sa/api");
        assert_eq!(api.addresses, ["10.96.0.20", "fd00:96::20"]);
        assert_eq!(
            endpoints(api),
            [
                ("10.244.1.10:15008", true, true, false, "zone-a"),
                ("10.244.2.11:15008", false, true, true, "zone-b"),
                ("10.244.2.12:15008", false, false, false, "zone-b"),
            ],
            "both slices, each endpoint with its conditions"
        );
        let protocols: Vec<(u32, i32)> = api.ports.iter().map(|p| (p.port, p.protocol)).collect();
        let (tcp, http) = (
            airlock_api::proto::Protocol::Tcp as i32,
            airlock_api::proto::Protocol::Http as i32,
        );
        assert_eq!(
            protocols,
            [(8080, http), (9090, http)],
            "appProtocol http, name grpc-*"
        );

        let db = by_name("db.shop");
        assert_eq!(
            endpoints(db),
            [("10.244.1.30:15008", true, true, false, "")],
            "nil conditions: ready"
        );
        assert_eq!(db.ports[0].protocol, tcp);

        let ledger = by_name("ledger.bank");
        assert!(ledger.addresses.is_empty(), "headless");
        assert_eq!(
            endpoints(ledger),
            [("10.244.3.5:15008", true, true, false, "zone-c")],
            "the endpoint whose pod is not known yet waits"
        );
        // Each entry is one a sidecar takes.
        for service in &translation.services {
            airlock_api::service_from_wire(service).unwrap();
        }
    }

    #[test]
    fn services_that_cannot_be_pinned_are_reported_not_guessed() {
        let translation = translated();
        let problems = &translation.problems;
        let cases = [
            (
                "Service shop/mixed:",
                "mixes pods with the sidecar and without (mixed-7d9f8c6b5-bbbbb)",
            ),
            (
                "Service shop/shared:",
                "several service accounts (one, two)",
            ),
            ("Service shop/mapped:", "port 80 has targetPort 8080"),
        ];
        for (service, reason) in cases {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(service) && p.contains(reason)),
                "{service} {reason}: {problems:#?}"
            );
        }
        assert_eq!(
            problems.len(),
            cases.len(),
            "legacy, external and idle are silent: {problems:#?}"
        );
    }

    #[test]
    fn policy_objects_apply_when_valid_and_keep_the_accepted_version_when_not() {
        let translation = translated();
        let outcome = |key: &str| translation.policies.iter().find(|p| p.key == key).unwrap();
        // (key, applies, refused, status to bring up to date)
        let cases = [
            ("shop/fresh", Some("GET"), false, true),
            ("shop/settled", Some("GET"), false, false),
            // The spec says PERMIT; its accepted version, ALLOW, applies.
            ("shop/broken-edit", Some("action: ALLOW"), true, false),
            ("shop/broken-new", None, true, false),
        ];
        for (key, applies, refused, accept) in cases {
            let policy = outcome(key);
            match (applies, &policy.applied) {
                (Some(text), Some(applied)) => {
                    assert!(
                        applied.wire.document.contains(text),
                        "{key}: {}",
                        applied.wire.document
                    );
                    assert_eq!(applied.wire.source, format!("AuthorizationPolicy {key}"));
                    assert_eq!(applied.key(), key);
                }
                (None, None) => {}
                (expected, got) => panic!("{key}: expected {expected:?}, got {got:?}"),
            }
            assert_eq!(
                policy.refused.is_some(),
                refused,
                "{key}: {:?}",
                policy.refused
            );
            assert_eq!(policy.accepted_stale, accept, "{key}");
        }
        let reason = outcome("shop/broken-new").refused.clone().unwrap();
        assert!(
            reason.starts_with("AuthorizationPolicy shop/broken-new:") && reason.contains("PERMIT"),
            "{reason}"
        );
        // The edit that broke it still applies its accepted version, not its spec.
        let kept = outcome("shop/broken-edit").applied.as_ref().unwrap();
        assert!(
            !kept.wire.document.contains("PERMIT"),
            "{}",
            kept.wire.document
        );
    }
}
