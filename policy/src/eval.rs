//! Evaluation: pure, table-testable. Input is the connection or request attributes and
//! the time; output is a [`Decision`] that names its reason.
//!
//! Order (DESIGN.md, "Policy semantics"):
//! 1. an enforced DENY policy that matches → deny;
//! 2. else an enforced ALLOW policy that matches → allow;
//! 3. else, if any enforced ALLOW policy selects the workload → deny ("no ALLOW matched");
//! 4. else the workload's default.
//!
//! Dry-run policies are evaluated alongside and reported, never enforced. Within each
//! step the first matching policy is reported: policies selecting the workload by identity
//! first, then by namespace, then mesh-wide ones, each group in `namespace/name` order.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use airlock_identity::SpiffeId;
use serde::{Deserialize, Serialize};

use crate::http::{
    PathOptions, ShapeError, check_method, header_name_matches, normalize_host, normalize_path,
};
use crate::matcher::any_and_none;
use crate::model::{Action, Condition, Mode, Operation, Rule, Source};
use crate::set::{Policy, PolicyId, PolicySet};

/// What a workload does when no policy decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultMode {
    /// Zero trust: refuse.
    #[default]
    Deny,
    /// Allow any authenticated mesh peer; refuse plaintext peers.
    AllowMesh,
    /// Allow everything.
    AllowAll,
    /// Allow everything, but the proxy logs and counts it as "audit: no policy allowed this".
    Audit,
}

impl FromStr for DefaultMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(Self::Deny),
            "allow-mesh" => Ok(Self::AllowMesh),
            "allow-all" => Ok(Self::AllowAll),
            "audit" => Ok(Self::Audit),
            other => Err(format!(
                "unknown default {other:?}; expected deny, allow-mesh, allow-all or audit"
            )),
        }
    }
}

impl fmt::Display for DefaultMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deny => "deny",
            Self::AllowMesh => "allow-mesh",
            Self::AllowAll => "allow-all",
            Self::Audit => "audit",
        })
    }
}

/// An HTTP request as policy sees it: normalized (see [`crate::http`]) and owned, so the
/// proxy can keep it with a live request and decide it again when policy changes. The
/// proxy builds it from what it normalized and forwards; the CLI and PolicyTest cases
/// build it from raw text with [`HttpRequest::from_raw`], which normalizes the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    /// The request method as received, a valid token (compared case-sensitively
    /// except by DENY rules' `methods`).
    pub method: String,
    /// The method a method-override header names, where the port honours one: the
    /// request is allowed only when both its method and this one are, since the app may
    /// act on either.
    pub override_method: Option<String>,
    /// Normalized path, without query.
    pub path: String,
    /// Lower-case host without port.
    pub host: String,
    /// Header names and values as received; names compare case-insensitively with `_`
    /// the same as `-` (so `x_debug` cannot slip past a rule on `x-debug`), and repeated
    /// headers match as their comma-joined value.
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    /// Normalizes a raw method, request target (path and optional query) and host, as
    /// the proxy does with default options. A shape the proxy would answer 400 is the
    /// error.
    pub fn from_raw(
        method: &str,
        target: &str,
        host: &str,
        headers: Vec<(String, String)>,
    ) -> Result<Self, ShapeError> {
        check_method(method)?;
        Ok(Self {
            method: method.to_owned(),
            override_method: None,
            path: normalize_path(target, PathOptions::default())?.path,
            host: normalize_host(host),
            headers,
        })
    }

    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| header_name_matches(n, name))
            .map(|(_, v)| v.as_str());
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = format!("{first},{second}");
                for more in values {
                    joined.push(',');
                    joined.push_str(more);
                }
                Some(Cow::Owned(joined))
            }
        }
    }
}

/// Everything a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The workload being called.
    pub target: &'a SpiffeId,
    /// The destination port the connection or request arrived on.
    pub port: u16,
    /// The verified peer identity; `None` for a plaintext (unauthenticated) peer.
    pub source: Option<&'a SpiffeId>,
    /// The peer's address; `None` when unknown, in which case `ipBlocks` and
    /// `source.ip` fail closed. IPv4-mapped IPv6 addresses are matched as IPv4.
    pub source_ip: Option<IpAddr>,
    /// `None` on a TCP port.
    pub http: Option<&'a HttpRequest>,
    /// Unix seconds.
    pub now: i64,
}

