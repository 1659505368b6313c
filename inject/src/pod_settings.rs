//! The pod's `airlock.dev/*` annotations, read and checked once, and the app ports they
//! put behind the sidecar.

use std::collections::BTreeSet;

use airlock_config::{PortProtocol, ports};
use airlock_policy::DefaultMode;
use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use crate::container_ports::{ContainerPortError, declared_ports};
use crate::fields::{list_text, name_of};
use crate::names::annotation;
use crate::port_protocol::protocol_of_port;

/// What is wrong with the pod's `airlock.dev/*` annotations, or with the app ports they
/// put behind the sidecar. Each message starts with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// The annotation `key` holds something other than a string.
    #[error("metadata.annotations.{key}: annotation values are strings (quote it)")]
    NotAString {
        /// The annotation's key (`airlock.dev/...`, or `kubernetes.io/config.mirror`).
        key: &'static str,
    },
    /// `airlock.dev/inject` is neither `true` nor `false`.
    #[error(
        "metadata.annotations.{}: {value:?} is neither \"true\" nor \"false\"",
        annotation::INJECT
    )]
    Inject {
        /// The annotation's value, trimmed.
        value: String,
    },
    /// `airlock.dev/mode` is neither `strict` nor `permissive`.
    #[error(
        "metadata.annotations.{}: {value:?} is neither \"strict\" nor \"permissive\"",
        annotation::MODE
    )]
    Mode {
        /// The annotation's value, trimmed.
        value: String,
    },
    /// `airlock.dev/default-policy` names no default mode; `reason` is the policy crate's.
    #[error("metadata.annotations.{}: {reason}", annotation::DEFAULT_POLICY)]
    DefaultPolicy {
        /// Why the value is no default mode.
        reason: String,
    },
    /// An item of the port list in annotation `key` is no port number.
    #[error("metadata.annotations.{key}: {item:?} is not a port number")]
    NotAPort {
        /// The annotation's key (`airlock.dev/...`).
        key: &'static str,
        /// The offending port, trimmed: the whole item, or the part before `/`
        /// (`airlock.dev/inbound-ports`) or after `:` (`airlock.dev/egress`).
        item: String,
    },
    /// An item of the inbound-ports annotation `key` names a protocol other than `auto`,
    /// `http` or `tcp`.
    #[error(
        "metadata.annotations.{key}: protocol {protocol:?} of {item:?} is not auto, http or tcp"
    )]
    Protocol {
        /// The annotation's key (`airlock.dev/...`).
        key: &'static str,
        /// What follows the `/` of the item, trimmed.
        protocol: String,
        /// The whole item (`8080/grpc`).
        item: String,
    },
    /// An item of `airlock.dev/exclude-outbound-cidrs` is no IPv4 CIDR.
    #[error(
        "metadata.annotations.{}: {item:?} is not an IPv4 CIDR",
        annotation::EXCLUDE_OUTBOUND_CIDRS
    )]
    NotACidr {
        /// The offending item, trimmed.
        item: String,
    },
    /// An item of `airlock.dev/exclude-outbound-cidrs` is wider than a /8.
    #[error(
        "metadata.annotations.{}: {item} is wider than a /8 and would exempt too much from \
         capture",
        annotation::EXCLUDE_OUTBOUND_CIDRS
    )]
    CidrTooWide {
        /// The offending CIDR, trimmed (`0.0.0.0/0`).
        item: String,
    },
    /// An item of `airlock.dev/egress` is neither `CIDR` nor `CIDR:PORT` (IPv4).
    #[error(
        "metadata.annotations.{}: {item:?} is not IPV4-CIDR or IPV4-CIDR:PORT",
        annotation::EGRESS
    )]
    Egress {
        /// The offending item, trimmed.
        item: String,
    },
    /// An app port (from `field`: the annotation or the containers' ports) is one of the
    /// sidecar's own.
    #[error(
        "{field}: app port {port} is one the sidecar listens on ({})",
        list_text(&ports::ALL)
    )]
    SidecarPort {
        /// `metadata.annotations.airlock.dev/inbound-ports` or `spec.containers.ports`.
        field: String,
        /// The app port: 15000, 15001, 15006, 15008 or 15020.
        port: u16,
    },
    /// An app container's `containerPort` is no port number.
    #[error(transparent)]
    ContainerPort(#[from] ContainerPortError),
}

/// The pod's annotations, read and checked once.
pub(crate) struct PodSettings {
    pub(crate) inject: bool,
    pub(crate) mirror: bool,
    pub(crate) permissive: bool,
    pub(crate) default_policy: DefaultMode,
    pub(crate) declared_ports: Option<Vec<(u16, PortProtocol)>>,
    pub(crate) exclude_inbound_ports: Vec<u16>,
    pub(crate) exclude_outbound_ports: Vec<u16>,
    pub(crate) exclude_outbound_cidrs: Vec<Ipv4Net>,
    pub(crate) egress: Vec<(Ipv4Net, Option<u16>)>,
}

