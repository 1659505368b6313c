//! `ca serve` follows its files without a restart, checking them every two seconds:
//!
//! - the deny list (`revocation_file`): `ca revoke` takes effect within seconds, for
//!   issuance and renewal (401, over a handshake that still succeeds);
//! - the Kubernetes JWKS (`kubernetes.jwks_file`, a ConfigMap the cluster's key rotation
//!   updates);
//! - with the passphrase at hand, the issuing pair, the bundle and the rotation state, so
//!   `ca rotate` (or an updated Secret) applies at once, and a retired root leaves the
//!   bundle at its drop time.
//!
//! A change that does not load keeps what was live and is logged; the next change is
//! tried again. `ca.yaml` itself is read at start only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airlock_identity::{BundleStore, Revocations};
use arc_swap::{ArcSwap, ArcSwapOption};

use crate::authority::CertificateAuthority;
use crate::jwt::{JwksLoadError, KubernetesAuthenticator};
use crate::keys::{KeyFileAccess, Passphrase};
use crate::revocations::RevocationError;
use crate::rotation::PREVIOUS_ISSUING;

const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
const KEY_FILES: [&str; 5] = [
    "issuing.pem",
    "issuing.key",
    "bundle.pem",
    PREVIOUS_ISSUING,
    "rotation.json",
];

/// What a file looks like from outside: enough to notice an atomic replacement (a new
/// inode) or an edit in place (time or length). `None`: the file is missing.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks: a Kubernetes volume swaps its `..data` link.
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

#[derive(Clone, PartialEq)]
struct Stamps {
    revocations: Stamp,
    jwks: Stamp,
    keys: Vec<Stamp>,
}

impl Stamps {
    fn of(ca: &CertificateAuthority) -> Self {
        let dir = ca.dir();
        Self {
            revocations: stamp(&dir.join(&ca.config().revocation_file)),
            jwks: ca
                .config()
                .kubernetes
                .as_ref()
                .and_then(|k| stamp(&dir.join(&k.jwks_file))),
            keys: KEY_FILES
                .iter()
                .map(|name| stamp(&dir.join(name)))
                .collect(),
        }
    }
}

