//! `airlock demo`: what exists today, end to end on loopback — a CA in a temporary
//! directory, its HTTPS API on a free port, and a workload that joins with a one-time
//! token, renews over mutual TLS, and is refused where it should be. The sidecar mesh
//! joins this demo when the data plane lands.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use airlock_ca::CertificateAuthority;
use airlock_ca::client::{CaClient, ClientError};
use airlock_ca::keys::Passphrase;
use airlock_ca::server::{CaApi, serve};
use airlock_ca::tokens::TokenStore;
use airlock_identity::{BundleStore, SpiffeId, SvidStore, TrustDomain, tls};

use crate::Failure;

/// One scripted step: what was tried, what should happen, what did.
struct Step {
    action: &'static str,
    expected: &'static str,
    outcome: String,
    as_expected: bool,
    millis: f64,
}

pub fn run(once: bool) -> Result<(), Failure> {
    let temp = tempfile::tempdir().map_err(Failure::failed)?;
    let pass_file = temp.path().join("passphrase");
    std::fs::write(&pass_file, "demo-passphrase-not-for-production").map_err(Failure::failed)?;
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600))
        .map_err(Failure::failed)?;
    let passphrase = Passphrase::from_file_or_env(Some(&pass_file)).map_err(Failure::failed)?;
    let dir = temp.path().join("ca");
    let trust_domain = TrustDomain::parse("demo.airlock").expect("valid literal");
    let ca = CertificateAuthority::init(&dir, trust_domain.clone(), &passphrase)
        .map_err(Failure::failed)?;
    let workload =
        SpiffeId::for_service_account(&trust_domain, "shop", "checkout").expect("valid literal");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let token = TokenStore::new(&dir)
        .create(&workload, Duration::from_secs(600), 1, now)
        .map_err(Failure::failed)?
        .token;
    let bundle = BundleStore::new(ca.bundle().clone());

    let runtime = tokio::runtime::Runtime::new().map_err(Failure::failed)?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Failure::failed)?;
        let url = format!(
            "https://{}",
            listener.local_addr().map_err(Failure::failed)?
        );
        let api = CaApi::new(ca).map_err(Failure::failed)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(api, listener, async {
            let _ = stopped.await;
        }));

        let store = SvidStore::new(tls::provider());
        let client = CaClient::new(&url, bundle.clone(), store.clone()).map_err(Failure::failed)?;
        let mut steps = Vec::new();

        let started = Instant::now();
        let joined = client.obtain_svid(Some(&token), None).await;
        let (outcome, ok) = match joined {
            Ok(creds) => {
                let id = creds.response.spiffe_id.to_string();
                let installed = store.install(creds.chain, creds.key);
                (
                    format!("issued {id}"),
                    installed.is_ok() && id == workload.as_str(),
                )
            }
            Err(e) => (e.to_string(), false),
        };
        steps.push(step(
            "join with one-time token",
            "issued",
            outcome,
            ok,
            started,
        ));

        let started = Instant::now();
        let (outcome, ok) = refused(client.obtain_svid(Some(&token), None).await);
        steps.push(step(
            "replay the same token",
            "401 refused",
            outcome,
            ok,
            started,
        ));

        let started = Instant::now();
        let (outcome, ok) = match client
            .obtain_svid(None, Some(Duration::from_secs(300)))
            .await
        {
            Ok(creds) => (
                format!("renewed {} (5m)", creds.response.spiffe_id),
                creds.response.spiffe_id == workload,
            ),
            Err(e) => (e.to_string(), false),
        };
        steps.push(step(
            "renew over mTLS with the SVID",
            "issued",
            outcome,
            ok,
            started,
        ));

        let started = Instant::now();
        let anonymous = CaClient::new(&url, bundle, SvidStore::new(tls::provider()))
            .map_err(Failure::failed)?;
        let (outcome, ok) = refused(anonymous.obtain_svid(None, None).await);
        steps.push(step(
            "ask without credentials",
            "401 refused",
            outcome,
            ok,
            started,
        ));

        print_table(&url, &steps);
        let all_ok = steps.iter().all(|s| s.as_expected);
        if !once && all_ok {
            println!(
                "\nCA running at {url} (bundle: {}); Ctrl-C to stop.",
                dir.join("bundle.pem").display()
            );
            crate::logging::shutdown_signal().await;
        }
        let _ = stop.send(());
        let _ = server.await;
        if all_ok {
            Ok(())
        } else {
            Err(Failure::failed(
                "some demo steps did not go as expected (see the table)",
            ))
        }
    })
}

fn refused<T>(result: Result<T, ClientError>) -> (String, bool) {
    match result {
        Ok(_) => ("issued (should have been refused)".into(), false),
        Err(ClientError::Refused { status, code, .. }) => (
            format!("{} {code}", status.as_u16()),
            status.as_u16() == 401,
        ),
        Err(other) => (other.to_string(), false),
    }
}

fn step(
    action: &'static str,
    expected: &'static str,
    outcome: String,
    as_expected: bool,
    started: Instant,
) -> Step {
    Step {
        action,
        expected,
        outcome,
        as_expected,
        millis: started.elapsed().as_secs_f64() * 1000.0,
    }
}

fn print_table(url: &str, steps: &[Step]) {
    println!("airlock demo: workload CA at {url}\n");
    println!(
        "{:<32} {:<12} {:<52} {:>8}  ok",
        "step", "expected", "outcome", "ms"
    );
    for s in steps {
        println!(
            "{:<32} {:<12} {:<52} {:>8.1}  {}",
            s.action,
            s.expected,
            s.outcome,
            s.millis,
            if s.as_expected { "yes" } else { "NO" }
        );
    }
}
