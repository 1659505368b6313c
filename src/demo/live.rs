//! What the demo shows happening after its table: one rotation and one revocation, live.
//! The payments sidecar's SVID is short-lived, so the demo watches its admin API until a
//! renewed certificate (a new serial) is installed, and shows calls still answered. Then
//! the reconcile job's identity is revoked at the CA, as `airlock ca revoke --spiffe-id`
//! does; the payments sidecar hears of it at its next bundle refresh and refuses the
//! job's next call on the connection the job's sidecar already holds; then the entry is
//! lifted and the call goes through again.

use std::path::Path;
use std::time::{Duration, Instant};

use airlock_ca::CertificateAuthority;
use airlock_ca::revocations::{RevocationStore, Target};
use airlock_identity::{SpiffeId, TrustDomain};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::script::{Outcome, revocation_probe, send};
use super::sidecars::{Mesh, ROTATING, ROTATING_TTL};
use crate::Failure;

/// How long the demo waits for a revocation (or its lift) to reach a sidecar.
const PATIENCE: Duration = Duration::from_secs(20);

/// Waits for the rotating sidecar to install a renewed SVID, then shows a call to it
/// answered; true when both happened within its TTL.
pub(super) async fn show_rotation(
    client: &Client<HttpConnector, Empty<Bytes>>,
    mesh: &Mesh,
) -> Result<bool, Failure> {
    let admin = mesh.admin(ROTATING);
    let before = svid_serial(client, admin).await?;
    println!(
        "\nLive: {ROTATING}'s SVID lives {} s and is renewed at about half of that \
         (airlock proxy status --admin {admin})",
        ROTATING_TTL.as_secs()
    );
    let started = Instant::now();
    let renewed = loop {
        let now = svid_serial(client, admin).await?;
        if now != before {
            break Some(now);
        }
        if started.elapsed() > ROTATING_TTL {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let Some(after) = renewed else {
        println!("  {ROTATING} still held serial {before} after {ROTATING_TTL:?}");
        return Ok(false);
    };
    println!(
        "  {ROTATING} installed a renewed SVID after {:.1} s: serial {before} → {after}",
        started.elapsed().as_secs_f64()
    );
    let outcome = send(client, mesh, &revocation_probe(), 999).await;
    println!(
        "  reconcile → {ROTATING} GET /v1/charges after the rotation: {}",
        outcome.status
    );
    Ok(outcome.status == 200)
}

/// The serial of the SVID a sidecar holds now, from its admin API's `GET /certs`.
async fn svid_serial(
    client: &Client<HttpConnector, Empty<Bytes>>,
    admin: std::net::SocketAddr,
) -> Result<String, Failure> {
    let uri = format!("http://{admin}/certs").parse().expect("valid URI");
    let response = client.get(uri).await.map_err(Failure::failed)?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(Failure::failed)?
        .to_bytes();
    let certs: serde_json::Value = serde_json::from_slice(&body).map_err(Failure::failed)?;
    certs["svid"]["serial"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Failure::failed(format!("{admin}/certs named no SVID serial")))
}

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
