//! SPIFFE IDs and trust domains, parsed exactly as the SPIFFE-ID specification says.
//!
//! Identities are compared literally (byte for byte) everywhere in airlock; these types
//! guarantee that two equal strings name the same workload, because every accepted string
//! is already in its one canonical form (no case folding, no percent-encoding, no dot
//! segments).
//!
//! A [`SpiffeId`] always names a workload, so it always has a path: `spiffe://td` alone
//! names the trust domain, which is a [`TrustDomain`], never a leaf's identity
//! (X509-SVID §3.1 and §5.2). Making that a property of the type means no caller (the CA's
//! API, `ca issue`, join tokens, Kubernetes JWTs, the mesh verifiers, policy principals)
//! can forget the check.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SCHEME: &str = "spiffe://";
/// Upper bound of a whole SPIFFE ID, in bytes (SPIFFE-ID spec, section 2.3).
pub const MAX_ID_BYTES: usize = 2048;
/// Upper bound of a trust domain name, in bytes (SPIFFE-ID spec, section 2.1).
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Which rule of the SPIFFE-ID specification an input broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input does not start with `spiffe://` (the scheme is case-sensitive).
    #[error("a SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path (or the end).
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain exceeds [`MAX_TRUST_DOMAIN_BYTES`].
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")]
    TrustDomainTooLong,
    /// The trust domain holds this uppercase ASCII letter; trust domains are never case
    /// folded, so `Example.org` is refused rather than read as `example.org`.
    #[error("the trust domain must be lowercase (found {0:?})")]
    UppercaseTrustDomain(char),
    /// The authority has a `:` (a port, as in `spiffe://td:443/...`).
    #[error("a SPIFFE ID must not carry a port")]
    Port,
    /// The authority has an `@` (user info, as in `spiffe://user@td/...`).
    #[error("a SPIFFE ID must not carry user info")]
    UserInfo,
    /// The trust domain holds this character outside `a-z`, `0-9`, `.`, `-` and `_`.
    #[error("the trust domain may only hold a-z, 0-9, '.', '-' and '_' (found {0:?})")]
    TrustDomainChar(char),
    /// The input has a `?` (a URI query).
    #[error("a SPIFFE ID must not carry a query")]
    Query,
    /// The input has a `#` (a URI fragment).
    #[error("a SPIFFE ID must not carry a fragment")]
    Fragment,
    /// The input has a `%`: percent-encoding would give one ID two spellings.
    #[error("a SPIFFE ID must not be percent-encoded")]
    PercentEncoding,
    /// A path segment holds this character outside `a-z`, `A-Z`, `0-9`, `.`, `-` and `_`.
    #[error("path segments may only hold a-z, A-Z, 0-9, '.', '-' and '_' (found {0:?})")]
    PathChar(char),
    /// Two consecutive slashes in the path.
    #[error("the path has an empty segment (\"//\")")]
    EmptySegment,
    /// A path segment is exactly `.` or `..`.
    #[error("the path has a \".\" or \"..\" segment")]
    DotSegment,
    /// The path ends with `/` (including a path that is only `/`).
    #[error("the path must not end with \"/\"")]
    TrailingSlash,
    /// The whole input exceeds [`MAX_ID_BYTES`].
    #[error("a SPIFFE ID is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    /// The input is a valid trust domain URI (`spiffe://td`) but has no path, so it names
    /// the trust domain, not a workload.
    #[error(
        "a workload's SPIFFE ID must have a path (e.g. spiffe://td/ns/NS/sa/SA); spiffe://<trust-domain> alone names the trust domain"
    )]
    NoPath,
}

/// A SPIFFE trust domain such as `prod.example.com`: the authority part of every SPIFFE
/// ID it issues, and the name of one trust bundle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a SPIFFE ID without a path
    /// (`spiffe://example.org`).
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        let name = input.strip_prefix(SCHEME).unwrap_or(input);
        check_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The bare name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI that names the trust domain itself, `spiffe://<name>`: what a signing
    /// certificate carries. It is not a [`SpiffeId`], which always names a workload.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A validated workload SPIFFE ID, e.g. `spiffe://example.org/ns/shop/sa/checkout`: it
/// always has a path.
///
/// Equality is literal: the spec leaves no room for two spellings of one ID once the
/// input passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    text: String,
    /// Byte offset where the path (never empty) starts.
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a workload SPIFFE ID; the error names the rule that broke. A
    /// trust domain's own ID (`spiffe://td`, no path) is refused with
    /// [`SpiffeIdError::NoPath`].
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.len() > MAX_ID_BYTES {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let trust_domain_len = rest.find('/').unwrap_or(rest.len());
        check_trust_domain(&rest[..trust_domain_len])?;
        check_path(&rest[trust_domain_len..])?;
        if trust_domain_len == rest.len() {
            return Err(SpiffeIdError::NoPath);
        }
        Ok(Self {
            text: input.to_owned(),
            path_start: SCHEME.len() + trust_domain_len,
        })
    }

    /// The conventional identity of a Kubernetes service account:
    /// `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn for_service_account(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain name (the authority part).
    pub fn trust_domain_name(&self) -> &str {
        &self.text[SCHEME.len()..self.path_start]
    }

    /// The trust domain as its own type.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, including its leading `/`; never empty.
    pub fn path(&self) -> &str {
        &self.text[self.path_start..]
    }

    /// The namespace of a `/ns/<namespace>/sa/<service-account>` identity.
    pub fn namespace(&self) -> Option<&str> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(namespace), Some("sa"), Some(_), None) => Some(namespace),
            _ => None,
        }
    }

    /// The whole ID as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Serde as text: serialized by `Display`, deserialized by `FromStr` inside the visitor
