//! A workload's identity over time, for every process that holds an SVID of this CA
//! (the sidecar, the controller): the first SVID with the token file, renewal over mTLS at
//! about half its lifetime (±10 % jitter), exponential backoff while the CA is away, the
//! trust bundle and its deny list kept fresh, and fail-closed once the SVID has expired.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_identity::{BundleStore, LeafSvid, Revocations, SvidStore, TrustBundle, TrustDomain};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{CaClient, ClientError};

/// What the upkeep counts; register it under the process's prefix with
/// [`Metrics::register`]. Clones share their values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// NotAfter of the current SVID (Unix seconds).
    pub expiry_seconds: Gauge,
    /// SVIDs obtained.
    pub refreshes: Counter,
    /// Failed attempts to obtain an SVID.
    pub refresh_failures: Counter,
    /// Failed trust bundle refreshes.
    pub bundle_refresh_failures: Counter,
}

impl Metrics {
    /// Registers the four metrics in `registry` (the caller's prefix applies).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cert_expiry_timestamp_seconds",
            "NotAfter of the current SVID (Unix seconds)",
            self.expiry_seconds.clone(),
        );
        registry.register(
            "cert_refreshes",
            "SVIDs obtained from the CA",
            self.refreshes.clone(),
        );
        registry.register(
            "cert_refresh_failures",
            "Failed attempts to obtain an SVID",
            self.refresh_failures.clone(),
        );
        registry.register(
            "bundle_refresh_failures",
            "Failed trust bundle refreshes",
            self.bundle_refresh_failures.clone(),
        );
    }
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Without a valid SVID nothing flows: retry more eagerly to recover soon after the CA does.
const BACKOFF_MAX_WHEN_EXPIRED: Duration = Duration::from_secs(5);

/// The live identity material every listener and the pool read.
#[derive(Debug)]
pub struct Identity {
    /// This workload's SVID, installed by [`maintain_svid`].
    pub store: Arc<SvidStore>,
    /// The trust bundle (roots and deny list), refreshed by [`refresh_bundle`].
    pub bundle: Arc<BundleStore>,
    /// Counts bundle replacements (roots or deny list), so that live connections and
    /// tunnels are re-checked against a new deny list at once.
    pub bundle_changes: watch::Sender<u64>,
}

impl Identity {
    /// Identity material starting from `bundle`, with no SVID yet.
    pub fn new(store: Arc<SvidStore>, bundle: Arc<BundleStore>) -> Self {
        Self {
            store,
            bundle,
            bundle_changes: watch::Sender::new(0),
        }
    }

    /// How `svid` (a peer's) stands on the deny list now: `None` when it is not revoked.
    pub fn revoked(&self, svid: &LeafSvid) -> Option<airlock_identity::Revoked> {
        self.bundle.current().revocations().check(svid)
    }

    /// The current SVID, if it is valid at `now` (Unix seconds).
    pub fn valid_svid(&self, now: i64) -> Option<LeafSvid> {
        self.store
            .current()
            .filter(|svid| svid.not_before <= now && now < svid.not_after)
    }
}

/// What the upkeep of [`spawn_upkeep`] needs besides the CA client.
#[derive(Debug, Clone)]
pub struct Upkeep {
    /// The join token or service-account JWT, re-read at every use.
    pub token_file: PathBuf,
    /// The SVID lifetime to ask for; `None`: the CA's default.
    pub ttl: Option<Duration>,
    /// The trust domain of the bundle.
    pub trust_domain: TrustDomain,
    /// How often the bundle and deny list are fetched.
    pub bundle_refresh: Duration,
}

/// Starts both halves of the upkeep, [`maintain_svid`] and [`refresh_bundle`], as tasks
/// that run until aborted.
pub fn spawn_upkeep(
    identity: &Arc<Identity>,
    client: CaClient,
    upkeep: Upkeep,
    metrics: &Metrics,
) -> [JoinHandle<()>; 2] {
    [
        tokio::spawn(maintain_svid(
            identity.clone(),
            client.clone(),
            upkeep.token_file,
            upkeep.ttl,
            metrics.clone(),
        )),
        tokio::spawn(refresh_bundle(
            identity.clone(),
            client,
            upkeep.trust_domain,
            upkeep.bundle_refresh,
            metrics.clone(),
        )),
    ]
}

/// Keeps an SVID installed for as long as the process runs.
pub async fn maintain_svid(
    identity: Arc<Identity>,
    client: CaClient,
    token_file: PathBuf,
    ttl: Option<Duration>,
    metrics: Metrics,
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
                metrics.refreshes.inc();
                metrics.expiry_seconds.set(svid.not_after);
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
                metrics.refresh_failures.inc();
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
    credentials: crate::client::Credentials,
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
pub async fn refresh_bundle(
    identity: Arc<Identity>,
    client: CaClient,
    trust_domain: TrustDomain,
    every: Duration,
    metrics: Metrics,
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
