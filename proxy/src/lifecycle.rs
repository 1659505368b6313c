//! The sidecar's identity over time: first SVID with the token file, renewal over mTLS at
//! about half its lifetime (±10 % jitter), exponential backoff while the CA is away, the
//! trust bundle kept fresh, and fail-closed once the SVID has expired.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_ca::client::{CaClient, ClientError};
use airlock_identity::{BundleStore, LeafSvid, Revocations, SvidStore, TrustBundle, TrustDomain};
use rand::Rng;
use tokio::sync::watch;

use crate::metrics::Metrics;

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Without a valid SVID nothing flows: retry more eagerly to recover soon after the CA does.
const BACKOFF_MAX_WHEN_EXPIRED: Duration = Duration::from_secs(5);

/// The live identity material every listener and the pool read.
#[derive(Debug)]
pub(crate) struct Identity {
    pub store: Arc<SvidStore>,
    pub bundle: Arc<BundleStore>,
    /// Counts bundle replacements (roots or deny list), so that live connections and
    /// tunnels are re-checked against a new deny list at once.
    pub bundle_changes: watch::Sender<u64>,
}

impl Identity {
    /// Identity material starting from `bundle`, with no SVID yet.
    pub(crate) fn new(store: Arc<SvidStore>, bundle: Arc<BundleStore>) -> Self {
        Self {
            store,
            bundle,
            bundle_changes: watch::Sender::new(0),
        }
    }

    /// How `svid` (a peer's) stands on the deny list now: `None` when it is not revoked.
    pub(crate) fn revoked(&self, svid: &LeafSvid) -> Option<airlock_identity::Revoked> {
        self.bundle.current().revocations().check(svid)
    }

    /// The current SVID, if it is valid at `now` (Unix seconds).
    pub(crate) fn valid_svid(&self, now: i64) -> Option<LeafSvid> {
        self.store
            .current()
            .filter(|svid| svid.not_before <= now && now < svid.not_after)
    }
}

