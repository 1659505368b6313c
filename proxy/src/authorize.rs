//! The one authorization path of inbound traffic, and the watcher that keeps its answers
//! true.
//!
//! A TCP tunnel and an HTTP request are authorized alike ([`authorize`]): decided on the
//! live policy, registered in the live table before anything reaches the app, decided
//! again when a policy swap raced the first decision, and counted once, under the
//! decision that stood. [`watch_policy`] re-decides the live table whenever the policy
//! changes, a time-bound grant opens or lapses, or this sidecar's own SVID expires, and
//! cuts what is no longer allowed. They live together because each covers the other's
//! blind spot: a swap published after the registration is caught by the re-check, one
//! published before it by the second decision.

use std::sync::Arc;
use std::time::Duration;

use airlock_identity::SpiffeId;
use airlock_policy::{Decision, DefaultMode, PolicySet};
use tokio::sync::oneshot;

use crate::Shared;
use crate::lifecycle::unix_now;
use crate::metrics::{Metrics, Verdict};
use crate::tunnels::{TunnelGuard, TunnelKey, Tunnels};

/// What [`authorize`] found.
pub(crate) struct Authorization {
    /// The decision that stood, for the access log.
    pub decision: Decision,
    /// This sidecar's identity, which the decision was made for.
    pub own_id: SpiffeId,
    /// The place in the live table, when allowed.
    pub admission: Option<Admission>,
}

/// An allowed tunnel's or request's place in the live table, held while it lives.
pub(crate) struct Admission {
    /// Leaves the table when dropped.
    pub guard: TunnelGuard,
    /// Fires when a re-check cuts it.
    pub cancelled: oneshot::Receiver<()>,
}

/// This sidecar holds no valid SVID, so it cannot say whom the caller is calling.
#[derive(Debug)]
pub(crate) struct NoValidSvid;

/// Authorizes the tunnel or request `key` on the live policy; see the module docs.
pub(crate) fn authorize(shared: &Shared, key: TunnelKey) -> Result<Authorization, NoValidSvid> {
    let now = unix_now();
    let own = shared.identity.valid_svid(now).ok_or(NoValidSvid)?;
    let judge = Judge {
        tunnels: &shared.tunnels,
        metrics: &shared.metrics,
        target: &own.id,
        default: shared.config.policy.default,
        now,
    };
    let (decision, admission) = judge.admit(&key, || shared.policies());
    if !decision.allowed {
        shared.inspect.denied(&key, &decision, now);
    }
    Ok(Authorization {
        decision,
        own_id: own.id,
        admission,
    })
}

/// One decision's fixed inputs and where its outcome goes.
struct Judge<'a> {
    tunnels: &'a Arc<Tunnels>,
    metrics: &'a Metrics,
    target: &'a SpiffeId,
    default: DefaultMode,
    now: i64,
}

impl Judge<'_> {
    /// Decides `key` on `policies()`, registers it when allowed, and decides again if
    /// `policies()` changed in between; counts the decision that stood.
    fn admit(
        &self,
        key: &TunnelKey,
        policies: impl Fn() -> Arc<PolicySet>,
    ) -> (Decision, Option<Admission>) {
        let decide = |set: &PolicySet| key.decide(set, self.target, self.default, self.now);
        let decided_on = policies();
        let mut decision = decide(&decided_on);
        let mut admission = None;
        if decision.allowed {
            let (guard, cancelled) = self.tunnels.register(key.clone());
            let current = policies();
            if !Arc::ptr_eq(&decided_on, &current) {
                decision = decide(&current);
            }
            // A denial drops the guard here, which takes the entry out of the table.
            admission = decision.allowed.then_some(Admission { guard, cancelled });
        }
        let policy = decision
            .reason
            .policy()
            .map_or_else(|| "none".to_owned(), ToString::to_string);
        self.metrics.authz(Verdict::of(decision.allowed), &policy);
        self.metrics.dry_run(&decision.dry_run);
        for dry in &decision.dry_run {
            tracing::debug!(policy = %dry.policy, would_allow = dry.would_allow, source = %key.source_text(), port = key.port, "dry-run policy outcome");
        }
        (decision, admission)
    }
}

/// Closes live tunnels and requests that the current policy (at the current time) no
/// longer allows or whose peer the deny list now revokes, or all of them once this
/// sidecar's own SVID expired.
pub(crate) fn recheck_tunnels(shared: &Shared) {
    let now = unix_now();
    let closed = match shared.identity.valid_svid(now) {
        Some(own) => shared.tunnels.recheck(
            &shared.policies(),
            &own.id,
            shared.config.policy.default,
            now,
            shared.identity.bundle.current().revocations(),
        ),
        None => shared.tunnels.close_all("this sidecar's own SVID expired"),
    };
    for (key, reason) in closed {
        shared.metrics.authz(Verdict::Terminate, "recheck");
        tracing::info!(source = %key.source_text(), port = key.port, %reason, "closing a live tunnel");
    }
}

