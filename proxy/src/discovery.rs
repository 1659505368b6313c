//! Following `airlock control` (the `discovery` section): one gRPC subscription over the
//! sidecar's own mTLS, the controller's SPIFFE ID pinned. The first update is a full
//! snapshot (or confirms the version the sidecar holds), later ones are changes; an
//! update may come in several messages, put together first. Each update is applied
//! whole or not at all (the services as registry entries, the policies through the
//! policy loader) and acknowledged with its version, or refused with the reason while
//! the sidecar keeps what it had.
//!
//! When the controller is away the sidecar keeps its last view and reconnects with
//! jittered exponential backoff. Each applied view is written to `cache_file`, so a
//! restart during an outage starts from the mesh it knew; until a first view (from the
//! controller or the cache) is applied, the sidecar is not ready.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_api::client;
use airlock_api::proto::{Ack, MeshUpdate, Policy as WirePolicy, Service as WireService};
use airlock_identity::{PeerMatch, tls};
use airlock_policy::Policy;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prost::Message;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;
use crate::config::{DiscoveryConfig, Services};
use crate::lifecycle::unix_now;

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The view the sidecar holds, as it came over the wire.
#[derive(Debug, Clone, Default, PartialEq)]
struct Held {
    version: String,
    services: BTreeMap<String, WireService>,
    policies: BTreeMap<String, WirePolicy>,
}

impl Held {
    /// This view with `update` applied (a snapshot replaces everything).
    fn with(&self, update: MeshUpdate) -> Self {
        let mut next = if update.full {
            Self::default()
        } else {
            self.clone()
        };
        next.version = update.version;
        for name in &update.removed_services {
            next.services.remove(name);
        }
        for key in &update.removed_policies {
            next.policies.remove(key);
        }
        for service in update.services {
            next.services.insert(service.name.clone(), service);
        }
        for policy in update.policies {
            let key = format!("{}/{}", policy.namespace, policy.name);
            next.policies.insert(key, policy);
        }
        next
    }

    /// The whole view as one snapshot: what the cache file holds.
    fn snapshot(&self) -> MeshUpdate {
        MeshUpdate {
            version: self.version.clone(),
            full: true,
            services: self.services.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            ..MeshUpdate::default()
        }
    }

    /// The registry entries and policies the view stands for; the first error names
    /// the service (and field) or the policy's source, file:line:column.
    fn compile(&self, shared: &Shared) -> Result<(Services, Vec<Policy>), String> {
        let trust_domain = &shared.config.identity.trust_domain;
        let mut services = Services::new();
        for (name, wire) in &self.services {
            let service = airlock_api::service_from_wire(wire).map_err(|e| e.to_string())?;
            service.validate(name, trust_domain)?;
            services.insert(name.clone(), service);
        }
        let mut policies = Vec::new();
        for wire in self.policies.values() {
            let read = airlock_policy::load::parse_text(Path::new(&wire.source), &wire.document)
                .map_err(|errors| airlock_policy::load::joined(&errors))?;
            policies.extend(read.policies);
        }
        Ok((services, policies))
    }
}

/// What the sidecar knows of its controller, for readiness, metrics and `/status`.
#[derive(Debug, Default)]
pub(crate) struct Discovery {
    held: Mutex<Held>,
    /// True once a view (from the controller or the cache) was applied.
    synced: AtomicBool,
    /// True while a subscription is open.
    connected: AtomicBool,
    /// When the held view was last applied or confirmed (Unix seconds); 0: never.
    applied_at: AtomicI64,
}

impl Discovery {
    /// True once a first view was applied.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// `/status`'s `controller` section.
    pub(crate) fn status(&self, config: &DiscoveryConfig, now: i64) -> serde_json::Value {
        let applied_at = self.applied_at.load(Ordering::Relaxed);
        serde_json::json!({
            "url": config.url,
            "identity": config.identity.to_string(),
            "connected": self.connected.load(Ordering::Relaxed),
            "synced": self.is_synced(),
            "version": self.lock().version,
            "services": self.lock().services.len(),
            "policies": self.lock().policies.len(),
            "applied_at": (applied_at > 0).then_some(applied_at),
            "age_s": (applied_at > 0).then(|| now - applied_at),
        })
    }