impl PodSettings {
    /// Reads the annotations of `metadata`; the mode and default policy fall back to the
    /// injector's (`permissive`, `default_policy`).
    pub(crate) fn read(
        metadata: Option<&Value>,
        permissive: bool,
        default_policy: DefaultMode,
    ) -> Result<Self, SettingsError> {
        let annotations = metadata.and_then(|m| m.get("annotations"));
        let get = |key: &'static str| -> Result<Option<&str>, SettingsError> {
            match annotations.and_then(|a| a.get(key)) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.trim())),
                Some(_) => Err(SettingsError::NotAString { key }),
            }
        };
        let inject = match get(annotation::INJECT)? {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(SettingsError::Inject {
                    value: other.to_owned(),
                });
            }
        };
        let permissive = match get(annotation::MODE)? {
            None => permissive,
            Some("strict") => false,
            Some("permissive") => true,
            Some(other) => {
                return Err(SettingsError::Mode {
                    value: other.to_owned(),
                });
            }
        };
        let default_policy = match get(annotation::DEFAULT_POLICY)? {
            None => default_policy,
            Some(text) => text
                .parse()
                .map_err(|reason| SettingsError::DefaultPolicy { reason })?,
        };
        let declared_ports = get(annotation::INBOUND_PORTS)?
            .map(|text| {
                split_list(text)
                    .map(|item| parse_port_protocol(item, annotation::INBOUND_PORTS))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let ports = |key: &'static str| -> Result<Vec<u16>, SettingsError> {
            get(key)?
                .map(split_list)
                .into_iter()
                .flatten()
                .map(|item| parse_port(item, key))
                .collect()
        };
        let exclude_outbound_cidrs = get(annotation::EXCLUDE_OUTBOUND_CIDRS)?
            .map(split_list)
            .into_iter()
            .flatten()
            .map(|item| match item.parse::<Ipv4Net>() {
                Err(_) => Err(SettingsError::NotACidr {
                    item: item.to_owned(),
                }),
                // The same rule as `airlock init-capture`, so that an admitted pod does not
                // fail in its init container.
                Ok(cidr) if cidr.prefix_len() < 8 => Err(SettingsError::CidrTooWide {
                    item: item.to_owned(),
                }),
                Ok(cidr) => Ok(cidr),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let egress = get(annotation::EGRESS)?
            .map(split_list)
            .into_iter()
            .flatten()
            .map(parse_egress)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            inject,
            mirror: get(annotation::MIRROR)?.is_some(),
            permissive,
            default_policy,
            declared_ports,
            exclude_inbound_ports: ports(annotation::EXCLUDE_INBOUND_PORTS)?,
            exclude_outbound_ports: ports(annotation::EXCLUDE_OUTBOUND_PORTS)?,
            exclude_outbound_cidrs,
            egress,
        })
    }

    /// The app ports behind the sidecar: declared by annotation, or every TCP
    /// `containerPort` of the app containers; excluded ports left out.
    pub(crate) fn inbound_ports(
        &self,
        spec: &Map<String, Value>,
    ) -> Result<Vec<(u16, PortProtocol)>, SettingsError> {
        let (ports, source) = match &self.declared_ports {
            Some(declared) => (
                declared.clone(),
                format!("metadata.annotations.{}", annotation::INBOUND_PORTS),
            ),
            None => (
                container_ports(spec)?
                    .into_iter()
                    .map(|(port, name)| (port, protocol_of_port(None, name)))
                    .collect(),
                "spec.containers.ports".to_owned(),
            ),
        };
        let mut seen = BTreeSet::new();
        let mut chosen = Vec::new();
        for (port, protocol) in ports {
            if ports::ALL.contains(&port) {
                return Err(SettingsError::SidecarPort {
                    field: source,
                    port,
                });
            }
            if !self.exclude_inbound_ports.contains(&port) && seen.insert(port) {
                chosen.push((port, protocol));
            }
        }
        Ok(chosen)
    }
}

/// Every TCP `containerPort` of the app containers, with its name.
fn container_ports(
    spec: &Map<String, Value>,
) -> Result<Vec<(u16, Option<&str>)>, ContainerPortError> {
    let mut ports = Vec::new();
    for container in spec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let at = format!("spec.containers[{}]", name_of(container).unwrap_or("?"));
        let declared = declared_ports(container.get("ports"), &at)?;
        ports.extend(
            declared
                .into_iter()
                .filter(|port| port.protocol == "TCP")
                .map(|port| (port.number, port.name)),
        );
    }
    Ok(ports)
}

fn split_list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

fn parse_port(item: &str, key: &'static str) -> Result<u16, SettingsError> {
    item.parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| SettingsError::NotAPort {
            key,
            item: item.to_owned(),
        })
}

/// `CIDR` or `CIDR:PORT`, IPv4 only: capture resets the pod's IPv6 TCP before it could
/// reach the sidecar, so an IPv6 rule could never apply.
fn parse_egress(item: &str) -> Result<(Ipv4Net, Option<u16>), SettingsError> {
    let (cidr, port) = match item.split_once(':') {
        Some((cidr, port)) => (cidr, Some(port)),
        None => (item, None),
    };
    let cidr = cidr.parse::<Ipv4Net>().map_err(|_| SettingsError::Egress {
        item: item.to_owned(),
    })?;
    let port = port
        .map(|p| parse_port(p, annotation::EGRESS))
        .transpose()?;
    Ok((cidr, port))
}

fn parse_port_protocol(
    item: &str,
    key: &'static str,
) -> Result<(u16, PortProtocol), SettingsError> {
    let (port, protocol) = item.split_once('/').unwrap_or((item, "auto"));
    let protocol = match protocol.trim() {
        "auto" => PortProtocol::Auto,
        "http" => PortProtocol::Http,
        "tcp" => PortProtocol::Tcp,
        other => {
            return Err(SettingsError::Protocol {
                key,
                protocol: other.to_owned(),
                item: item.to_owned(),
            });
        }
    };
    Ok((parse_port(port.trim(), key)?, protocol))
}