/// Re-checks the live table whenever the policy changes, the trust bundle or its deny
/// list changes, a time-bound grant opens or lapses, or this sidecar's own SVID expires.
pub(crate) async fn watch_policy(shared: Arc<Shared>) {
    let mut changes = shared.policy_changes();
    let mut bundle_changes = shared.identity.bundle_changes.subscribe();
    loop {
        let now = unix_now();
        let next = [
            shared.policies().next_grant_change(now),
            shared.identity.store.current().map(|svid| svid.not_after),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t >= now)
        .min();
        // No known next event: look again in a while.
        let wait = next.map_or(Duration::from_secs(30), |t| {
            Duration::from_secs((t - now) as u64 + 1)
        });
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            changed = bundle_changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
        recheck_tunnels(&shared);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::path::Path;

    use airlock_policy::load::{Documents, parse_file};

    use super::*;
    use crate::metrics::AuthzLabels;

    const TARGET: &str = "spiffe://td/ns/pay/sa/api";
    const CALLER: &str = "spiffe://td/ns/shop/sa/checkout";

    fn set(action: &str) -> Arc<PolicySet> {
        let yaml = format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {}, namespace: pay}}\nspec:\n  selector: {{identities: [\"{TARGET}\"]}}\n  action: {action}\n  rules:\n  - from: [{{source: {{principals: [\"{CALLER}\"]}}}}]\n",
            action.to_lowercase()
        );
        let mut documents = Documents::default();
        let mut errors = Vec::new();
        parse_file(Path::new("test.yaml"), &yaml, &mut documents, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        Arc::new(PolicySet::new(documents.policies))
    }

    fn key() -> TunnelKey {
        TunnelKey {
            source: Some(SpiffeId::parse(CALLER).unwrap()),
            source_svid: None,
            source_ip: "10.0.0.7".parse().unwrap(),
            port: 8080,
            http: None,
        }
    }

    fn count(metrics: &Metrics, decision: Verdict, policy: &str) -> u64 {
        metrics
            .authz
            .get_or_create(&AuthzLabels {
                decision,
                policy: policy.to_owned(),
            })
            .get()
    }

    /// What a [`Judge`] borrows: an empty live table, fresh metrics, the target.
    struct Fixture {
        tunnels: Arc<Tunnels>,
        metrics: Metrics,
        target: SpiffeId,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                tunnels: Arc::new(Tunnels::default()),
                metrics: Metrics::default(),
                target: SpiffeId::parse(TARGET).unwrap(),
            }
        }

        /// A judge at time 0 with the default deny.
        fn judge(&self) -> Judge<'_> {
            Judge {
                tunnels: &self.tunnels,
                metrics: &self.metrics,
                target: &self.target,
                default: DefaultMode::Deny,
                now: 0,
            }
        }
    }

    /// Admits `key()` while `policies()` answers the given sets, one per call (the
    /// last one from then on), and reports the outcome, the live count and the metrics.
    fn admit_across(sets: &[Arc<PolicySet>]) -> (bool, usize, Metrics) {
        let fixture = Fixture::new();
        let tunnels = &fixture.tunnels;
        let judge = fixture.judge();
        let calls = RefCell::new(0);
        let policies = || {
            let mut calls = calls.borrow_mut();
            *calls += 1;
            sets[(*calls - 1).min(sets.len() - 1)].clone()
        };
        let (decision, admission) = judge.admit(&key(), policies);
        assert_eq!(decision.allowed, admission.is_some());
        let live = *tunnels.watch_count().borrow();
        drop(admission);
        assert_eq!(
            *tunnels.watch_count().borrow(),
            0,
            "the guard left the table"
        );
        (decision.allowed, live, fixture.metrics)
    }

    #[test]
    fn each_decision_is_counted_once_under_the_decision_that_stood() {
        let (allow, deny) = (set("ALLOW"), set("DENY"));
        // (sets policies() answers in turn, allowed, live while admitted,
        //  allow-policy count, deny-policy count, why)
        let cases = [
            (
                vec![allow.clone()],
                true,
                1,
                1,
                0,
                "allowed: counted and registered",
            ),
            (
                vec![deny.clone()],
                false,
                0,
                0,
                1,
                "denied: counted, never registered",
            ),
            (
                vec![allow.clone(), deny.clone()],
                false,
                0,
                0,
                1,
                "a swap to DENY while deciding: denied, under the DENY policy",
            ),
            (
                vec![deny.clone(), allow.clone()],
                false,
                0,
                0,
                1,
                "denied first: not decided again",
            ),
            (
                vec![allow.clone(), set("ALLOW")],
                true,
                1,
                1,
                0,
                "a swap to an equal set: allowed once",
            ),
        ];
        for (sets, allowed, live, allows, denies, why) in cases {
            let (got, got_live, metrics) = admit_across(&sets);
            assert_eq!(got, allowed, "{why}");
            assert_eq!(got_live, live, "{why}");
            assert_eq!(
                count(&metrics, Verdict::Allow, "pay/allow"),
                allows,
                "{why}"
            );
            assert_eq!(count(&metrics, Verdict::Deny, "pay/deny"), denies, "{why}");
            let stray = count(&metrics, Verdict::Allow, "pay/deny")
                + count(&metrics, Verdict::Deny, "pay/allow");
            assert_eq!(stray, 0, "{why}: counted under the wrong label");
        }
    }

    #[test]
    fn a_recheck_cuts_what_the_new_policy_denies() {
        let fixture = Fixture::new();
        let (tunnels, target) = (&fixture.tunnels, &fixture.target);
        let judge = fixture.judge();
        let allow = set("ALLOW");
        let nothing_revoked = airlock_identity::Revocations::default();
        let (_, admission) = judge.admit(&key(), || allow.clone());
        let mut admission = admission.expect("allowed");
        assert!(
            tunnels
                .recheck(&allow, target, DefaultMode::Deny, 0, &nothing_revoked)
                .is_empty()
        );
        assert!(admission.cancelled.try_recv().is_err(), "still allowed");
        let cut = tunnels.recheck(&set("DENY"), target, DefaultMode::Deny, 0, &nothing_revoked);
        assert_eq!(cut.len(), 1);
        assert!(cut[0].1.contains("pay/deny"), "{}", cut[0].1);
        assert!(admission.cancelled.try_recv().is_ok(), "told to close");
        assert_eq!(*tunnels.watch_count().borrow(), 0);
    }
}
