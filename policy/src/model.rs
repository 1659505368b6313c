//! The policy documents, as written in YAML. Every value is validated while it is read,
//! so a bad SPIFFE ID, CIDR, port, time or key is reported at its own line and column.

use std::fmt;
use std::net::IpAddr;

use airlock_identity::SpiffeId;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::{PathOptions, check_method, normalize_path};
use crate::matcher::StringMatch;

/// The one API version this build reads.
pub const API_VERSION: &str = "airlock.dev/v1alpha1";

/// `apiVersion`, which must be [`API_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersion;

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == API_VERSION {
            Ok(Self)
        } else {
            Err(de::Error::custom(format!(
                "unsupported apiVersion {text:?}; expected {API_VERSION:?}"
            )))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "default".into()
}

/// `kind: AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    pub api_version: ApiVersion,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Absent: the whole mesh.
    #[serde(default)]
    pub selector: Selector,
    pub action: Action,
    #[serde(default)]
    pub mode: Mode,
    /// Absent: the policy matches nothing. `[{}]`: it matches everything.
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
}

/// Which workloads a policy applies to. Fields are AND'd; an empty field places no
/// constraint; no field at all selects every workload of the mesh.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub identities: Vec<SpiffeId>,
    #[serde(default)]
    pub not_identities: Vec<SpiffeId>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub not_namespaces: Vec<Namespace>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Action {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Mode {
    #[default]
    #[serde(rename = "enforce")]
    Enforce,
    #[serde(rename = "dry-run")]
    DryRun,
}

/// One rule: `from`, `to` and `when` are AND'd; entries inside each are OR'd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRule")]
pub struct Rule {
    pub from: Vec<From>,
    pub to: Vec<To>,
    pub when: Vec<Condition>,
    /// Unix seconds; the rule does not match before it.
    pub not_before: Option<i64>,
    /// Unix seconds; the rule does not match from then on.
    pub expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    #[serde(default)]
    from: Vec<From>,
    #[serde(default)]
    to: Vec<To>,
    #[serde(default)]
    when: Vec<Condition>,
    #[serde(default)]
    not_before: Option<Timestamp>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

impl TryFrom<RawRule> for Rule {
    type Error = String;
    fn try_from(raw: RawRule) -> Result<Self, String> {
        if let (Some(start), Some(end)) = (&raw.not_before, &raw.expires_at)
            && start.0 >= end.0
        {
            return Err("notBefore must be earlier than expiresAt".into());
        }
        Ok(Self {
            from: raw.from,
            to: raw.to,
            when: raw.when,
            not_before: raw.not_before.map(|t| t.0),
            expires_at: raw.expires_at.map(|t| t.0),
        })
    }
}

impl Rule {
    /// Whether the rule holds any condition only an HTTP request can satisfy.
    pub fn has_http_conditions(&self) -> bool {
        self.to.iter().any(|t| t.operation.has_http_fields())
            || self
                .when
                .iter()
                .any(|c| matches!(c, Condition::Header { .. }))
    }

    /// Whether `now` lies inside the rule's time window.
    pub fn in_window(&self, now: i64) -> bool {
        self.not_before.is_none_or(|t| now >= t) && self.expires_at.is_none_or(|t| now < t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

/// Who is calling. Identity fields: principals, namespaces (and their `not` forms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<Principal>,
    #[serde(default)]
    pub not_principals: Vec<Principal>,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub not_namespaces: Vec<Namespace>,
    #[serde(default)]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(default)]
    pub not_ip_blocks: Vec<IpBlock>,
}

impl Source {
    pub fn has_identity_fields(&self) -> bool {
        !(self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

/// What is being called. Methods, paths and hosts exist only for HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub not_ports: Vec<Port>,
    #[serde(default)]
    pub methods: Vec<Method>,
    #[serde(default)]
    pub not_methods: Vec<Method>,
    #[serde(default)]
    pub paths: Vec<PathPattern>,
    #[serde(default)]
    pub not_paths: Vec<PathPattern>,
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    #[serde(default)]
    pub not_hosts: Vec<HostPattern>,
}

impl Operation {
    pub fn has_http_fields(&self) -> bool {
        !(self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.hosts.is_empty()
            && self.not_hosts.is_empty())
    }
}

/// A `when` condition, typed by its key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCondition")]
pub enum Condition {
    /// `request.headers[name]` (HTTP only; repeated headers match comma-joined).
    Header {
        name: String,
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
    /// `source.ip`, values are CIDRs.
    SourceIp {
        values: Vec<IpNet>,
        not_values: Vec<IpNet>,
    },
    /// `source.principal` (an identity field).
    SourcePrincipal {
        values: Vec<Principal>,
        not_values: Vec<Principal>,
    },
    /// `source.namespace` (an identity field).
    SourceNamespace {
        values: Vec<Namespace>,
        not_values: Vec<Namespace>,
    },
    /// `destination.port`.
    DestinationPort {
        values: Vec<u16>,
        not_values: Vec<u16>,
    },
}

/// The keys `when` understands.
pub const CONDITION_KEYS: &str =
    "request.headers[<name>], source.ip, source.principal, source.namespace, destination.port";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCondition {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

impl TryFrom<RawCondition> for Condition {
    type Error = String;
    fn try_from(raw: RawCondition) -> Result<Self, String> {
        if raw.values.is_empty() && raw.not_values.is_empty() {
            return Err(format!("when key {:?} needs values or notValues", raw.key));
        }
        fn all<T>(
            items: &[String],
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Vec<T>, String> {
            items.iter().map(|s| parse(s)).collect()
        }
        let key = raw.key.as_str();
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|k| k.strip_suffix(']'))
        {
            if name.is_empty() || check_method(name).is_err() {
                return Err(format!("{key:?}: {name:?} is not a valid header name"));
            }
            return Ok(Self::Header {
                name: name.to_ascii_lowercase(),
                values: all(&raw.values, StringMatch::parse)?,
                not_values: all(&raw.not_values, StringMatch::parse)?,
            });
        }
        Ok(match key {
            "source.ip" => Self::SourceIp {
                values: all(&raw.values, parse_ip_block)?,
                not_values: all(&raw.not_values, parse_ip_block)?,
            },
            "source.principal" => Self::SourcePrincipal {
                values: all(&raw.values, Principal::parse)?,
                not_values: all(&raw.not_values, Principal::parse)?,
            },
            "source.namespace" => Self::SourceNamespace {
                values: all(&raw.values, Namespace::parse)?,
                not_values: all(&raw.not_values, Namespace::parse)?,
            },
            "destination.port" => Self::DestinationPort {
                values: all(&raw.values, parse_port_text)?,
                not_values: all(&raw.not_values, parse_port_text)?,
            },
            other => {
                return Err(format!(
                    "unknown when key {other:?}; known keys: {CONDITION_KEYS}"
                ));
            }
        })
    }
}

/// Deserializes a string through a validating parser, so errors carry the position.
macro_rules! string_newtype {
    ($ty:ty) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(de::Error::custom)
            }
        }
    };
}

/// A principal: a full SPIFFE ID, `*` (any authenticated peer), or
/// `spiffe://<trust-domain>/<path-prefix>*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Exact(SpiffeId),
    Prefix(String),
    Any,
}

impl Principal {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        if let Some(prefix) = text.strip_suffix('*') {
            // The prefix must itself be the start of a valid ID: check it with a filler.
            let probe = if prefix.ends_with('/') {
                format!("{prefix}x")
            } else {
                prefix.to_owned()
            };
            if !prefix.starts_with("spiffe://")
                || prefix.contains('*')
                || SpiffeId::parse(&probe).is_err()
            {
                return Err(format!(
                    "principal {text:?}: a prefix must be the start of a valid SPIFFE ID, e.g. spiffe://td/ns/shop/*"
                ));
            }
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        SpiffeId::parse(text)
            .map(Self::Exact)
            .map_err(|e| format!("principal {text:?} is not a valid SPIFFE ID: {e}"))
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(expected) => expected == id,
            Self::Prefix(prefix) => id.as_str().starts_with(prefix.as_str()),
            Self::Any => true,
        }
    }
}
string_newtype!(Principal);

/// A namespace name or pattern (`pay`, `team-*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(pub StringMatch);

impl Namespace {
    pub fn parse(text: &str) -> Result<Self, String> {
        let pattern = StringMatch::parse(text)?;
        let valid = pattern
            .literal()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(format!("namespace {text:?} may only hold a-z, 0-9 and '-'"));
        }
        Ok(Self(pattern))
    }
}
string_newtype!(Namespace);

/// A CIDR (`10.0.0.0/8`) or a single address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock(pub IpNet);

impl IpBlock {
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_ip_block(text).map(Self)
    }
}
string_newtype!(IpBlock);

fn parse_ip_block(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "CIDR {text:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

/// A TCP port, 1–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = i64::deserialize(d)?;
        u16::try_from(value)
            .ok()
            .filter(|p| *p != 0)
            .map(Self)
            .ok_or_else(|| de::Error::custom(format!("port {value} is outside 1-65535")))
    }
}

