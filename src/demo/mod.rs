//! `airlock demo`: a whole mesh on loopback, in one process. A CA in a temporary
//! directory; five workloads, each with its own sidecar on its own loopback address
//! (frontend → checkout → payments, a finance job holding a time-bound grant, and an
//! intruder that policy quarantines); the example policies from `examples/policies`.
//! Scripted calls go through the sidecars' upstream listeners; the table shows what each
//! decided and why, read back from the callee's access log. Then one SVID rotation and
//! one revocation happen live (the revocation is lifted again).

mod live;
mod script;
mod sidecars;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use airlock_ca::CertificateAuthority;
use airlock_ca::keys::{KeyFileAccess, Passphrase};
use airlock_ca::listener::serve;
use airlock_ca::server::CaApi;
use airlock_identity::TrustDomain;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::Failure;

use self::script::{GrantWindow, calls, print_hints, print_table, send};
use self::sidecars::{TRUST_DOMAIN, start_sidecars, wait_ready};

/// The example policies, built into the binary so the demo runs from anywhere.
const POLICIES: &[(&str, &str)] = &[
    (
        "payments.yaml",
        include_str!("../../examples/policies/payments.yaml"),
    ),
    (
        "checkout.yaml",
        include_str!("../../examples/policies/checkout.yaml"),
    ),
    (
        "mesh-guardrails.yaml",
        include_str!("../../examples/policies/mesh-guardrails.yaml"),
    ),
];

pub(crate) fn run(once: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new().map_err(Failure::failed)?;
    // Ctrl-C from here on stops the demo through the clean-up below, never half-way.
    let interrupted = {
        let _context = runtime.enter();
        crate::logging::shutdown_signal()
    };
    let temp = tempfile::tempdir().map_err(Failure::failed)?;
    let trust_domain = TrustDomain::parse(TRUST_DOMAIN).expect("valid literal");
    let ca_dir = temp.path().join("ca");
    let ca = init_ca(temp.path(), &ca_dir, &trust_domain)?;
    let policy_dir = temp.path().join("policies");
    std::fs::create_dir(&policy_dir).map_err(Failure::failed)?;
    let grant = GrantWindow::around(time::OffsetDateTime::now_utc());
    for (name, text) in POLICIES {
        std::fs::write(policy_dir.join(name), grant.apply(text)).map_err(Failure::failed)?;
    }

    runtime.block_on(async {
        let mut interrupted = std::pin::pin!(interrupted);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Failure::failed)?;
        let ca_url = format!(
            "https://{}",
            listener.local_addr().map_err(Failure::failed)?
        );
        let (stop_ca, ca_stopped) = tokio::sync::oneshot::channel::<()>();
        let ca_server = tokio::spawn(serve(
            CaApi::new(ca).map_err(Failure::failed)?,
            listener,
            async {
                let _ = ca_stopped.await;
            },
        ));

        let (stop, stopped) = watch::channel(false);
        let (mesh, sidecars) = start_sidecars(
            temp.path(),
            &ca_dir,
            &policy_dir,
            &trust_domain,
            ca_url,
            &stopped,
        )
        .await?;
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let script = async {
            if let Err(e) = wait_ready(&client, &mesh).await {
                eprintln!("the mesh did not come up: {e}");
                return false;
            }
            let script = calls(time::OffsetDateTime::now_utc(), &grant);
            let mut outcomes = Vec::new();
            for (index, call) in script.iter().enumerate() {
                outcomes.push(send(&client, &mesh, call, index).await);
            }
            let all_ok = print_table(&mesh, &script, &outcomes);
            let rotated = match live::show_rotation(&client, &mesh).await {
                Ok(shown) => shown,
                Err(e) => {
                    eprintln!("the live rotation failed: {}", e.message);
                    false
                }
            };
            let revoked = match live::show_revocation(&client, &mesh, &ca_dir, &trust_domain).await {
                Ok(shown) => shown,
                Err(e) => {
                    eprintln!("the live revocation failed: {}", e.message);
                    false
                }
            };
            print_hints(&mesh);
            all_ok && rotated && revoked
        };
        let finished = tokio::select! {
            all_ok = script => Some(all_ok),
            () = &mut interrupted => None,
        };
        if finished == Some(true) && !once {
            println!("\nThe mesh keeps running; Ctrl-C stops it and removes everything.");
            interrupted.await;
        }
        let _ = stop.send(true);
        for sidecar in sidecars {
            let _ = tokio::time::timeout(Duration::from_secs(10), sidecar).await;
        }
        let _ = stop_ca.send(());
        let _ = ca_server.await;
        match finished {
            Some(true) => Ok(()),
            Some(false) => Err(Failure::failed(
                "some demo calls did not get their expected decision, or the live rotation or revocation did not show (see above)",
            )),
            None => Err(Failure::failed("interrupted before every call was made")),
        }
    })
}

fn init_ca(
    temp: &Path,
    ca_dir: &Path,
    trust_domain: &TrustDomain,
) -> Result<CertificateAuthority, Failure> {
    let pass_file = temp.join("passphrase");
    std::fs::write(&pass_file, "demo-passphrase-not-for-production").map_err(Failure::failed)?;
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600))
        .map_err(Failure::failed)?;
    let passphrase = Passphrase::from_file_or_env(Some(&pass_file), KeyFileAccess::OwnerOnly)
        .map_err(Failure::failed)?;
    CertificateAuthority::init(ca_dir, trust_domain.clone(), &passphrase).map_err(Failure::failed)
}