/// Why a decision came out the way it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A policy's rule matched.
    Rule {
        /// The policy the rule belongs to.
        policy: PolicyId,
        /// The rule's 0-based index in the policy's `rules`.
        rule: usize,
        /// The policy's action: `Deny` for a denial, `Allow` for an allowance.
        action: Action,
    },
    /// Enforced ALLOW policies select the workload, but none matched.
    NoAllowMatched,
    /// No policy decided; the workload default did.
    Default(DefaultMode),
}

impl Reason {
    /// The deciding policy; `None` when no policy rule decided (no ALLOW matched, or
    /// the default).
    pub fn policy(&self) -> Option<&PolicyId> {
        match self {
            Self::Rule { policy, .. } => Some(policy),
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule {
                policy,
                rule,
                action,
            } => write!(f, "{action} policy {policy} rule {rule}"),
            Self::NoAllowMatched => f.write_str("no ALLOW policy matched"),
            Self::Default(mode) => write!(f, "default {mode}"),
        }
    }
}

/// What a dry-run policy would have done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRunOutcome {
    /// The dry-run policy.
    pub policy: PolicyId,
    /// `true` when an ALLOW policy's rule matched; `false` when a DENY policy's rule
    /// matched or an ALLOW policy matched nothing.
    pub would_allow: bool,
    /// The matching rule; `None` for an ALLOW policy none of whose rules matched.
    pub rule: Option<usize>,
}

/// The verdict, with its reason and the dry-run outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the connection or request may proceed.
    pub allowed: bool,
    /// The enforced policy, rule or default that decided.
    pub reason: Reason,
    /// What each dry-run policy selecting the target would have done: every one whose
    /// rule matched, and every ALLOW one (which would deny when nothing matched), in
    /// evaluation order. Never affects `allowed`.
    pub dry_run: Vec<DryRunOutcome>,
}

impl Decision {
    /// The decision as `airlock policy eval --json` prints it, and a sidecar's
    /// `/policy/eval` answers it: `decision`, `reason`, `policy`, `rule` and `dry_run`.
    pub fn to_json(&self) -> serde_json::Value {
        let word = |allowed: bool| if allowed { "allow" } else { "deny" };
        let rule = match &self.reason {
            Reason::Rule { rule, .. } => Some(*rule),
            _ => None,
        };
        let dry_run: Vec<_> = self
            .dry_run
            .iter()
            .map(|d| {
                serde_json::json!({
                    "policy": d.policy.as_str(),
                    "decision": word(d.would_allow),
                    "rule": d.rule,
                })
            })
            .collect();
        serde_json::json!({
            "decision": word(self.allowed),
            "reason": self.reason.to_string(),
            "policy": self.reason.policy().map(PolicyId::as_str),
            "rule": rule,
            "dry_run": dry_run,
        })
    }
}

impl PolicySet {
    /// Decides one connection (TCP) or request (HTTP). A request with an honoured method
    /// override is decided as its method and, when that allows it, again as the
    /// overriding one; the second decision is the answer.
    pub fn evaluate(&self, request: &Request<'_>, default: DefaultMode) -> Decision {
        let decision = self.evaluate_once(request, default);
        match request.http {
            Some(http) if decision.allowed && http.override_method.is_some() => {
                let overridden = HttpRequest {
                    method: http.override_method.clone().unwrap_or_default(),
                    override_method: None,
                    ..http.clone()
                };
                self.evaluate_once(
                    &Request {
                        http: Some(&overridden),
                        ..*request
                    },
                    default,
                )
            }
            _ => decision,
        }
    }

