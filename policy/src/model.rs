//! The policy documents, as written in YAML. Every value is validated while it is read,
//! so a bad SPIFFE ID, CIDR, port, time or key is reported at its own line and column.

use std::fmt;

use airlock_identity::SpiffeId;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};

use crate::matcher::StringMatch;
pub use crate::values::*;
use crate::values::{is_header_name, parse_ip_block, parse_port_text};

/// A list field that, when present, must hold values: YAML turns a blank value (e.g. a
/// list whose items were all commented out) into an empty list, which would silently
/// mean "no constraint".
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    match Option::<Vec<T>>::deserialize(d)? {
        Some(items) if !items.is_empty() => Ok(items),
        _ => Err(de::Error::custom(
            "is empty; give it values or remove the field (an empty list would place no constraint)",
        )),
    }
}

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

/// `metadata`: the policy's name, which with its namespace forms its [`PolicyId`]
/// (`namespace/name`) in reasons, logs and metrics.
///
/// [`PolicyId`]: crate::set::PolicyId
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// `name`: unique within its namespace across every loaded file (a duplicate is a
    /// load error).
    pub name: DnsName,
    /// `namespace`, default `default`. It only names the policy; which workloads the
    /// policy applies to is up to [`PolicySpec::selector`].
    #[serde(default = "default_namespace")]
    pub namespace: DnsName,
    /// What the API server adds to an object (`kubectl get -o yaml` prints it): read and
    /// ignored, so that the custom resource's form loads as the file form does. Any other
    /// field is still an error.
    #[serde(default, rename = "uid")]
    _uid: Option<Ignored>,
    #[serde(default, rename = "resourceVersion")]
    _resource_version: Option<Ignored>,
    #[serde(default, rename = "generation")]
    _generation: Option<Ignored>,
    #[serde(default, rename = "generateName")]
    _generate_name: Option<Ignored>,
    #[serde(default, rename = "selfLink")]
    _self_link: Option<Ignored>,
    #[serde(default, rename = "creationTimestamp")]
    _creation_timestamp: Option<Ignored>,
    #[serde(default, rename = "deletionTimestamp")]
    _deletion_timestamp: Option<Ignored>,
    #[serde(default, rename = "deletionGracePeriodSeconds")]
    _deletion_grace_period: Option<Ignored>,
    #[serde(default, rename = "managedFields")]
    _managed_fields: Option<Ignored>,
    #[serde(default, rename = "labels")]
    _labels: Option<Ignored>,
    #[serde(default, rename = "annotations")]
    _annotations: Option<Ignored>,
    #[serde(default, rename = "finalizers")]
    _finalizers: Option<Ignored>,
    #[serde(default, rename = "ownerReferences")]
    _owner_references: Option<Ignored>,
}

/// A field that is read and thrown away (what the API server adds to an object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(d).map(|_| Self)
    }
}

fn default_namespace() -> DnsName {
    DnsName("default".into())
}

/// `kind: AuthorizationPolicy`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// `apiVersion`; only [`API_VERSION`] is accepted.
    pub api_version: ApiVersion,
    /// `kind`; the loader reads a document as a policy only when this is
    /// `AuthorizationPolicy`.
    pub kind: String,
    /// `metadata`: name and namespace.
    pub metadata: Metadata,
    /// `spec`: what the policy selects, does and matches.
    pub spec: PolicySpec,
    /// `status`, as the controller writes it on the custom resource: ignored.
    #[serde(default, rename = "status")]
    _status: Option<Ignored>,
}

