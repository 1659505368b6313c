//! `airlock registry`: the sidecars' registry (`registry_file`) from what the cluster
//! says, as `kubectl get services,pods -A -o json` prints it.
//!
//! Each Service whose selected pods carry the sidecar becomes one entry, named
//! `<service>.<namespace>`. Its identity is the pods' service account, which must be one
//! and the same for all of them (a caller pins it). Its endpoint is the ClusterIP on the
//! mesh port, so that kube-proxy spreads mesh connections over the pods and pod churn
//! needs no new registry; a headless Service lists its pods' IPs instead. Services that
//! cannot be entries are reported with the reason, and left out.

use std::net::{IpAddr, SocketAddr};

use airlock_config::routes::{ServicePort, ServiceProtocol};
use airlock_config::{PortProtocol, Service, Services};
use airlock_identity::TrustDomain;
use serde_json::Value;

use crate::names::annotation;
use crate::pod::{IdentityError, service_account_identity};
use crate::port_protocol::protocol_of_port;

/// The registry as YAML, and one line per Service left out.
#[derive(Debug)]
pub struct Registry {
    /// The `registry_file` contents: one entry per meshed Service, named
    /// `<service>.<namespace>`, under a header comment.
    pub yaml: String,
    /// `Service <namespace>/<name>: <reason>`, one per Service left out.
    pub skipped: Vec<String>,
}

/// Why no registry was built at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The input is neither a `List` nor a single Service or Pod.
    #[error("not a List of Services and Pods (kubectl get services,pods -A -o json)")]
    NotAList,
}

/// Why one Service is left out of the registry (a line of [`Registry::skipped`]).
#[derive(Debug, thiserror::Error)]
enum SkipReason {
    /// Without a selector its endpoints are not pods.
    #[error("no selector: its endpoints are not pods the registry can vouch for")]
    NoSelector,
    /// The selector matches no pod of the Service's namespace.
    #[error("it selects no pod")]
    NoPod,
    /// A selected pod runs without the sidecar.
    #[error("pod {pod} has no airlock sidecar")]
    NoSidecar { pod: String },
    /// The selected pods do not share one service account.
    #[error(
        "its pods run as several service accounts ({}), and a caller pins one identity",
        .accounts.join(", ")
    )]
    SeveralAccounts { accounts: Vec<String> },
    /// The pods' namespace and service account make no identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// `port` is not its own `targetPort`.
    #[error(
        "port {port} has another targetPort; the callee's sidecar serves the port the caller \
         dialed, so a Service of the mesh keeps port and targetPort equal"
    )]
    TargetPort { port: u64 },
    /// A ClusterIP Service without the mesh port.
    #[error(
        "it does not expose the mesh port ({mesh_port}, targetPort {mesh_port}), which its \
         ClusterIP endpoint needs"
    )]
    NoMeshPort { mesh_port: u16 },
    /// The ClusterIP or a pod IP is no IP address.
    #[error("{ip:?} is not an IP address")]
    NotAnIp { ip: String },
    /// Headless (no ClusterIP), and no selected pod has an IP yet.
    #[error("headless, and none of its pods has an IP yet")]
    NoPodIp,
}

/// Builds the registry from the Services and Pods in `objects` (a `List`, or one Service
/// or Pod). Anything else is an error: an empty registry written from a failed `kubectl`
/// would take every service away from the sidecars.
pub fn registry(
    objects: &Value,
    trust_domain: &TrustDomain,
    mesh_port: u16,
) -> Result<Registry, RegistryError> {
    let kind = objects.get("kind").and_then(Value::as_str);
    let items: Vec<&Value> = match (objects.get("items").and_then(Value::as_array), kind) {
        (Some(items), _) => items.iter().collect(),
        (None, Some("Service" | "Pod")) => vec![objects],
        _ => return Err(RegistryError::NotAList),
    };
    let of_kind = |kind: &'static str| {
        items
            .iter()
            .copied()
            .filter(move |item| item.get("kind").and_then(Value::as_str) == Some(kind))
    };
    let pods: Vec<&Value> = of_kind("Pod").collect();
    let mut entries = Services::new();
    let mut skipped = Vec::new();
    for service in of_kind("Service") {
        let text = |pointer: &str| service.pointer(pointer).and_then(Value::as_str);
        let namespace = text("/metadata/namespace").unwrap_or("default");
        let name = text("/metadata/name").unwrap_or("?");
        let label = format!("{namespace}/{name}");
        match entry(service, namespace, &pods, trust_domain, mesh_port) {
            Ok(service) => {
                entries.insert(format!("{name}.{namespace}"), service);
            }
            Err(reason) => skipped.push(format!("Service {label}: {reason}")),
        }
    }
    let yaml = String::from("# Written by `airlock registry`.\n")
        + &serde_norway::to_string(&entries).expect("a registry always serializes");
    Ok(Registry { yaml, skipped })
}