    fn evaluate_once(&self, request: &Request<'_>, default: DefaultMode) -> Decision {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d; IPv4 CIDRs must
        // still apply to it.
        let canonical = Request {
            source_ip: request.source_ip.map(|ip| ip.to_canonical()),
            ..*request
        };
        let request = &canonical;
        let mut deny: Option<(&Policy, usize)> = None;
        let mut allow: Option<(&Policy, usize)> = None;
        let mut allow_selects = false;
        let mut dry_run = Vec::new();
        for policy in self.selecting(request.target) {
            let action = policy.spec.action;
            let matched = first_matching_rule(policy, request);
            match policy.spec.mode {
                Mode::Enforce => match action {
                    Action::Deny => deny = deny.or(matched.map(|r| (policy, r))),
                    Action::Allow => {
                        allow_selects = true;
                        allow = allow.or(matched.map(|r| (policy, r)));
                    }
                },
                Mode::DryRun => {
                    if matched.is_some() || action == Action::Allow {
                        dry_run.push(DryRunOutcome {
                            policy: policy.id.clone(),
                            would_allow: action == Action::Allow && matched.is_some(),
                            rule: matched,
                        });
                    }
                }
            }
        }
        let by_rule = |(policy, rule): (&Policy, usize), allowed| Decision {
            allowed,
            reason: Reason::Rule {
                policy: policy.id.clone(),
                rule,
                action: policy.spec.action,
            },
            dry_run: Vec::new(),
        };
        let mut decision = if let Some(hit) = deny {
            by_rule(hit, false)
        } else if let Some(hit) = allow {
            by_rule(hit, true)
        } else if allow_selects {
            Decision {
                allowed: false,
                reason: Reason::NoAllowMatched,
                dry_run: Vec::new(),
            }
        } else {
            Decision {
                allowed: match default {
                    DefaultMode::Deny => false,
                    DefaultMode::AllowMesh => request.source.is_some(),
                    DefaultMode::AllowAll | DefaultMode::Audit => true,
                },
                reason: Reason::Default(default),
                dry_run: Vec::new(),
            }
        };
        decision.dry_run = dry_run;
        decision
    }
}

fn first_matching_rule(policy: &Policy, request: &Request<'_>) -> Option<usize> {
    let action = policy.spec.action;
    policy
        .spec
        .rules
        .as_deref()?
        .iter()
        .position(|rule| rule_matches(rule, action, request))
}

/// One rule against one request; `action` decides how missing attributes fail closed.
pub fn rule_matches(rule: &Rule, action: Action, request: &Request<'_>) -> bool {
    if !rule.in_window(request.now) {
        return false;
    }
    // HTTP-only conditions on a TCP port: an ALLOW rule never matches; a DENY rule
    // matches on its L4 part (the HTTP conditions are skipped below).
    if request.http.is_none() && action == Action::Allow && rule.has_http_conditions() {
        return false;
    }
    (rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|f| source_matches(&f.source, action, request)))
        && (rule.to.is_empty()
            || rule
                .to
                .iter()
                .any(|t| operation_matches(&t.operation, action, request)))
        && rule
            .when
            .iter()
            .all(|c| condition_matches(c, action, request))
}

/// Positive (any of) and negative (none of) lists over an attribute that may be absent.
/// Absent: no constraint still matches; otherwise ALLOW never matches, and DENY matches
/// when only negative values are listed (fail closed both ways).
fn attribute_matches<P, V: ?Sized>(
    positives: &[P],
    negatives: &[P],
    value: Option<&V>,
    action: Action,
    matches: impl Fn(&P, &V) -> bool,
) -> bool {
    match value {
        Some(value) => any_and_none(positives, negatives, |p| matches(p, value)),
        None if positives.is_empty() && negatives.is_empty() => true,
        None => action == Action::Deny && positives.is_empty(),
    }
}

fn source_matches(source: &Source, action: Action, request: &Request<'_>) -> bool {
    let id = request.source;
    let namespace = id.and_then(SpiffeId::namespace);
    attribute_matches(
        &source.principals,
        &source.not_principals,
        id,
        action,
        |p, id| p.matches(id),
    ) && attribute_matches(
        &source.namespaces,
        &source.not_namespaces,
        namespace,
        action,
        |n, ns| n.0.matches(ns),
    ) && attribute_matches(
        &source.ip_blocks,
        &source.not_ip_blocks,
        request.source_ip.as_ref(),
        action,
        |b, ip| b.0.contains(ip),
    )
}