/// Why the live state cannot be read at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `ca.yaml` enables Kubernetes authentication, but its JWKS does not load.
    #[error(transparent)]
    Jwks(#[from] JwksLoadError),
    /// The deny list exists but cannot be read or does not parse.
    #[error(transparent)]
    Revocations(#[from] RevocationError),
}

/// What the CA's API serves from, each part swapped whole when its files change.
pub struct LiveCa {
    ca: ArcSwap<CertificateAuthority>,
    revocations: ArcSwap<Revocations>,
    kubernetes: ArcSwapOption<KubernetesAuthenticator>,
    /// The roots the API's own TLS verifier trusts. Not the deny list: a revoked client
    /// is refused by the API with a 401 it can act on (authenticate with its token),
    /// where a failed handshake would also keep it from fetching the bundle.
    tls_bundle: Arc<BundleStore>,
    /// Unlocks a rotated issuing key; `None`: the issuer is fixed for the process's life.
    keys: Option<(Passphrase, KeyFileAccess)>,
    /// The files as they were just before this state was read, so that a change made
    /// while it was being read is not missed.
    loaded: Stamps,
}

impl LiveCa {
    /// The live state of a loaded CA: its deny list, and its Kubernetes JWKS when
    /// `ca.yaml` enables that method.
    pub fn new(ca: CertificateAuthority) -> Result<Self, StartError> {
        let loaded = Stamps::of(&ca);
        let kubernetes = ca
            .config()
            .kubernetes
            .clone()
            .map(|k| KubernetesAuthenticator::load(k, ca.dir(), ca.trust_domain().clone()))
            .transpose()?;
        let revocations = ca.revocation_store().load(unix_now())?;
        Ok(Self {
            tls_bundle: BundleStore::new(ca.bundle().clone()),
            kubernetes: ArcSwapOption::from(kubernetes.map(Arc::new)),
            revocations: ArcSwap::from_pointee(revocations),
            ca: ArcSwap::from_pointee(ca),
            keys: None,
            loaded,
        })
    }

    /// Also reloads the issuing pair and the bundle when `ca rotate` (or a Secret update)
    /// changes them, unlocking the new key with `passphrase`.
    pub fn reloading_keys(mut self, passphrase: Passphrase, access: KeyFileAccess) -> Self {
        self.keys = Some((passphrase, access));
        self
    }

    /// The CA as loaded now; a reload swaps in a new one, so take it afresh per request.
    pub fn ca(&self) -> Arc<CertificateAuthority> {
        self.ca.load_full()
    }

    /// The deny list in force, as last loaded.
    pub fn revocations(&self) -> Arc<Revocations> {
        self.revocations.load_full()
    }

    /// The service-account token verifier with the current JWKS; `None` when `ca.yaml`
    /// has no `kubernetes` section.
    pub fn kubernetes(&self) -> Option<Arc<KubernetesAuthenticator>> {
        self.kubernetes.load_full()
    }

    /// The roots the API's TLS verifier trusts; replaced with the CA's bundle whenever the
    /// keys reload.
    pub fn tls_bundle(&self) -> Arc<BundleStore> {
        self.tls_bundle.clone()
    }
}

/// Checks the followed files every two seconds and reloads what changed (see the module
/// documentation). Runs until aborted.
pub async fn watch(api: Arc<LiveCa>) {
    let mut seen = api.loaded.clone();
    loop {
        tokio::time::sleep(RELOAD_INTERVAL).await;
        let ca = api.ca();
        let now = Stamps::of(&ca);
        if now == seen && !root_drop_due(&ca) {
            continue;
        }
        if now.revocations != seen.revocations {
            reload_revocations(&api, &ca);
        }
        if now.jwks != seen.jwks {
            reload_jwks(&api, &ca);
        }
        if now.keys != seen.keys || root_drop_due(&ca) {
            reload_keys(&api, ca.dir().to_owned());
        }
        seen = now;
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn root_drop_due(ca: &CertificateAuthority) -> bool {
    ca.next_root_drop().is_some_and(|at| at <= unix_now())
}

fn reload_revocations(api: &LiveCa, ca: &CertificateAuthority) {
    let store = ca.revocation_store();
    // A list that existed and vanished is a mistake (a mount gone, a wrong path), not an
    // operator lifting every revocation: they write an empty list for that.
    if !store.path().exists() && !api.revocations().is_empty() {
        tracing::error!(
            path = %store.path().display(),
            "the deny list is gone; keeping the last one (write {{}} to it to lift every entry)"
        );
        return;
    }
    match store.load(unix_now()) {
        Ok(list) => {
            tracing::info!(
                target: "airlock::audit",
                event = "revocations_loaded",
                serials = list.document().serials.len(),
                identities = list.document().spiffe_ids.len(),
                "deny list reloaded"
            );
            api.revocations.store(Arc::new(list));
        }
        Err(e) => {
            tracing::error!(error = %e, "the changed deny list does not load; keeping the previous one")
        }
    }
}

fn reload_jwks(api: &LiveCa, ca: &CertificateAuthority) {
    let Some(config) = ca.config().kubernetes.clone() else {
        return;
    };
    match KubernetesAuthenticator::load(config, ca.dir(), ca.trust_domain().clone()) {
        Ok(authenticator) => {
            tracing::info!("Kubernetes JWKS reloaded");
            api.kubernetes.store(Some(Arc::new(authenticator)));
        }
        Err(e) => {
            tracing::error!(error = %e, "the changed JWKS does not load; keeping the previous keys")
        }
    }
}

/// The issuer and bundle from their files, under the settings the process started with
/// (`ca.yaml` is read at start only).
fn reload_keys(api: &LiveCa, dir: PathBuf) {
    let Some((passphrase, access)) = &api.keys else {
        return;
    };
    let config = api.ca().config().clone();
    match CertificateAuthority::load_with_config(&dir, config, passphrase, *access) {
        Ok(ca) => {
            tracing::info!(
                target: "airlock::audit",
                event = "issuer_loaded",
                roots = ca.bundle().roots().len(),
                issuing_not_after = ca.issuing_not_after().unix_timestamp(),
                "issuing CA and bundle reloaded"
            );
            api.tls_bundle.replace(ca.bundle().clone());
            api.ca.store(Arc::new(ca));
        }
        Err(e) => {
            tracing::error!(error = %e, "the changed CA files do not load; keeping the previous issuer")
        }
    }
}
