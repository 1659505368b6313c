//! A compiled, indexed set of policies. The index is keyed by target workload, so a
//! decision only looks at the policies that can select the workload it is made for.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use airlock_identity::SpiffeId;

use crate::matcher::{StringMatch, any_and_none};
use crate::model::{PolicySpec, Selector};

/// `namespace/name`, the identity of a policy in reasons, logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(Arc<str>);

impl PolicyId {
    /// The id of the policy `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(Arc::from(format!("{namespace}/{name}")))
    }

    /// `namespace/name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a policy was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as the loader was given or found it.
    pub file: PathBuf,
    /// 1-based line: of the policy's `name:` or, for a test suite, of its document's
    /// start.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace/name` from its metadata.
    pub id: PolicyId,
    /// What it selects, does and matches.
    pub spec: PolicySpec,
    /// Where it was written, for lint and error messages.
    pub origin: Origin,
}

impl Policy {
    /// Whether the selector picks `target`. Fields are AND'd; each field's values OR'd.
    pub fn selects(&self, target: &SpiffeId) -> bool {
        let selector = &self.spec.selector;
        let namespace = target.namespace().unwrap_or("");
        any_and_none(&selector.identities, &selector.not_identities, |id| {
            id == target
        }) && any_and_none(&selector.namespaces, &selector.not_namespaces, |n| {
            n.0.matches(namespace)
        })
    }
}

/// Policies sorted by id, with an index by selected identity and namespace.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
    by_identity: HashMap<SpiffeId, Vec<usize>>,
    by_namespace: HashMap<String, Vec<usize>>,
    /// Mesh-wide policies and those whose selector uses patterns or only `not` forms.
    unindexed: Vec<usize>,
}

impl PolicySet {
    /// Builds the index. Ids must be unique (the loader guarantees it).
    pub fn new(mut policies: Vec<Policy>) -> Self {
        policies.sort_by(|a, b| a.id.cmp(&b.id));
        let mut set = Self {
            policies,
            ..Self::default()
        };
        for (index, policy) in set.policies.iter().enumerate() {
            let selector: &Selector = &policy.spec.selector;
            let exact_namespaces: Option<Vec<&str>> = selector
                .namespaces
                .iter()
                .map(|n| match &n.0 {
                    StringMatch::Exact(name) => Some(name.as_str()),
                    _ => None,
                })
                .collect();
            if !selector.identities.is_empty() {
                for id in &selector.identities {
                    set.by_identity.entry(id.clone()).or_default().push(index);
                }
            } else if let Some(names) = exact_namespaces.filter(|n| !n.is_empty()) {
                for name in names {
                    set.by_namespace
                        .entry(name.to_owned())
                        .or_default()
                        .push(index);
                }
            } else {
                set.unindexed.push(index);
            }
        }
        // An identity or namespace listed twice in one selector must not count twice.
        for list in set
            .by_identity
            .values_mut()
            .chain(set.by_namespace.values_mut())
        {
            list.dedup();
        }
        set
    }

    /// Every policy, sorted by id.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// How many policies the set holds.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set holds no policy (every decision then falls to the default).
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies that select `target`: by identity, by namespace, then the rest.
    pub fn selecting<'a>(&'a self, target: &'a SpiffeId) -> impl Iterator<Item = &'a Policy> + 'a {
        let by_identity = self
            .by_identity
            .get(target)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let by_namespace = target
            .namespace()
            .and_then(|ns| self.by_namespace.get(ns))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        by_identity
            .iter()
            .chain(by_namespace)
            .chain(&self.unindexed)
            .map(|&index| &self.policies[index])
            .filter(move |policy| policy.selects(target))
    }

    /// The earliest `notBefore`/`expiresAt` after `now`: when decisions may change
    /// without any policy change (the proxy re-checks live connections then).
    pub fn next_grant_change(&self, now: i64) -> Option<i64> {
        self.policies
            .iter()
            .flat_map(|p| p.spec.rules.iter().flatten())
            .flat_map(|r| [r.not_before, r.expires_at])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }
}
