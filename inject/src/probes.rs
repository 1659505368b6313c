//! The app's probes under capture. The kubelet probes app ports in plaintext from the
//! node, which capture would hand to the sidecar, where strict mode refuses it. So the
//! injector points each HTTP and TCP probe of a captured port at the sidecar's
//! `/app-health/<container>/<kind>`, which runs the original probe over loopback, and
//! keeps the original handlers to put back before re-injecting.

use serde_json::{Map, Value, json};

use crate::container_ports::{ContainerPortError, declared_ports};
use airlock_config::ports;

use crate::names::annotation;

/// The kubelet's probes, as the app containers declare them, and where the sidecar
/// serves them instead.
const PROBE_FIELDS: [(&str, &str); 3] = [
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];

/// What is wrong with a probe of the app's containers, at the field it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// The probed container's `containerPort` is no port number.
    #[error(transparent)]
    ContainerPort(#[from] ContainerPortError),
    /// The `httpGet.path` of the probe at `at` is no request target, even encoded.
    #[error("{at}.httpGet.path: not a path the sidecar can request")]
    Path {
        /// The probe's field path (`spec.containers[web].livenessProbe`).
        at: String,
    },
    /// A header of the probe at `at` is no valid HTTP header.
    #[error("{at}.httpGet.httpHeaders: {name:?} is not a valid HTTP header")]
    Header {
        /// The probe's field path (`spec.containers[web].livenessProbe`).
        at: String,
        /// The header's name as the probe gives it.
        name: String,
    },
    /// The port of the probe at `at` is neither a number nor a named `containerPort`.
    #[error("{at}: the port is neither a port number nor a named containerPort")]
    Port {
        /// The probe's field path (`spec.containers[web].livenessProbe`).
        at: String,
    },
    /// A probe (`spec.<list>[<container>].<field>`) still points at the sidecar's
    /// `/app-health/<name>`, but the recorded originals hold none by that name.
    #[error(
        "spec.{list}[{container}].{field} points at the sidecar's /app-health/{name}, but {} \
         holds no original for it: put the app's own probe back",
        annotation::APP_PROBES
    )]
    NoOriginal {
        /// `initContainers` or `containers`.
        list: &'static str,
        /// The container's name.
        container: String,
        /// `livenessProbe`, `readinessProbe` or `startupProbe`.
        field: &'static str,
        /// The `/app-health/` name the probe points at (`<container>/<kind>`).
        name: String,
    },
}

/// A probe the sidecar runs for the kubelet (`GET /app-health/<name>` on 15020).
pub(crate) struct MovedProbe {
    /// `<container>/<liveness|readiness|startup>`.
    pub name: String,
    pub port: u16,
    /// `None`: a TCP probe.
    pub path: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout_seconds: u64,
}

/// Points the app containers' HTTP and TCP probes of captured ports at the sidecar,
/// which runs them over loopback: the kubelet's own plaintext would be refused by
/// capture. Returns the moved probes and their original handlers (by name), to restore
/// on re-injection. HTTPS, gRPC and exec probes, probes of another host and of ports that
/// capture leaves alone stay as they are.
pub(crate) fn move_probes(
    spec: &mut Map<String, Value>,
    excluded_ports: &[u16],
) -> Result<(Vec<MovedProbe>, Map<String, Value>), ProbeError> {
    let mut moved = Vec::new();
    let mut originals = Map::new();
    for (list, container_name, container) in probed_containers(spec) {
        let at = format!("spec.{list}[{container_name}]");
        let named_ports: Vec<(String, u64)> = declared_ports(container.get("ports"), &at)?
            .into_iter()
            .filter_map(|p| Some((p.name?.to_owned(), u64::from(p.number))))
            .collect();
        for (field, kind) in PROBE_FIELDS {
            let Some(probe) = container.get(field).and_then(Value::as_object) else {
                continue;
            };
            let at = format!("spec.{list}[{container_name}].{field}");
            let Some((port, path, headers)) = probe_target(probe, &named_ports, &at)? else {
                continue;
            };
            // Capture never redirects these ports, and a probe already moved is not
            // moved twice.
            if excluded_ports.contains(&port) || [ports::HEALTH, ports::MESH].contains(&port) {
                continue;
            }
            let name = format!("{container_name}/{kind}");
            let mut rewritten = probe.clone();
            rewritten.shift_remove("httpGet");
            rewritten.shift_remove("tcpSocket");
            rewritten.insert("httpGet".into(), sidecar_probe_handler(&name));
            moved.push(MovedProbe {
                name: name.clone(),
                port,
                path,
                headers,
                timeout_seconds: probe
                    .get("timeoutSeconds")
                    .and_then(Value::as_u64)
                    .unwrap_or(1),
            });
            let handler: Map<String, Value> = probe
                .iter()
                .filter(|(key, _)| matches!(key.as_str(), "httpGet" | "tcpSocket"))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            originals.insert(name, Value::Object(handler));
            container.insert(field.into(), Value::Object(rewritten));
        }
    }
    Ok((moved, originals))
}

