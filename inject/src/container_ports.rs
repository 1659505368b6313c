//! A container's `containerPort` entries, read in one place for every user: the safety
//! checks, the inbound ports and their protocols, and the probes that name a port.

use serde_json::Value;

/// One `containerPort` entry.
pub(crate) struct ContainerPort<'a> {
    pub number: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: &'a str,
    pub name: Option<&'a str>,
}

/// A `containerPort` that is no port number, in the container at `at`
/// (`spec.containers[web]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}.ports: containerPort is not a port number")]
pub struct ContainerPortError {
    /// The container's field path, named by the container (`spec.containers[web]`).
    pub at: String,
}

/// The entries of a container's `ports` (absent: none); one that is no port number is an
/// error naming the container at `at` (`spec.containers[web]`).
pub(crate) fn declared_ports<'a>(
    ports: Option<&'a Value>,
    at: &str,
) -> Result<Vec<ContainerPort<'a>>, ContainerPortError> {
    ports
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|entry| {
            let protocol = entry
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            entry
                .get("containerPort")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0)
                .map(|number| ContainerPort {
                    number,
                    protocol,
                    name: entry.get("name").and_then(Value::as_str),
                })
                .ok_or_else(|| ContainerPortError { at: at.to_owned() })
        })
        .collect()
}
