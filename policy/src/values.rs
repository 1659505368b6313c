//! The scalar values of policy documents (principals, namespaces, CIDRs, ports, methods,
//! path and host patterns, times, object names), each validated by its own parser while
//! the YAML is read, so an error points at the scalar's line and column.

use std::fmt;
use std::net::IpAddr;

use airlock_identity::SpiffeId;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::{PathOptions, check_method, normalize_path};
use crate::matcher::StringMatch;

/// Deserializes a string through a validating parser. The check runs inside the visitor,
/// so serde_norway reports a failure at the scalar's own line and column (not at the
/// enclosing list's).
macro_rules! string_newtype {
    ($ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Parse;
                impl de::Visitor<'_> for Parse {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, text: &str) -> Result<$ty, E> {
                        <$ty>::parse(text).map_err(E::custom)
                    }
                }
                d.deserialize_str(Parse)
            }
        }
    };
}

/// A Kubernetes-style object name: lower-case letters, digits, `-` and `.`, starting and
/// ending with a letter or digit, at most 253 bytes (so `namespace/name` is unambiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsName(pub String);

impl DnsName {
    /// Checks `text` against the rules above; the error message says what they are.
    pub fn parse(text: &str) -> Result<Self, String> {
        let edge_ok =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let valid = text.len() <= 253
            && edge_ok(text.chars().next())
            && edge_ok(text.chars().last())
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!(
                "{text:?} is not a valid name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
            ))
        }
    }
}
string_newtype!(DnsName, "a lower-case name");

/// A principal: a full SPIFFE ID, `*` (any authenticated peer), or
/// `spiffe://<trust-domain>/<path-prefix>*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A full SPIFFE ID, matched exactly.
    Exact(SpiffeId),
    /// `spiffe://<trust-domain>/<path-prefix>*`, stored without the `*`; the prefix
    /// always ends in `/`, so it matches whole path segments only.
    Prefix(String),
    /// `*`: any authenticated peer (never a plaintext one).
    Any,
}

impl Principal {
    /// Reads `*`, a prefix pattern or a full SPIFFE ID. A prefix that does not end in `/`
    /// or is not the start of a valid SPIFFE ID is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        if let Some(prefix) = text.strip_suffix('*') {
            // Prefixes end at a path boundary: `spiffe://td/ns/shop*` would also match
            // `ns/shopping`, which nobody means.
            let valid = prefix.starts_with("spiffe://")
                && prefix.ends_with('/')
                && !prefix.contains('*')
                && SpiffeId::parse(&format!("{prefix}x")).is_ok();
            if !valid {
                return Err(format!(
                    "principal {text:?}: a prefix must be the start of a valid SPIFFE ID ending in '/', e.g. spiffe://td/ns/shop/*"
                ));
            }
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        SpiffeId::parse(text)
            .map(Self::Exact)
            .map_err(|e| format!("principal {text:?} is not a valid SPIFFE ID: {e}"))
    }

    /// Whether the verified peer identity `id` is one this principal names.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(expected) => expected == id,
            Self::Prefix(prefix) => id.as_str().starts_with(prefix.as_str()),
            Self::Any => true,
        }
    }
}
string_newtype!(Principal, "a SPIFFE ID, \"*\" or \"spiffe://td/path/*\"");

/// A namespace name or pattern (`pay`, `team-*`, `*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(pub StringMatch);

impl Namespace {
    /// Reads a name or pattern (see [`StringMatch::parse`]) whose literal part holds only
    /// `a-z`, `0-9` and `-`.
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
string_newtype!(Namespace, "a namespace name or pattern");

/// A CIDR (`10.0.0.0/8`) or a single address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock(pub IpNet);

impl IpBlock {
    /// Reads a CIDR or a single address (as a /32 or /128). A CIDR with host bits set
    /// (`10.0.0.1/8`) is an error, since it most likely is a typo.
    pub fn parse(text: &str) -> Result<Self, String> {
        parse_ip_block(text).map(Self)
    }
}
string_newtype!(IpBlock, "an IP address or CIDR");

pub(crate) fn parse_ip_block(text: &str) -> Result<IpNet, String> {
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
        struct Number;
        impl de::Visitor<'_> for Number {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Port, E> {
                u16::try_from(value)
                    .ok()
                    .filter(|p| *p != 0)
                    .map(Port)
                    .ok_or_else(|| E::custom(format!("port {value} is outside 1-65535")))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Port, E> {
                self.visit_i64(i64::try_from(value).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_i64(Number)
    }
}

pub(crate) fn parse_port_text(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {text:?} is outside 1-65535"))
}

/// An RFC 9110 field name: one or more token characters.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// An HTTP method, matched exactly in ALLOW rules (methods are case-sensitive) and in any
/// case in DENY rules, since some servers route `propfind` as `PROPFIND`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Method(pub String);

impl Method {
    /// Reads a method token; a non-canonical spelling of a standard method (`Get`) is an
    /// error, as the proxy refuses such requests anyway.
    pub fn parse(text: &str) -> Result<Self, String> {
        check_method(text).map_err(|e| e.to_string())?;
        Ok(Self(text.to_owned()))
    }
}
string_newtype!(Method, "an HTTP method");

/// A path pattern; its literal part must already be in normalized form, so that a
/// pattern can never name a path that no normalized request has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern(pub StringMatch);

impl PathPattern {
    /// Reads a pattern (see [`StringMatch::parse`]). An exact or prefix pattern whose
    /// literal is not already normalized (e.g. `/a//b`, `/a/../b`, with a query) is an
    /// error; encoded slashes are allowed.
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
string_newtype!(PathPattern, "a path pattern");

/// A host pattern, matched case-insensitively (stored lower-case, without port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(pub StringMatch);

impl HostPattern {
    /// Hosts are matched lower-case, without port or trailing dot (as requests are).
    pub fn parse(text: &str) -> Result<Self, String> {
        let pattern =
            StringMatch::parse(text)?.map_literal(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let literal = pattern.literal();
        if literal.contains(':') && literal.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("host {text:?}: hosts are matched without a port"));
        }
        Ok(Self(pattern))
    }
}
string_newtype!(HostPattern, "a host pattern");

/// An RFC 3339 time, kept as Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Reads an RFC 3339 time such as `2026-12-24T00:00:00Z`.
    pub fn parse(text: &str) -> Result<Self, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(|t| Self(t.unix_timestamp()))
            .map_err(|e| {
                format!("{text:?} is not an RFC 3339 time ({e}), e.g. 2026-12-24T00:00:00Z")
            })
    }
}

string_newtype!(Timestamp, "an RFC 3339 time");