/// In a DENY rule, the path also matches without its trailing slash: many servers route
/// `/admin/` to `/admin`, so a DENY on `/admin` must cover both (fail closed). An ALLOW
/// rule matches the path exactly as written.
fn operation_matches(operation: &Operation, action: Action, request: &Request<'_>) -> bool {
    if !any_and_none(&operation.ports, &operation.not_ports, |p| {
        p.0 == request.port
    }) {
        return false;
    }
    let Some(http) = &request.http else {
        return true; // L4 part only (reached by DENY rules alone, see rule_matches)
    };
    methods_match(operation, action, &http.method)
        && path_spellings(&http.path, action).any(|path| {
            any_and_none(&operation.paths, &operation.not_paths, |p| {
                p.0.matches(path)
            })
        })
        && any_and_none(&operation.hosts, &operation.not_hosts, |h| {
            h.0.matches(&http.host)
        })
}

/// ALLOW rules match methods exactly. A DENY rule's `methods` match in any case, because
/// servers such as ASP.NET Core route `propfind` as `PROPFIND` (the proxy already refuses
/// other spellings of the standard methods); its `notMethods` stay exact, so they exempt
/// no more than they name (fail closed both ways).
fn methods_match(operation: &Operation, action: Action, method: &str) -> bool {
    let named = |m: &crate::model::Method| match action {
        Action::Deny => m.0.eq_ignore_ascii_case(method),
        Action::Allow => m.0 == method,
    };
    (operation.methods.is_empty() || operation.methods.iter().any(named))
        && !operation.not_methods.iter().any(|m| m.0 == method)
}

fn path_spellings(path: &str, action: Action) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    let alternative =
        (action == Action::Deny && !trimmed.is_empty() && trimmed != path).then_some(trimmed);
    std::iter::once(path).chain(alternative)
}

fn condition_matches(condition: &Condition, action: Action, request: &Request<'_>) -> bool {
    match condition {
        Condition::Header {
            name,
            values,
            not_values,
        } => match &request.http {
            None => true, // L4 part only (DENY rules alone get here)
            Some(http) => {
                let matches = |value: Option<&str>| {
                    any_and_none(values, not_values, |m| value.is_some_and(|v| m.matches(v)))
                };
                // A repeated header matches as its comma-joined value. A DENY rule also
                // matches on any single occurrence: an app that reads only the first or
                // the last one must not get past it (fail closed).
                matches(http.header(name).as_deref())
                    || (action == Action::Deny
                        && http
                            .headers
                            .iter()
                            .filter(|(n, _)| header_name_matches(n, name))
                            .any(|(_, v)| matches(Some(v))))
            }
        },
        Condition::SourceIp { values, not_values } => attribute_matches(
            values,
            not_values,
            request.source_ip.as_ref(),
            action,
            |net, ip| net.contains(ip),
        ),
        Condition::SourcePrincipal { values, not_values } => {
            attribute_matches(values, not_values, request.source, action, |p, id| {
                p.matches(id)
            })
        }
        Condition::SourceNamespace { values, not_values } => {
            let namespace = request.source.and_then(SpiffeId::namespace);
            attribute_matches(values, not_values, namespace, action, |n, ns| {
                n.0.matches(ns)
            })
        }
        Condition::DestinationPort { values, not_values } => {
            any_and_none(values, not_values, |p| *p == request.port)
        }
    }
}

/// A request described by owned attributes (as the CLI and PolicyTest cases write them,
/// their HTTP part normalized by [`HttpRequest::from_raw`]).
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// The workload being called.
    pub target: SpiffeId,
    /// The destination port.
    pub port: u16,
    /// The peer identity; `None` for a plaintext peer.
    pub source: Option<SpiffeId>,
    /// The peer's address; `None` when not given.
    pub source_ip: Option<IpAddr>,
    /// `None`: TCP.
    pub http: Option<HttpRequest>,
    /// The decision time, Unix seconds.
    pub now: i64,
}

impl PolicySet {
    /// Decides `spec`.
    pub fn evaluate_spec(&self, spec: &RequestSpec, default: DefaultMode) -> Decision {
        self.evaluate(
            &Request {
                target: &spec.target,
                port: spec.port,
                source: spec.source.as_ref(),
                source_ip: spec.source_ip,
                http: spec.http.as_ref(),
                now: spec.now,
            },
            default,
        )
    }
}