pub(crate) fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The current time as RFC 3339 (UTC, milliseconds), for log lines.
pub(crate) fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Keeps an SVID installed for as long as the process runs.
pub(crate) async fn maintain_svid(
    identity: Arc<Identity>,
    client: CaClient,
    token_file: PathBuf,
    ttl: Option<Duration>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = BACKOFF_START;
    // After the CA refused a renewal, the next attempt presents the token again.
    let mut renewal_refused = false;
    loop {
        let renewing = identity.valid_svid(unix_now()).is_some() && !renewal_refused;
        let result = if renewing {
            client.obtain_svid(None, ttl).await
        } else {
            match read_token(&token_file).await {
                Ok(token) => client.obtain_svid(Some(&token), ttl).await,
                Err(e) => Err(e),
            }
        };
        let wait = match result.and_then(|credentials| install(&identity, credentials)) {
            Ok(svid) => {
                metrics.cert_refreshes.inc();
                metrics.cert_expiry_seconds.set(svid.not_after);
                tracing::info!(
                    identity = %svid.id,
                    serial = %svid.serial_hex,
                    not_after = svid.not_after,
                    how = if renewing { "renewal" } else { "token" },
                    "installed a new SVID"
                );
                backoff = BACKOFF_START;
                renewal_refused = false;
                renewal_delay(&svid, unix_now())
            }
            Err(error) => {
                metrics.cert_refresh_failures.inc();
                renewal_refused =
                    matches!(&error, ClientError::Refused { status, .. } if status.as_u16() == 401);
                let valid = identity.valid_svid(unix_now()).is_some();
                tracing::warn!(
                    error = %error,
                    serving_on_current = valid,
                    retry_in_ms = backoff.as_millis() as u64,
                    "could not obtain an SVID"
                );
                let cap = if valid {
                    BACKOFF_MAX
                } else {
                    BACKOFF_MAX_WHEN_EXPIRED
                };
                let wait = jittered(backoff.min(cap));
                backoff = (backoff * 2).min(cap);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// The join token or service-account JWT, re-read each time (the kubelet rotates it).
async fn read_token(path: &std::path::Path) -> Result<String, ClientError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| ClientError::Connect {
            addr: "token file".into(),
            reason: format!("{}: {e}", path.display()),
        })?;
    Ok(text.trim().to_owned())
}

fn install(
    identity: &Identity,
    credentials: airlock_ca::client::Credentials,
) -> Result<LeafSvid, ClientError> {
    let current = identity.bundle.current();
    // The answer carries the CA's current bundle: trust a rotated root before it is used.
    // It has no deny list; the one fetched last stays.
    let pem: String = credentials.response.bundle.concat();
    if let Ok(bundle) = TrustBundle::from_pem(
        current.trust_domain().clone(),
        pem.as_bytes(),
        "CA /v1/svid answer",
    ) {
        replace_if_changed(
            identity,
            bundle.with_revocations(current.revocations().clone()),
        );
    }
    identity
        .store
        .install(credentials.chain, credentials.key)
        .map_err(|e| ClientError::BadResponse(e.to_string()))
}

fn replace_if_changed(identity: &Identity, bundle: TrustBundle) {
    let current = identity.bundle.current();
    if current.roots() != bundle.roots() || current.revocations() != bundle.revocations() {
        let revoked = bundle.revocations().document();
        tracing::info!(
            roots = bundle.roots().len(),
            revoked_serials = revoked.serials.len(),
            revoked_identities = revoked.spiffe_ids.len(),
            "trust bundle changed"
        );
        identity.bundle.replace(bundle);
        identity.bundle_changes.send_modify(|count| *count += 1);
    }
}

/// Half the remaining lifetime, ±10 %. Counted from now rather than NotBefore, which the
/// CA backdates: for a fresh SVID this is half its lifetime.
fn renewal_delay(svid: &LeafSvid, now: i64) -> Duration {
    let remaining = (svid.not_after - now).max(0) as f64;
    let fraction = rand::thread_rng().gen_range(0.4..=0.6);
    Duration::from_secs_f64((remaining * fraction).max(1.0))
}

fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::thread_rng().gen_range(0.8..=1.2))
}

/// Fetches the trust bundle and its deny list at once (the bundle file a sidecar starts
/// from has no deny list), then every `every`.
pub(crate) async fn refresh_bundle(
    identity: Arc<Identity>,
    client: CaClient,
    trust_domain: TrustDomain,
    every: Duration,
    metrics: Arc<Metrics>,
) {
    loop {
        let fetched = client
            .fetch_trust()
            .await
            .map_err(|e| e.to_string())
            .and_then(|(pem, revocations)| {
                let revocations = Revocations::new(revocations, unix_now());
                TrustBundle::from_pem(trust_domain.clone(), pem.as_bytes(), "CA /v1/bundle")
                    .map(|bundle| bundle.with_revocations(revocations))
                    .map_err(|e| e.to_string())
            });
        match fetched {
            Ok(bundle) => replace_if_changed(&identity, bundle),
            Err(error) => {
                metrics.bundle_refresh_failures.inc();
                tracing::warn!(error = %error, "trust bundle refresh failed; keeping the current bundle");
            }
        }
        tokio::time::sleep(jittered(every)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_lands_between_40_and_60_percent_of_what_is_left() {
        let svid = LeafSvid {
            id: airlock_identity::SpiffeId::parse("spiffe://td/x").unwrap(),
            not_before: 1000,
            not_after: 2000,
            serial_hex: String::new(),
        };
        for _ in 0..100 {
            let delay = renewal_delay(&svid, 1000).as_secs_f64();
            assert!((400.0..=600.0).contains(&delay), "{delay}");
            let later = renewal_delay(&svid, 1500).as_secs_f64();
            assert!(
                (200.0..=300.0).contains(&later),
                "half of what is left: {later}"
            );
        }
        assert_eq!(
            renewal_delay(&svid, 5000),
            Duration::from_secs(1),
            "overdue: right away"
        );
    }
}