fn entry(
    service: &Value,
    namespace: &str,
    pods: &[&Value],
    trust_domain: &TrustDomain,
    mesh_port: u16,
) -> Result<Service, SkipReason> {
    let selector = service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|selector| !selector.is_empty())
        .ok_or(SkipReason::NoSelector)?;
    let selected: Vec<&Value> = pods
        .iter()
        .copied()
        .filter(|pod| pod.pointer("/metadata/namespace").and_then(Value::as_str) == Some(namespace))
        .filter(|pod| {
            selector.iter().all(|(key, value)| {
                pod.pointer("/metadata/labels")
                    .and_then(|labels| labels.get(key))
                    == Some(value)
            })
        })
        .collect();
    if selected.is_empty() {
        return Err(SkipReason::NoPod);
    }
    if let Some(bare) = selected.iter().find(|pod| !has_sidecar(pod)) {
        let pod = bare
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?");
        return Err(SkipReason::NoSidecar {
            pod: pod.to_owned(),
        });
    }
    let mut accounts: Vec<&str> = selected
        .iter()
        .map(|pod| {
            ["/spec/serviceAccountName", "/spec/serviceAccount"]
                .iter()
                .find_map(|pointer| pod.pointer(pointer).and_then(Value::as_str))
                .filter(|account| !account.is_empty())
                .unwrap_or("default")
        })
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    let [account] = accounts[..] else {
        return Err(SkipReason::SeveralAccounts {
            accounts: accounts.into_iter().map(str::to_owned).collect(),
        });
    };
    let identity = service_account_identity(trust_domain, namespace, account)?;
    check_ports(service, &selected)?;
    let cluster_ip = service.pointer("/spec/clusterIP").and_then(Value::as_str);
    let endpoints: Vec<SocketAddr> = match cluster_ip {
        Some(ip) if !ip.is_empty() && ip != "None" => {
            let exposes_mesh_port = service_ports(service).any(|(port, target)| {
                port == u64::from(mesh_port)
                    && target.is_none_or(|target| target == &Value::from(mesh_port))
            });
            if !exposes_mesh_port {
                return Err(SkipReason::NoMeshPort { mesh_port });
            }
            vec![endpoint(ip, mesh_port)?]
        }
        _ => selected
            .iter()
            .filter_map(|pod| pod.pointer("/status/podIP").and_then(Value::as_str))
            .map(|ip| endpoint(ip, mesh_port))
            .collect::<Result<_, _>>()?,
    };
    if endpoints.is_empty() {
        return Err(SkipReason::NoPodIp);
    }
    Ok(Service {
        ports: http_ports(service, mesh_port),
        ..Service::new(identity, endpoints)
    })
}

/// The Service's ports that carry HTTP ([`protocol_of_port`] says `http`), which callers
/// route per request. `auto` ports stay tunnels: the caller's side cannot wait for a
/// server-first protocol to speak.
fn http_ports(service: &Value, mesh_port: u16) -> Vec<ServicePort> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|port| {
            let app_protocol = port.get("appProtocol").and_then(Value::as_str);
            let name = port.get("name").and_then(Value::as_str);
            protocol_of_port(app_protocol, name) == PortProtocol::Http
        })
        .filter_map(|port| u16::try_from(port.get("port")?.as_u64()?).ok())
        .filter(|&port| port != mesh_port)
        .map(|port| ServicePort::new(port, ServiceProtocol::Http))
        .collect()
}

/// Each port and its `targetPort` (absent: the same number).
fn service_ports(service: &Value) -> impl Iterator<Item = (u64, Option<&Value>)> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|port| Some((port.get("port")?.as_u64()?, port.get("targetPort"))))
}

/// The caller's sidecar names the port it dialed (the Service's) in its CONNECT, and the
/// callee's sidecar authorizes and serves that port; so each port must be its own
/// targetPort. A named targetPort is looked up in the selected pods' containers.
fn check_ports(service: &Value, pods: &[&Value]) -> Result<(), SkipReason> {
    for (port, target) in service_ports(service) {
        let target = match target {
            None => continue,
            Some(Value::Number(number)) => number.as_u64(),
            Some(Value::String(name)) => pods
                .iter()
                .flat_map(|pod| {
                    pod.pointer("/spec/containers")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .flat_map(|container| {
                    container
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .find(|entry| entry.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|entry| entry.get("containerPort")?.as_u64()),
            Some(_) => None,
        };
        if target != Some(port) {
            return Err(SkipReason::TargetPort { port });
        }
    }
    Ok(())
}

fn has_sidecar(pod: &Value) -> bool {
    pod.pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(annotation::IDENTITY))
        .is_some()
}

fn endpoint(ip: &str, port: u16) -> Result<SocketAddr, SkipReason> {
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| SkipReason::NotAnIp { ip: ip.to_owned() })?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_ports_come_from_app_protocol_or_the_port_name() {
        let service = serde_json::json!({"spec": {"ports": [
            {"name": "web", "port": 80, "appProtocol": "http"},
            {"name": "api", "port": 9090, "appProtocol": "kubernetes.io/h2c"},
            {"name": "grpc-orders", "port": 9091},
            {"name": "http", "port": 8080},
            {"name": "http", "port": 8443, "appProtocol": "https"},
            {"name": "https-admin", "port": 8444},
            {"name": "postgres", "port": 5432},
            {"port": 6379},
            {"name": "mesh", "port": 15008, "appProtocol": "http"}
        ]}});
        let ports: Vec<u16> = http_ports(&service, 15008).iter().map(|p| p.port).collect();
        assert_eq!(ports, [80, 9090, 9091, 8080]);
    }
}