/// `spec` of an [`AuthorizationPolicy`]: the workloads it applies to, what it does when a
/// rule matches, and whether it is enforced.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// Absent: the whole mesh.
    #[serde(default)]
    pub selector: Selector,
    /// `action` (required): `ALLOW` or `DENY` when one of the rules matches.
    pub action: Action,
    /// `mode`, default `enforce`; `dry-run` policies are only reported.
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
    /// `identities`: the target workload's SPIFFE ID is one of these.
    #[serde(default, deserialize_with = "list")]
    pub identities: Vec<SpiffeId>,
    /// `notIdentities`: the target workload's SPIFFE ID is none of these.
    #[serde(default, deserialize_with = "list")]
    pub not_identities: Vec<SpiffeId>,
    /// `namespaces`: the namespace in the target's SPIFFE ID (`/ns/<namespace>/…`)
    /// matches one of these names or patterns; an ID without one never does.
    #[serde(default, deserialize_with = "list")]
    pub namespaces: Vec<Namespace>,
    /// `notNamespaces`: the target's namespace matches none of these.
    #[serde(default, deserialize_with = "list")]
    pub not_namespaces: Vec<Namespace>,
}

/// `action`: what a policy does to a request one of its rules matches. An enforced DENY
/// wins over any ALLOW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Action {
    /// `ALLOW`: a matching rule allows the request (unless a DENY matches too). Once an
    /// enforced ALLOW policy selects a workload, requests no ALLOW rule matches are denied.
    #[serde(rename = "ALLOW")]
    Allow,
    /// `DENY`: a matching rule denies the request, whatever else matches.
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

/// `mode`: whether a policy takes part in decisions or is only evaluated alongside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Mode {
    /// `enforce` (the default): the policy decides requests.
    #[default]
    #[serde(rename = "enforce")]
    Enforce,
    /// `dry-run`: the policy is evaluated and reported as "would allow/deny" in
    /// [`Decision::dry_run`](crate::Decision::dry_run), never enforced; a way to try a
    /// policy on live traffic before enforcing it.
    #[serde(rename = "dry-run")]
    DryRun,
}

/// One rule: `from`, `to` and `when` are AND'd; the entries of `from` and of `to` are OR'd,
/// and every `when` condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Option<RawRule>")]
pub struct Rule {
    /// `from`: who may be calling; any one entry matching suffices. Empty (absent): any
    /// caller, authenticated or not.
    pub from: Vec<FromEntry>,
    /// `to`: what is being called; any one entry matching suffices. Empty (absent): any
    /// port, method, path and host.
    pub to: Vec<To>,
    /// `when`: extra conditions, every one of which must hold. Empty (absent): none.
    pub when: Vec<Condition>,
    /// Unix seconds; the rule does not match before it.
    pub not_before: Option<i64>,
    /// Unix seconds; the rule does not match from then on.
    pub expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    #[serde(default, deserialize_with = "list")]
    from: Vec<FromEntry>,
    #[serde(default, deserialize_with = "list")]
    to: Vec<To>,
    #[serde(default, deserialize_with = "list")]
    when: Vec<Condition>,
    #[serde(default)]
    not_before: Option<Timestamp>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
}

impl TryFrom<Option<RawRule>> for Rule {
    type Error = String;
    fn try_from(raw: Option<RawRule>) -> Result<Self, String> {
        let raw = raw.ok_or("a blank rule; write {} to match everything")?;
        if let Some(index) = raw.from.iter().position(|f| f.source == Source::default()) {
            return Err(format!(
                "from[{index}].source sets no field; remove the entry to place no constraint"
            ));
        }
        if let Some(index) = raw
            .to
            .iter()
            .position(|t| t.operation == Operation::default())
        {
            return Err(format!(
                "to[{index}].operation sets no field; remove the entry to place no constraint"
            ));
        }
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

/// One entry of a rule's `from` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromEntry {
    /// `source`: the caller's attributes; it must set at least one field.
    pub source: Source,
}

/// Who is calling. Identity fields: principals, namespaces (and their `not` forms).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// `principals`: the peer's verified SPIFFE ID matches one of these. Never matches
    /// a plaintext peer in an ALLOW rule.
    #[serde(default, deserialize_with = "list")]
    pub principals: Vec<Principal>,
    /// `notPrincipals`: the peer's SPIFFE ID matches none of these. In a DENY rule a
    /// plaintext peer matches it (fail closed); in an ALLOW rule it does not.
    #[serde(default, deserialize_with = "list")]
    pub not_principals: Vec<Principal>,
    /// `namespaces`: the namespace in the peer's SPIFFE ID matches one of these.
    #[serde(default, deserialize_with = "list")]
    pub namespaces: Vec<Namespace>,
    /// `notNamespaces`: the peer's namespace matches none of these (a plaintext peer, in
    /// DENY rules only).
    #[serde(default, deserialize_with = "list")]
    pub not_namespaces: Vec<Namespace>,
    /// `ipBlocks`: the peer's address lies in one of these (IPv4-mapped IPv6 addresses
    /// count as IPv4).
    #[serde(default, deserialize_with = "list")]
    pub ip_blocks: Vec<IpBlock>,
    /// `notIpBlocks`: the peer's address lies in none of these.
    #[serde(default, deserialize_with = "list")]
    pub not_ip_blocks: Vec<IpBlock>,
}