/// so that format crates report the scalar's own position.
macro_rules! serde_as_text {
    ($type:ty, $expecting:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Parse;
                impl serde::de::Visitor<'_> for Parse {
                    type Value = $type;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a ", $expecting))
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$type, E> {
                        text.parse().map_err(|e| {
                            E::custom(format!(
                                concat!("invalid ", $expecting, " {:?}: {}"),
                                text, e
                            ))
                        })
                    }
                }
                deserializer.deserialize_str(Parse)
            }
        }
    };
}

serde_as_text!(SpiffeId, "SPIFFE ID");
serde_as_text!(TrustDomain, "trust domain");

fn check_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::UppercaseTrustDomain(c)),
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            other => {
                return Err(
                    common_uri_error(other).unwrap_or(SpiffeIdError::TrustDomainChar(other))
                );
            }
        }
    }
    Ok(())
}

/// Checks the path of a SPIFFE ID or trust-domain URI; an empty path is the caller's
/// question (a trust domain URI has none, a workload ID must have one).
fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split item is the empty string before it.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        for c in segment.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                other => {
                    return Err(common_uri_error(other).unwrap_or(SpiffeIdError::PathChar(other)));
                }
            }
        }
    }
    Ok(())
}

/// URI features the spec forbids, named for what the author likely meant.
fn common_uri_error(c: char) -> Option<SpiffeIdError> {
    match c {
        '?' => Some(SpiffeIdError::Query),
        '#' => Some(SpiffeIdError::Fragment),
        '%' => Some(SpiffeIdError::PercentEncoding),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for (input, td, path) in [
            (
                "spiffe://example.org/ns/pay/sa/api",
                "example.org",
                "/ns/pay/sa/api",
            ),
            ("spiffe://a-b_c.9/P.a-t_h/X", "a-b_c.9", "/P.a-t_h/X"),
            ("spiffe://td/..a/.b", "td", "/..a/.b"),
        ] {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain_name(), td, "{input}");
            assert_eq!(id.path(), path, "{input}");
            assert_eq!(id.to_string(), input);
        }
    }

    #[test]
    fn rejects_each_rule_with_its_reason() {
        use SpiffeIdError::*;
        let long_td = format!("spiffe://{}", "a".repeat(256));
        let long_id = format!("spiffe://td/{}", "a".repeat(2040));
        let cases: Vec<(&str, SpiffeIdError)> = vec![
            ("", WrongScheme),
            ("http://example.org/a", WrongScheme),
            ("SPIFFE://example.org/a", WrongScheme),
            ("spiffe:/example.org", WrongScheme),
            ("spiffe://", EmptyTrustDomain),
            // X509-SVID §3.1: a workload's ID has a path; this one names the trust domain.
            ("spiffe://example.org", NoPath),
            ("spiffe://td", NoPath),
            ("spiffe:///path", EmptyTrustDomain),
            (&long_td, TrustDomainTooLong),
            ("spiffe://Example.org/a", UppercaseTrustDomain('E')),
            ("spiffe://example.org:443/a", Port),
            ("spiffe://user@example.org/a", UserInfo),
            ("spiffe://exa mple.org", TrustDomainChar(' ')),
            ("spiffe://example.org?x=1", Query),
            ("spiffe://example.org/a?x=1", Query),
            ("spiffe://example.org/a#frag", Fragment),
            ("spiffe://example.org/a%2Fb", PercentEncoding),
            ("spiffe://ex%41mple.org/a", PercentEncoding),
            ("spiffe://example.org/a b", PathChar(' ')),
            ("spiffe://example.org/caf\u{e9}", PathChar('\u{e9}')),
            ("spiffe://example.org/a//b", EmptySegment),
            ("spiffe://example.org//", EmptySegment),
            ("spiffe://example.org/", TrailingSlash),
            ("spiffe://example.org/a/", TrailingSlash),
            ("spiffe://example.org/./a", DotSegment),
            ("spiffe://example.org/a/..", DotSegment),
            (&long_id, TooLong),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn exactly_2048_bytes_is_allowed() {
        let id = format!(
            "spiffe://td/{}",
            "a".repeat(MAX_ID_BYTES - "spiffe://td/".len())
        );
        assert_eq!(id.len(), MAX_ID_BYTES);
        assert!(SpiffeId::parse(&id).is_ok());
    }

    #[test]
    fn namespace_only_for_service_account_shape() {
        let td = TrustDomain::parse("td").unwrap();
        let id = SpiffeId::for_service_account(&td, "pay", "api").unwrap();
        assert_eq!(id.as_str(), "spiffe://td/ns/pay/sa/api");
        assert_eq!(id.namespace(), Some("pay"));
        for other in [
            "spiffe://td/ns",
            "spiffe://td/ns/pay",
            "spiffe://td/ns/pay/sa/api/x",
            "spiffe://td/x/pay/sa/api",
        ] {
            assert_eq!(SpiffeId::parse(other).unwrap().namespace(), None, "{other}");
        }
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(
            TrustDomain::parse("spiffe://td.org").unwrap().as_str(),
            "td.org"
        );
        assert_eq!(
            TrustDomain::parse("td.org").unwrap().uri(),
            "spiffe://td.org"
        );
        assert_eq!(
            TrustDomain::parse("TD"),
            Err(SpiffeIdError::UppercaseTrustDomain('T'))
        );
        assert_eq!(
            TrustDomain::parse("td/x"),
            Err(SpiffeIdError::TrustDomainChar('/'))
        );
    }

    #[test]
    fn comparison_is_literal() {
        let a = SpiffeId::parse("spiffe://td/ns/a/sa/B").unwrap();
        let b = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        assert_ne!(a, b);
    }
}