    /// Seconds since the held view was last applied or confirmed; `None` before any.
    pub(crate) fn age(&self, now: i64) -> Option<i64> {
        let at = self.applied_at.load(Ordering::Relaxed);
        (at > 0).then(|| now - at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl prometheus_client::collector::Collector for Discovery {
    /// `airlock_discovery_snapshot_age_seconds` (once a view was applied) and
    /// `airlock_discovery_version_info{version}`, computed at each scrape so that an idle
    /// sidecar does no work to keep them fresh.
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(age) = self.age(unix_now()) {
            let gauge = ConstGauge::new(age);
            let metric = encoder.encode_descriptor(
                "airlock_discovery_snapshot_age_seconds",
                "Seconds since the controller's view was last applied or confirmed",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        let version = self.lock().version.clone();
        if !version.is_empty() {
            let info = ConstGauge::new(1);
            let mut family = encoder.encode_descriptor(
                "airlock_discovery_version_info",
                "The version of the controller's view the sidecar holds",
                None,
                info.metric_type(),
            )?;
            let labels = [("version", version)];
            info.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Applies `update` to what the sidecar holds, all or nothing; `Err` says why not.
fn apply(shared: &Shared, update: MeshUpdate) -> Result<(), String> {
    let discovery = &shared.discovery;
    let mut held = discovery.lock();
    let next = held.with(update);
    if next != *held {
        let (services, policies) = next.compile(shared)?;
        shared
            .policy
            .set_pushed(policies, &next.version)
            .map_err(|errors| airlock_policy::load::joined(&errors))?;
        shared.set_discovered(services);
        shared.metrics.discovery_updates.inc();
        tracing::info!(
            version = %next.version,
            services = next.services.len(),
            policies = next.policies.len(),
            "applied the controller's mesh view"
        );
    }
    *held = next;
    discovery.synced.store(true, Ordering::Relaxed);
    discovery.applied_at.store(unix_now(), Ordering::Relaxed);
    Ok(())
}

/// The cache file's bytes, refused when it is larger than any view the sidecar would
/// have taken from a controller.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let limit = airlock_api::pieces::MAX_VIEW_BYTES;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(std::io::Error::other(format!("it is over {limit} bytes")));
    }
    Ok(bytes)
}

/// Applies the cache file, if there is one, before the listeners serve: a restart while
/// the controller is away comes back with the mesh it knew. A cache that cannot be read
/// or applied is logged and ignored (the controller's snapshot will replace it).
pub(crate) fn restore(shared: &Shared, cache_file: &Path) {
    let bytes = match read_bounded(cache_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(cache_file = %cache_file.display(), error = %e, "cannot read the discovery cache");
            return;
        }
    };
    let restored = MeshUpdate::decode(bytes.as_slice())
        .map_err(|e| e.to_string())
        .and_then(|snapshot| {
            if snapshot.full {
                apply(shared, snapshot)
            } else {
                Err("it holds no snapshot".into())
            }
        });
    match restored {
        Ok(()) => tracing::info!(
            cache_file = %cache_file.display(),
            version = %shared.discovery.lock().version,
            "restored the mesh view from the discovery cache"
        ),
        Err(e) => {
            tracing::warn!(cache_file = %cache_file.display(), error = %e, "ignoring the discovery cache");
        }
    }
}

/// Writes the held view to `cache_file` (a temporary file renamed over it, mode 0600).
fn save(shared: &Shared, cache_file: &Path) {
    let bytes = shared.discovery.lock().snapshot().encode_to_vec();
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let temporary = cache_file.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, cache_file)
    };
    if let Err(e) = write() {
        tracing::warn!(cache_file = %cache_file.display(), error = %e, "cannot write the discovery cache");
    }
}

/// Follows the controller for as long as the sidecar runs.
pub(crate) async fn follow(shared: Arc<Shared>, config: DiscoveryConfig) {
    let mut backoff = BACKOFF_START;
    let mut first = true;
    loop {
        if !first {
            shared.metrics.discovery_reconnects.inc();
        }
        first = false;
        let mut applied = false;
        let ended = subscribe(&shared, &config, &mut applied).await;
        if applied {
            // It worked for a while: the next try comes soon, however it ended.
            backoff = BACKOFF_START;
        }
        match ended {
            Ok(()) => {}
            Err(error) => {
                let serving_on = shared.discovery.lock().version.clone();
                tracing::warn!(
                    url = %config.url,
                    error = %error,
                    serving_on = %serving_on,
                    retry_in_ms = backoff.as_millis() as u64,
                    "controller unreachable; keeping the last mesh view"
                );
            }
        }
        shared.discovery.connected.store(false, Ordering::Relaxed);
        let wait = backoff.mul_f64(rand::thread_rng().gen_range(0.8..=1.2));
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::time::sleep(wait).await;
    }
}

/// The longest refusal message an ack carries (the controller reads acks of at most
/// 16 KiB).
const MAX_ACK_ERROR_BYTES: usize = 4096;

/// One subscription, until the controller or the connection ends it; `applied` turns
/// true once an update was applied.
async fn subscribe(
    shared: &Shared,
    config: &DiscoveryConfig,
    applied: &mut bool,
) -> Result<(), String> {
    let mut client = connect(shared, config).await?;
    let (acks, ack_stream) = mpsc::channel(4);
    let held_version = shared.discovery.lock().version.clone();
    acks.try_send(Ack {
        version: held_version.clone(),
        error: String::new(),
    })
    .expect("a new channel has room");
    let mut updates = client
        .watch(ReceiverStream::new(ack_stream))
        .await
        .map_err(|status| format!("Watch: {status}"))?
        .into_inner();
    shared.discovery.connected.store(true, Ordering::Relaxed);
    tracing::info!(url = %config.url, "subscribed to the controller");
    let mut reassembly = airlock_api::pieces::Reassembly::default();
    let mut first = true;
    while let Some(message) = updates
        .message()
        .await
        .map_err(|status| format!("stream: {status}"))?
    {
        // A protocol error ends the subscription; the next one starts from a snapshot.
        let Some(update) = reassembly.push(message)? else {
            continue;
        };
        // The first update builds on nothing but what this sidecar said it holds.
        if std::mem::take(&mut first) && !update.full && update.version != held_version {
            return Err(format!(
                "the first update ({}) is neither a snapshot nor a confirmation of {held_version}",
                update.version
            ));
        }
        let version = update.version.clone();
        let error = match apply(shared, update) {
            Ok(()) => {
                *applied = true;
                if let Some(file) = &config.cache_file {
                    save(shared, file);
                }
                String::new()
            }
            Err(error) => {
                shared.metrics.discovery_refused.inc();
                tracing::error!(version = %version, error = %error, "refused the controller's update; keeping the last mesh view");
                truncated(error, MAX_ACK_ERROR_BYTES)
            }
        };
        if acks.send(Ack { version, error }).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// `text` cut to at most `limit` bytes, at a character boundary.
fn truncated(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A client on a new mTLS connection to the controller, its identity pinned.
async fn connect(shared: &Shared, config: &DiscoveryConfig) -> Result<client::Client, String> {
    let (host, port) = config.address()?;
    let identity = &shared.identity;
    let tls = tls::client_config(
        identity.store.clone(),
        identity.bundle.clone(),
        PeerMatch::Exactly(config.identity.clone()),
        &[b"h2"],
    );
    client::connect(&client::Dial {
        host,
        port,
        tls: Arc::new(tls),
        timeout: shared.config.limits.connect_timeout,
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, endpoint: &str) -> WireService {
        WireService {
            name: name.into(),
            identity: format!("spiffe://td/ns/shop/sa/{name}"),
            endpoints: vec![airlock_api::proto::Endpoint {
                address: endpoint.into(),
                ready: true,
                ..Default::default()
            }],
            ..WireService::default()
        }
    }

    fn policy(name: &str) -> WirePolicy {
        WirePolicy {
            namespace: "shop".into(),
            name: name.into(),
            ..WirePolicy::default()
        }
    }

    #[test]
    fn updates_change_only_what_they_name_and_a_snapshot_replaces_all() {
        let held = Held::default().with(MeshUpdate {
            version: "v1".into(),
            full: true,
            services: vec![
                service("a", "10.0.0.1:15008"),
                service("b", "10.0.0.2:15008"),
            ],
            policies: vec![policy("p"), policy("q")],
            ..MeshUpdate::default()
        });
        assert_eq!(held.services.len(), 2);
        let changed = held.with(MeshUpdate {
            version: "v2".into(),
            services: vec![service("a", "10.0.0.9:15008")],
            removed_services: vec!["b".into()],
            removed_policies: vec!["shop/q".into()],
            ..MeshUpdate::default()
        });
        assert_eq!(changed.version, "v2");
        assert_eq!(changed.services.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(changed.services["a"].endpoints[0].address, "10.0.0.9:15008");
        assert_eq!(changed.policies.keys().collect::<Vec<_>>(), ["shop/p"]);
        let replaced = changed.with(MeshUpdate {
            version: "v3".into(),
            full: true,
            services: vec![service("c", "10.0.0.3:15008")],
            ..MeshUpdate::default()
        });
        assert_eq!(replaced.services.keys().collect::<Vec<_>>(), ["c"]);
        assert!(
            replaced.policies.is_empty(),
            "a snapshot forgets what it does not list"
        );
        let round_trip = Held::default().with(replaced.snapshot());
        assert_eq!(
            round_trip, replaced,
            "the cache's snapshot holds the whole view"
        );
    }
}
