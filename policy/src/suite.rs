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

/// `kind: PolicyTest`: a suite of cases run against the loaded policies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTest {
    /// `apiVersion`; only [`API_VERSION`](crate::model::API_VERSION) is accepted.
    pub api_version: ApiVersion,
    /// `kind`; the loader reads a document as a suite only when this is `PolicyTest`.
    pub kind: String,
    /// `metadata`: the suite's name.
    pub metadata: TestMetadata,
    /// `spec`: the default, the time and the cases.
    pub spec: TestSpec,
}

/// `metadata` of a [`PolicyTest`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestMetadata {
    /// `name`, shown before each case in `PASS`/`FAIL` lines.
    pub name: String,
}

/// `spec` of a [`PolicyTest`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestSpec {
    /// `default`: the workload default the cases are decided with (`deny`,
    /// `allow-mesh`, `allow-all` or `audit`); default `deny`.
    #[serde(default, deserialize_with = "default_mode")]
    pub default: DefaultMode,
    /// `at`: the time of every case that sets none itself; absent: the `now` given to
    /// [`run`] (the current time, or `--at`, for `airlock policy test`).
    #[serde(default)]
    pub at: Option<Timestamp>,
    /// `cases` (required): the requests and their expected decisions, run in order.
    pub cases: Vec<TestCase>,
}

/// `protocol` of a case, overriding the guess from its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `tcp`: a plain connection; a case with HTTP fields is then an error.
    Tcp,
    /// `http`: an HTTP request even without HTTP fields (`GET /`, no host).
    Http,
}

/// `expect`: the decision a case must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// `allow`: the request must be allowed.
    Allow,
    /// `deny`: the request must be denied, by a policy, the default, or because the
    /// proxy would refuse its shape (400).
    Deny,
}

/// One case: a request and the decision it must get. The request is HTTP when any of
/// `method`, `path`, `host` or `headers` is set (or `protocol: http`), TCP otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestCase {
    /// `name` (required), shown in `PASS`/`FAIL` lines.
    pub name: String,
    /// `target` (required): the SPIFFE ID of the workload being called.
    pub target: SpiffeId,
    /// `port` (required): the destination port, 1–65535.
    pub port: Port,
    /// `source`: the caller's SPIFFE ID; absent: a plaintext (unauthenticated) peer.
    #[serde(default)]
    pub source: Option<SpiffeId>,
    /// `sourceIp`: the caller's address; absent: unknown (`ipBlocks` and `source.ip`
    /// fail closed).
    #[serde(default)]
    pub source_ip: Option<IpAddr>,
    /// `protocol`: `tcp` or `http`; absent: guessed from the HTTP fields.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// `method`: the HTTP method, checked as the proxy does; default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// `path`: the raw request target (path and optional query), normalized as the
    /// proxy does; default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// `host`: the `Host` header, matched lower-case without port; default empty.
    #[serde(default)]
    pub host: Option<String>,
    /// Header name → value, or → list of values for a repeated header.
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    /// `at`: the time of this case; absent: the suite's `at`.
    #[serde(default)]
    pub at: Option<Timestamp>,
    /// `expect` (required): `allow` or `deny`.
    pub expect: Expect,
    /// `expectPolicy`: the id (`namespace/name`) of the policy that must decide; absent:
    /// any reason will do.
    #[serde(default)]
    pub expect_policy: Option<String>,
}

/// A header value in a case: one string, or a list for a header sent several times.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `name: value`: the header is sent once.
    One(String),
    /// `name: [a, b]`: the header is sent once per value, in order.
    Many(Vec<String>),
}

fn default_mode<'de, D: Deserializer<'de>>(d: D) -> Result<DefaultMode, D::Error> {
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case's name.
    pub case: String,
    /// Whether the decision (and deciding policy, if expected) was as expected.
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