/// One entry of a rule's `to` list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// `operation`: the called port and HTTP attributes; it must set at least one field.
    pub operation: Operation,
}

/// What is being called. Methods, paths and hosts exist only for HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// `ports`: the destination port is one of these.
    #[serde(default, deserialize_with = "list")]
    pub ports: Vec<Port>,
    /// `notPorts`: the destination port is none of these.
    #[serde(default, deserialize_with = "list")]
    pub not_ports: Vec<Port>,
    /// `methods`: the request method is one of these (exactly in ALLOW rules, in any
    /// case in DENY rules; see [`Method`]).
    #[serde(default, deserialize_with = "list")]
    pub methods: Vec<Method>,
    /// `notMethods`: the request method is none of these, compared exactly.
    #[serde(default, deserialize_with = "list")]
    pub not_methods: Vec<Method>,
    /// `paths`: the normalized path matches one of these. In DENY rules a path with a
    /// trailing slash also matches as written without it.
    #[serde(default, deserialize_with = "list")]
    pub paths: Vec<PathPattern>,
    /// `notPaths`: the normalized path matches none of these.
    #[serde(default, deserialize_with = "list")]
    pub not_paths: Vec<PathPattern>,
    /// `hosts`: the request's host (lower-case, without port) matches one of these.
    #[serde(default, deserialize_with = "list")]
    pub hosts: Vec<HostPattern>,
    /// `notHosts`: the request's host matches none of these.
    #[serde(default, deserialize_with = "list")]
    pub not_hosts: Vec<HostPattern>,
}

impl Operation {
    /// Whether any HTTP-only field (methods, paths, hosts or their `not` forms) is set;
    /// such an operation can never be satisfied on a TCP port.
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
        /// The header name inside the brackets, lower-cased; it compares
        /// case-insensitively and with `_` the same as `-`.
        name: String,
        /// `values`: the header's value matches one of these; an absent header matches
        /// none.
        values: Vec<StringMatch>,
        /// `notValues`: the header's value matches none of these; an absent header
        /// satisfies this.
        not_values: Vec<StringMatch>,
    },
    /// `source.ip`, values are CIDRs.
    SourceIp {
        /// `values`: the peer's address lies in one of these networks.
        values: Vec<IpNet>,
        /// `notValues`: the peer's address lies in none of these networks.
        not_values: Vec<IpNet>,
    },
    /// `source.principal` (an identity field).
    SourcePrincipal {
        /// `values`: the peer's SPIFFE ID matches one of these.
        values: Vec<Principal>,
        /// `notValues`: the peer's SPIFFE ID matches none of these.
        not_values: Vec<Principal>,
    },
    /// `source.namespace` (an identity field).
    SourceNamespace {
        /// `values`: the namespace in the peer's SPIFFE ID matches one of these.
        values: Vec<Namespace>,
        /// `notValues`: the peer's namespace matches none of these.
        not_values: Vec<Namespace>,
    },
    /// `destination.port`.
    DestinationPort {
        /// `values`: the destination port is one of these (1–65535).
        values: Vec<u16>,
        /// `notValues`: the destination port is none of these.
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
            if !is_header_name(name) {
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
