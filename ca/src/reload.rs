//! `ca serve` follows its files without a restart, checking them every two seconds:
//!
//! - the deny list (`revocation_file`): `ca revoke` takes effect within seconds, for
//!   issuance, renewal and the API's own TLS handshakes;
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

use crate::authority::CertificateAuthority;
use crate::jwt::KubernetesAuthenticator;
use crate::rotation::PREVIOUS_ISSUING;
use crate::server::CaApi;

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

#[derive(PartialEq)]
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

/// Runs until aborted.
pub async fn watch(api: Arc<CaApi>) {
    let mut seen = Stamps::of(&api.ca.load());
    loop {
        tokio::time::sleep(RELOAD_INTERVAL).await;
        let ca = api.ca.load_full();
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

/// The API's TLS verifier trusts the live CA's roots minus the live deny list.
fn refresh_tls_bundle(api: &CaApi) {
    let bundle = api
        .ca
        .load()
        .bundle()
        .clone()
        .with_revocations((**api.revocations.load()).clone());
    api.tls_bundle.replace(bundle);
}

fn reload_revocations(api: &CaApi, ca: &CertificateAuthority) {
    let store = ca.revocation_store();
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
            refresh_tls_bundle(api);
        }
        Err(e) => {
            tracing::error!(error = %e, "the changed deny list does not load; keeping the previous one")
        }
    }
}

fn reload_jwks(api: &CaApi, ca: &CertificateAuthority) {
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

fn reload_keys(api: &CaApi, dir: PathBuf) {
    let Some((passphrase, access)) = &api.reload_keys else {
        return;
    };
    match CertificateAuthority::load(&dir, passphrase, *access) {
        Ok(ca) => {
            tracing::info!(
                target: "airlock::audit",
                event = "issuer_loaded",
                roots = ca.bundle().roots().len(),
                issuing_not_after = ca.issuing_not_after().unix_timestamp(),
                "issuing CA and bundle reloaded"
            );
            api.ca.store(Arc::new(ca));
            refresh_tls_bundle(api);
        }
        Err(e) => {
            tracing::error!(error = %e, "the changed CA files do not load; keeping the previous issuer")
        }
    }
}