/// The app containers and the app's own native sidecars (init containers that keep
/// running), the containers the kubelet probes: with the list each is in, and its name.
fn probed_containers(
    spec: &mut Map<String, Value>,
) -> impl Iterator<Item = (&'static str, String, &mut Map<String, Value>)> {
    let mut found = Vec::new();
    for (list, value) in spec.iter_mut() {
        let list = match list.as_str() {
            "containers" => "containers",
            "initContainers" => "initContainers",
            _ => continue,
        };
        for container in value.as_array_mut().into_iter().flatten() {
            let Some(container) = container.as_object_mut() else {
                continue;
            };
            let keeps_running =
                container.get("restartPolicy").and_then(Value::as_str) == Some("Always");
            if list == "containers" || keeps_running {
                let name = container
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned();
                found.push((list, name, container));
            }
        }
    }
    found.into_iter()
}

/// What the sidecar checks for a probe: the app's port, the path (none for TCP) and the
/// request headers.
type ProbeTarget = (u16, Option<String>, Vec<(String, String)>);

/// The target of an HTTP (plain) or TCP probe of the pod itself; `None` for probes the
/// sidecar leaves alone.
fn probe_target(
    probe: &Map<String, Value>,
    named_ports: &[(String, u64)],
    at: &str,
) -> Result<Option<ProbeTarget>, ProbeError> {
    if let Some(get) = probe.get("httpGet") {
        let scheme = get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        if !scheme.eq_ignore_ascii_case("HTTP") || has_host(get) {
            return Ok(None);
        }
        let path = probe_path(get.get("path").and_then(Value::as_str).unwrap_or("/"))
            .ok_or_else(|| ProbeError::Path { at: at.to_owned() })?;
        let mut headers = Vec::new();
        for header in get
            .get("httpHeaders")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = |key: &str| header.get(key).and_then(Value::as_str).unwrap_or_default();
            let (name, value) = (text("name"), text("value"));
            if http::HeaderName::try_from(name).is_err()
                || http::HeaderValue::try_from(value).is_err()
            {
                return Err(ProbeError::Header {
                    at: at.to_owned(),
                    name: name.to_owned(),
                });
            }
            headers.push((name.to_owned(), value.to_owned()));
        }
        return Ok(Some((
            probe_port(get, named_ports, at)?,
            Some(path),
            headers,
        )));
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        if has_host(tcp) {
            return Ok(None);
        }
        return Ok(Some((probe_port(tcp, named_ports, at)?, None, Vec::new())));
    }
    Ok(None)
}

/// A probe path as the kubelet requests it: with a leading `/`, and with the bytes a URL
/// path cannot hold percent-encoded. `None` when even that is no valid request target.
fn probe_path(path: &str) -> Option<String> {
    let mut encoded = String::from(if path.starts_with('/') { "" } else { "/" });
    for byte in path.bytes() {
        let kept = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&byte);
        if kept {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
        .parse::<http::uri::PathAndQuery>()
        .is_ok()
        .then_some(encoded)
}

/// The handler of a probe moved to the sidecar.
fn sidecar_probe_handler(name: &str) -> Value {
    json!({"path": format!("/app-health/{name}"), "port": ports::HEALTH})
}

fn has_host(handler: &Value) -> bool {
    handler
        .get("host")
        .and_then(Value::as_str)
        .is_some_and(|host| !host.is_empty())
}

/// A probe's port: a number, or the name of one of the container's ports.
fn probe_port(handler: &Value, named_ports: &[(String, u64)], at: &str) -> Result<u16, ProbeError> {
    let number = match handler.get("port") {
        Some(Value::Number(number)) => number.as_u64(),
        Some(Value::String(name)) => named_ports
            .iter()
            .find(|(port_name, _)| port_name == name)
            .map(|(_, number)| *number),
        _ => None,
    };
    number
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| ProbeError::Port { at: at.to_owned() })
}

/// Puts the app's own handler back into every probe that still points at the sidecar
/// (found by the name in its path, so a renamed container keeps its probes). Timings,
/// and probes the user replaced since, stay as they are now.
pub(crate) fn restore_probes(
    spec: &mut Map<String, Value>,
    originals: &Map<String, Value>,
) -> Result<(), ProbeError> {
    for (list, container_name, container) in probed_containers(spec) {
        for (field, _) in PROBE_FIELDS {
            let Some(probe) = container.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(name) = probe
                .get("httpGet")
                .and_then(|get| get.get("path"))
                .and_then(Value::as_str)
                .and_then(|path| path.strip_prefix("/app-health/"))
                .map(str::to_owned)
                .filter(|name| probe.get("httpGet") == Some(&sidecar_probe_handler(name)))
            else {
                continue;
            };
            let handler: Vec<(String, Value)> = originals
                .get(&name)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter(|(key, _)| matches!(key.as_str(), "httpGet" | "tcpSocket"))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            if handler.is_empty() {
                return Err(ProbeError::NoOriginal {
                    list,
                    container: container_name,
                    field,
                    name,
                });
            }
            probe.shift_remove("httpGet");
            probe.extend(handler);
        }
    }
    Ok(())
}