fn parse_port_text(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {text:?} is outside 1-65535"))
}

/// An HTTP method, matched exactly (methods are case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Method(pub String);

impl Method {
    pub fn parse(text: &str) -> Result<Self, String> {
        check_method(text).map_err(|e| e.to_string())?;
        Ok(Self(text.to_owned()))
    }
}
string_newtype!(Method);

/// A path pattern; its literal part must already be in normalized form, so that a
/// pattern can never name a path that no normalized request has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern(pub StringMatch);

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let pattern = StringMatch::parse(text)?;
        if let StringMatch::Exact(literal) | StringMatch::Prefix(literal) = &pattern {
            let normalized = normalize_path(
                literal,
                PathOptions {
                    allow_encoded_slashes: true,
                },
            )
            .map_err(|e| format!("path {text:?}: {e}"))?;
            if normalized.path != *literal || normalized.query.is_some() {
                return Err(format!(
                    "path {text:?} is not in normalized form (requests are matched after normalization, e.g. {:?})",
                    normalized.path
                ));
            }
        }
        Ok(Self(pattern))
    }
}
string_newtype!(PathPattern);

/// A host pattern, matched case-insensitively (stored lower-case, without port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(pub StringMatch);

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(Self(
            StringMatch::parse(text)?.map_literal(|s| s.to_ascii_lowercase()),
        ))
    }
}
string_newtype!(HostPattern);

/// An RFC 3339 time, kept as Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn parse(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Self(t.unix_timestamp()))
            .map_err(|e| {
                format!("{text:?} is not an RFC 3339 time ({e}), e.g. 2026-12-24T00:00:00Z")
            })
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML may hand a timestamp over as a plain string; accept only strings.
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}
