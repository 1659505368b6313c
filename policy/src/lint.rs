//! Warnings about policies that are valid but probably not what their author meant.

use std::fmt;

use airlock_identity::TrustDomain;

use crate::model::{Action, Rule};
use crate::set::{Policy, PolicySet};

/// What lint knows beyond the policies themselves.
#[derive(Debug, Clone, Default)]
pub struct LintContext {
    /// Unix seconds, for expired grants.
    pub now: i64,
    /// Ports the workloads serve as plain TCP (HTTP conditions cannot apply there).
    pub tcp_ports: Vec<u16>,
    /// The mesh's trust domain, for selectors naming foreign identities.
    pub trust_domain: Option<TrustDomain>,
}

/// One warning, located at its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the policy was written, as `file:line`.
    pub location: String,
    /// The policy's id, `namespace/name`.
    pub policy: String,
    /// The 0-based index of the rule warned about; `None` for the policy as a whole
    /// (its selector, or having no rules).
    pub rule: Option<usize>,
    /// What looks wrong and why, as a sentence fragment following the policy (and rule).
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: policy {}", self.location, self.policy)?;
        if let Some(rule) = self.rule {
            write!(f, " rule {rule}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All warnings for `set`, in policy order.
pub fn lint(set: &PolicySet, context: &LintContext) -> Vec<Warning> {
    let mut warnings = Vec::new();
    for policy in set.policies() {
        let mut warn = |rule: Option<usize>, message: String| {
            warnings.push(Warning {
                location: policy.origin.to_string(),
                policy: policy.id.to_string(),
                rule,
                message,
            })
        };
        lint_selector(policy, context, &mut warn);
        let rules = match &policy.spec.rules {
            Some(rules) if !rules.is_empty() => rules,
            _ => {
                warn(
                    None,
                    "has no rules, so it matches nothing (write `rules: [{}]` to match everything)"
                        .into(),
                );
                continue;
            }
        };
        for (index, rule) in rules.iter().enumerate() {
            if let Some(earlier) = rules[..index].iter().position(|e| subsumes(e, rule)) {
                warn(
                    Some(index),
                    format!("is shadowed by the broader rule {earlier} before it"),
                );
            }
            if rule.expires_at.is_some_and(|t| t <= context.now) {
                warn(
                    Some(index),
                    "has expired (expiresAt is in the past), so it never matches".into(),
                );
            }
            if rule.has_http_conditions() {
                lint_http_on_tcp(policy.spec.action, rule, context, index, &mut warn);
            }
        }
    }
    warnings
}

fn lint_selector(
    policy: &Policy,
    context: &LintContext,
    warn: &mut impl FnMut(Option<usize>, String),
) {
    let selector = &policy.spec.selector;
    if !selector.identities.is_empty() && !selector.namespaces.is_empty() {
        warn(
            None,
            "selector lists identities AND namespaces; a workload must satisfy both".into(),
        );
    }
    if let Some(td) = &context.trust_domain
        && !selector.identities.is_empty()
        && !selector
            .identities
            .iter()
            .any(|id| id.trust_domain_name() == td.as_str())
    {
        warn(
            None,
            format!(
                "selector names no identity of trust domain {td}, so it selects no workload of this mesh"
            ),
        );
    }
}

fn lint_http_on_tcp(
    action: Action,
    rule: &Rule,
    context: &LintContext,
    index: usize,
    warn: &mut impl FnMut(Option<usize>, String),
) {
    let ports: Vec<u16> = rule
        .to
        .iter()
        .flat_map(|t| t.operation.ports.iter().map(|p| p.0))
        .collect();
    match action {
        Action::Allow => {
            let all_tcp = !ports.is_empty() && ports.iter().all(|p| context.tcp_ports.contains(p));
            if all_tcp {
                warn(
                    Some(index),
                    format!(
                        "has HTTP-only conditions but its ports {ports:?} are TCP, so it can never match"
                    ),
                );
            } else if ports.is_empty() && !context.tcp_ports.is_empty() {
                warn(
                    Some(index),
                    format!(
                        "has HTTP-only conditions and no ports, so it never matches on the TCP ports {:?}",
                        context.tcp_ports
                    ),
                );
            }
        }
        Action::Deny => {
            let tcp_reach = ports.is_empty() || ports.iter().any(|p| context.tcp_ports.contains(p));
            if tcp_reach {
                warn(
                    Some(index),
                    "has HTTP-only conditions; on TCP ports it matches on its L4 part alone and denies every connection that part matches".into(),
                );
            }
        }
    }
}

/// `broad` matches at least everything `narrow` matches: each of its parts is either
/// unconstrained or identical, and its time window covers `narrow`'s.
fn subsumes(broad: &Rule, narrow: &Rule) -> bool {
    let window_covers = broad
        .not_before
        .is_none_or(|b| narrow.not_before.is_some_and(|n| n >= b))
        && broad
            .expires_at
            .is_none_or(|b| narrow.expires_at.is_some_and(|n| n <= b));
    window_covers
        && (broad.from.is_empty() || broad.from == narrow.from)
        && (broad.to.is_empty() || broad.to == narrow.to)
        && (broad.when.is_empty() || broad.when == narrow.when)
}
