//! What the demo shows happening after its table: one revocation, live. The reconcile
//! job's identity is revoked at the CA, as `airlock ca revoke --spiffe-id` does; the
//! payments sidecar hears of it at its next bundle refresh and refuses the job's next
//! call on the connection the job's sidecar already holds; then the entry is lifted and
//! the call goes through again.

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_ca::CertificateAuthority;
use airlock_ca::revocations::{RevocationStore, Target};
use airlock_identity::{SpiffeId, TrustDomain};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::script::{Outcome, revocation_probe, send};
use super::sidecars::Mesh;
use crate::Failure;

/// How long the demo waits for a revocation (or its lift) to reach a sidecar.
const PATIENCE: Duration = Duration::from_secs(20);

/// Revokes, shows the refusal, lifts, shows the call allowed again; true when both
/// happened within [`PATIENCE`].
pub(super) async fn show_revocation(
    client: &Client<HttpConnector, Empty<Bytes>>,
    mesh: &Mesh,
    ca_dir: &Path,
    trust_domain: &TrustDomain,
) -> Result<bool, Failure> {
    let id =
        SpiffeId::for_service_account(trust_domain, "finance", "reconcile").expect("valid literal");
    let config = CertificateAuthority::load_config(ca_dir).map_err(Failure::failed)?;
    let store = RevocationStore::new(ca_dir.join(&config.revocation_file));
    let target = Target::Identity(id.clone());
    println!("\nLive: airlock ca revoke --spiffe-id {id}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    store
        .revoke(
            &target,
            Some("demo: a job gone rogue".into()),
            now,
            config.max_ttl,
        )
        .map_err(Failure::failed)?;
    // Refused on the connection it holds (403), or, once payments has closed that, at
    // the handshake of a new one (503 from its own sidecar: no endpoint would take it).
    let refused = wait_for(client, mesh, |o| o.status != 200).await;
    match &refused {
        Some((outcome, waited)) => println!(
            "  reconcile → payments GET /v1/charges: {} after {:.1} s ({})",
            outcome.status,
            waited.as_secs_f64(),
            outcome.reason
        ),
        None => println!("  reconcile → payments was still allowed after {PATIENCE:?}"),
    }
    store.lift(&target).map_err(Failure::failed)?;
    println!("Live: airlock ca revoke --spiffe-id {id} --lift");
    let restored = wait_for(client, mesh, |o| o.status == 200).await;
    match &restored {
        Some((_, waited)) => println!(
            "  reconcile → payments GET /v1/charges: 200 again after {:.1} s",
            waited.as_secs_f64()
        ),
        None => println!("  reconcile → payments was still refused after {PATIENCE:?}"),
    }
    Ok(refused.is_some() && restored.is_some())
}

/// Sends the probe until `done` holds for its outcome, for up to [`PATIENCE`].
async fn wait_for(
    client: &Client<HttpConnector, Empty<Bytes>>,
    mesh: &Mesh,
    done: impl Fn(&Outcome) -> bool,
) -> Option<(Outcome, Duration)> {
    let probe = revocation_probe();
    let started = Instant::now();
    let mut index = 0;
    while started.elapsed() < PATIENCE {
        index += 1;
        let outcome = send(client, mesh, &probe, 1000 + index).await;
        if done(&outcome) {
            return Some((outcome, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
