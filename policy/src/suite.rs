//! `kind: PolicyTest`: requests with expected decisions, so platform teams can gate policy
//! changes in CI (`airlock policy test PATH…`).
//!
//! ```yaml
//! apiVersion: airlock.dev/v1alpha1
//! kind: PolicyTest
//! metadata: {name: payments}
//! spec:
//!   default: deny                      # optional, the workload default
//!   at: 2026-12-01T00:00:00Z           # optional, time of every case
//!   cases:
//!   - name: checkout may charge
//!     target: spiffe://td/ns/pay/sa/api
//!     port: 8080
//!     source: spiffe://td/ns/shop/sa/checkout   # absent: a plaintext peer
//!     method: POST                     # any HTTP field makes it an HTTP request
//!     path: /v1/charges
//!     headers: {x-tenant: acme}
//!     expect: allow
//!     expectPolicy: pay/allow-checkout # optional
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use airlock_identity::SpiffeId;
use serde::{Deserialize, Deserializer, de};

use crate::eval::{DefaultMode, HttpRequest, RequestSpec};
use crate::model::{ApiVersion, Port, Timestamp};
use crate::set::PolicySet;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTest {
    pub api_version: ApiVersion,
    pub kind: String,
    pub metadata: TestMetadata,
    pub spec: TestSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestMetadata {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestSpec {
    #[serde(default, deserialize_with = "default_mode")]
    pub default: DefaultMode,
    #[serde(default)]
    pub at: Option<Timestamp>,
    pub cases: Vec<TestCase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestCase {
    pub name: String,
    pub target: SpiffeId,
    pub port: Port,
    #[serde(default)]
    pub source: Option<SpiffeId>,
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    /// Header name → value, or → list of values for a repeated header.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub at: Option<Timestamp>,
    pub expect: Expect,
    #[serde(default)]
    pub expect_policy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn default_mode<'de, D: Deserializer<'de>>(d: D) -> Result<DefaultMode, D::Error> {
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    pub case: String,
    pub passed: bool,
    /// What the case expected, e.g. `allow by pay/allow-checkout`.
    pub expected: String,
    /// What it got, with the reason.
    pub got: String,
}

impl TestCase {
    /// The request this case describes; an HTTP request when any HTTP field is present.
    /// A request shape the proxy would refuse (400) is the error.
    pub fn request(&self, now: i64) -> Result<RequestSpec, String> {
        let has_http_fields = self.method.is_some()
            || self.path.is_some()
            || self.host.is_some()
            || !self.headers.is_empty();
        let http = match self.protocol {
            Some(Protocol::Tcp) if has_http_fields => {
                return Err("protocol tcp cannot carry method, path, host or headers".into());
            }
            Some(Protocol::Tcp) => false,
            Some(Protocol::Http) => true,
            None => has_http_fields,
        };
        let headers = self
            .headers
            .iter()
            .flat_map(|(name, values)| match values {
                OneOrMany::One(v) => vec![(name.clone(), v.clone())],
                OneOrMany::Many(vs) => vs.iter().map(|v| (name.clone(), v.clone())).collect(),
            })
            .collect();
        let http = http
            .then(|| {
                HttpRequest::from_raw(
                    self.method.as_deref().unwrap_or("GET"),
                    self.path.as_deref().unwrap_or("/"),
                    self.host.as_deref().unwrap_or_default(),
                    headers,
                )
            })
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(RequestSpec {
            target: self.target.clone(),
            port: self.port.0,
            source: self.source.clone(),
            source_ip: self.source_ip,
            http,
            now: self.at.map_or(now, |t| t.0),
        })
    }
}

/// Runs every case of `test` against `set`. `now` is used where neither the case nor the
/// suite fixes a time.
pub fn run(set: &PolicySet, test: &PolicyTest, now: i64) -> Vec<CaseOutcome> {
    let now = test.spec.at.map_or(now, |t| t.0);
    test.spec
        .cases
        .iter()
        .map(|case| {
            let expected = match (&case.expect, &case.expect_policy) {
                (Expect::Allow, None) => "allow".to_owned(),
                (Expect::Deny, None) => "deny".to_owned(),
                (e, Some(p)) => format!(
                    "{} by {p}",
                    if *e == Expect::Allow { "allow" } else { "deny" }
                ),
            };
            let verdict = case
                .request(now)
                .map(|spec| set.evaluate_spec(&spec, test.spec.default));
            let (passed, got) = match verdict {
                Ok(decision) => {
                    let word = if decision.allowed { "allow" } else { "deny" };
                    let policy_ok = case.expect_policy.as_deref().is_none_or(|p| {
                        decision.reason.policy().is_some_and(|id| id.as_str() == p)
                    });
                    let passed = decision.allowed == (case.expect == Expect::Allow) && policy_ok;
                    (passed, format!("{word} ({})", decision.reason))
                }
                // A request shape the proxy refuses (400) is a deny.
                Err(refusal) => (
                    case.expect == Expect::Deny && case.expect_policy.is_none(),
                    format!("deny (refused: {refusal})"),
                ),
            };
            CaseOutcome {
                case: case.name.clone(),
                passed,
                expected,
                got,
            }
        })
        .collect()
}
