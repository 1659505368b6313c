//! The sidecar end to end: a real CA, real `airlock proxy` processes on their own loopback
//! addresses, a TCP echo app, and openssl/curl as independent clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use airlock_config::{IdentityConfig, InboundPort, PortProtocol};
use airlock_testkit::*;

const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";

struct Mesh {
    ca: TestCa,
    server: CaServer,
    echo: SocketAddr,
    policies: PathBuf,
}

impl Mesh {
    fn new() -> Self {
        let ca = TestCa::init("example.org");
        let server = CaServer::start(&ca);
        let policies = ca.scratch("policies");
        std::fs::create_dir(&policies).unwrap();
        write_policy(&policies, &[CHECKOUT]);
        Self {
            echo: echo_server(),
            policies,
            server,
            ca,
        }
    }

    /// Identity settings with a fresh join token for `id` usable `uses` times.
    fn identity(&self, name: &str, id: &str, uses: &str) -> IdentityConfig {
        self.ca
            .identity(&self.server.url, name, id, &["--uses", uses])
    }

    fn payments(&self, ip: &str, id: &str) -> Sidecar {
        self.payments_with(ip, id, None, "1")
    }

    /// Payments on `ip` serving the echo app on 8080 under the shared policy directory.
    fn payments_with(
        &self,
        ip: &str,
        id: &str,
        svid_ttl: Option<Duration>,
        token_uses: &str,
    ) -> Sidecar {
        let mut identity = self.identity("payments", id, token_uses);
        identity.svid_ttl = svid_ttl;
        let mut config = sidecar_config(identity, ip);
        config.inbound.ports.push(InboundPort {
            app: Some(self.echo),
            ..InboundPort::new(8080, PortProtocol::Tcp)
        });
        config.policy.paths = vec![self.policies.clone()];
        config.policy.reload_interval = Duration::from_millis(100);
        let sidecar = Sidecar::start(&self.ca, "payments", &config);
        sidecar.wait_ready();
        sidecar
    }

    /// A client sidecar whose upstream leads to payments at `endpoint`, pinned to
    /// `expected`.
    fn client(&self, name: &str, id: &str, endpoint: SocketAddr, expected: &str) -> Sidecar {
        self.client_with(name, id, None, endpoint, expected)
    }

    fn client_with(
        &self,
        name: &str,
        id: &str,
        svid_ttl: Option<Duration>,
        endpoint: SocketAddr,
        expected: &str,
    ) -> Sidecar {
        let mut identity = self.identity(name, id, "5");
        identity.svid_ttl = svid_ttl;
        caller(
            &self.ca,
            name,
            identity,
            "payments",
            expected,
            endpoint,
            &[8080],
        )
    }
}

fn write_policy(dir: &std::path::Path, principals: &[&str]) {
    let list = principals.join(", ");
    std::fs::write(
        dir.join("payments.yaml"),
        format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: payments-api, namespace: pay}}\nspec:\n  selector: {{identities: [{PAYMENTS}]}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [{list}]}}}}]\n    to: [{{operation: {{ports: [8080]}}}}]\n"
        ),
    )
    .unwrap();
}

#[test]
fn bytes_flow_through_two_sidecars_and_certs_show_identities() {
    let mesh = Mesh::new();
    let payments = mesh.payments("127.0.0.2", PAYMENTS);
    let checkout = mesh.client("checkout", CHECKOUT, payments.inbound, PAYMENTS);
    let upstream = checkout.upstream("payments", 8080);

    let mut stream = connect(upstream);
    assert_eq!(
        round_trip(&mut stream, b"hello through the mesh").as_deref(),
        Some(&b"hello through the mesh"[..])
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        round_trip(&mut stream, &big).as_deref(),
        Some(&big[..]),
        "200 KB both ways"
    );
    drop(stream);
    // Many connections share one pooled mesh connection.
    for i in 0..20 {
        let mut s = connect(upstream);
        let message = format!("connection {i}");
        assert_eq!(
            round_trip(&mut s, message.as_bytes()).as_deref(),
            Some(message.as_bytes())
        );
    }
    wait_for("pool metrics", || {
        metric(&checkout.metrics(), "airlock_pool_streams_total") >= 21.0
    });
    assert_eq!(
        metric(&checkout.metrics(), "airlock_pool_connections"),
        1.0,
        "{}",
        checkout.metrics()
    );

    let (status, certs) = payments.admin("GET", "/certs");
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(certs["svid"]["spiffe_id"], PAYMENTS);
    assert_eq!(certs["svid"]["valid"], true);
    assert_eq!(certs["trust_domain"], "example.org");
    let (_, certs) = checkout.admin("GET", "/certs");
    assert!(certs.contains(CHECKOUT), "{certs}");
    let (status, dump) = checkout.admin("GET", "/config_dump");
    assert_eq!(status, 200);
    assert!(
        dump.contains("payments") && !dump.contains("airlock-join."),
        "no token in the dump: {dump}"
    );

    let metrics = payments.metrics();
    assert!(
        metric(
            &metrics,
            "airlock_authz_total{decision=\"allow\",policy=\"pay/payments-api\"}"
        ) >= 21.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "airlock_bytes_total{direction=\"inbound\"") >= 400_000.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "airlock_cert_expiry_timestamp_seconds") > 0.0);
}

#[test]
fn policy_denies_others_and_runtime_edits_reach_live_tunnels() {
    let mesh = Mesh::new();
    let payments = mesh.payments("127.0.0.3", PAYMENTS);
    let checkout = mesh.client("checkout", CHECKOUT, payments.inbound, PAYMENTS);
    let upstream = checkout.upstream("payments", 8080);
    let intruder = mesh.client(
        "intruder",
        "spiffe://example.org/ns/sandbox/sa/intruder",
        payments.inbound,
        PAYMENTS,
    );
    let intruder_up = intruder.upstream("payments", 8080);

    let mut denied = connect(intruder_up);
    assert_eq!(
        round_trip(&mut denied, b"let me in"),
        None,
        "the intruder's tunnel is refused"
    );
    wait_for("deny metric", || {
        metric(&payments.metrics(), "airlock_authz_total{decision=\"deny\"") >= 1.0
    });
    wait_for("403 reason in the client log", || {
        intruder.log_text().contains("no ALLOW policy matched")
    });

    // A live tunnel, then the policy is edited to drop checkout.
    let mut live = connect(upstream);
    assert!(round_trip(&mut live, b"before").is_some());
    write_policy(&mesh.policies, &["spiffe://example.org/ns/shop/sa/web"]);
    wait_for("terminate metric", || {
        metric(
            &payments.metrics(),
            "airlock_authz_total{decision=\"terminate\"",
        ) >= 1.0
    });
    assert_eq!(
        round_trip(&mut live, b"after"),
        None,
        "the now-denied live tunnel was closed"
    );
    let mut next = connect(upstream);
    assert_eq!(
        round_trip(&mut next, b"again"),
        None,
        "new connections follow the new policy"
    );

    // An invalid edit keeps the old policy and is counted.
    std::fs::write(mesh.policies.join("payments.yaml"), "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: broken}\nspec: {action: PERMIT}\n").unwrap();
    wait_for("reload error metric", || {
        metric(&payments.metrics(), "airlock_policy_reload_errors_total") >= 1.0
    });
    assert!(payments.log_text().contains("keeping the previous policy"));
    let mut still = connect(upstream);
    assert_eq!(
        round_trip(&mut still, b"still denied"),
        None,
        "the last valid policy still applies"
    );

    // Fixed: checkout is allowed again.
    write_policy(&mesh.policies, &[CHECKOUT]);
    wait_for("allowed again", || {
        let mut s = connect(upstream);
        round_trip(&mut s, b"back").is_some()
    });
}

#[test]
fn the_client_pins_the_server_identity() {
    let mesh = Mesh::new();
    // A sidecar holding another identity sits at the address payments is expected at.
    let impostor = mesh.payments("127.0.0.4", "spiffe://example.org/ns/pay/sa/impostor");
    let checkout = mesh.client("checkout", CHECKOUT, impostor.inbound, PAYMENTS);
    let upstream = checkout.upstream("payments", 8080);
    let mut stream = connect(upstream);
    assert_eq!(round_trip(&mut stream, b"secret"), None);
    wait_for("refusal logged", || {
        checkout
            .log_text()
            .contains("expected spiffe://example.org/ns/pay/sa/payments")
    });
    assert!(
        metric(
            &checkout.metrics(),
            "airlock_connect_refused_total{reason=\"tls\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &checkout.metrics(),
            "airlock_tls_handshake_errors_total{reason=\"unexpected_peer\"}"
        ) >= 1.0
    );
}

#[test]
fn the_mesh_port_refuses_bad_clients() {
    let mesh = Mesh::new();
    let payments = mesh.payments("127.0.0.5", PAYMENTS);
    let ca = &mesh.ca;
    let issue = |name: &str, issuer: &TestCa, id: &str, ttl: &str| {
        let (key, csr) = openssl_csr(ca.temp.path(), name, &[]);
        let chain = ca.scratch(&format!("{name}.pem"));
        std::fs::write(&chain, issuer.issue(id, &csr, &["--ttl", ttl])).unwrap();
        (chain, key)
    };
    let present = |chain: &PathBuf, key: &PathBuf| present_svid(chain, key);

    let (good_chain, good_key) = issue("good", ca, CHECKOUT, "10m");
    let (ok, text) = s_client(payments.inbound, ca, &present(&good_chain, &good_key));
    assert!(ok, "a valid SVID is accepted:\n{text}");
    assert!(text.contains("TLSv1.3"), "{text}");

    let (ok, text) = s_client(payments.inbound, ca, &[]);
    assert!(!ok, "no client certificate:\n{text}");

    let (ok, text) = s_client(
        payments.inbound,
        ca,
        &[vec!["-tls1_2".to_owned()], present(&good_chain, &good_key)].concat(),
    );
    assert!(!ok, "TLS 1.2:\n{text}");

    let foreign = TestCa::init("other.org");
    let (chain, key) = issue(
        "foreign",
        &foreign,
        "spiffe://other.org/ns/shop/sa/checkout",
        "10m",
    );
    let (ok, text) = s_client(payments.inbound, ca, &present(&chain, &key));
    assert!(!ok, "another trust domain:\n{text}");

    let rogue = TestCa::init("example.org");
    let (chain, key) = issue("rogue", &rogue, CHECKOUT, "10m");
    let (ok, text) = s_client(payments.inbound, ca, &present(&chain, &key));
    assert!(!ok, "a rogue CA of the same trust domain:\n{text}");

    // X509-SVID §5.2: a leaf named by the trust domain alone, signed by the real issuing
    // key, chains fine but is no workload. Its control twin, forged the same way with a
    // workload ID, is accepted, so the refusal is the leaf rule's.
    let (chain, key) = forge_leaf(ca, "forged-workload", CHECKOUT);
    let (ok, text) = s_client(payments.inbound, ca, &present(&chain, &key));
    assert!(
        ok,
        "control: openssl's leaf for a workload ID is accepted:\n{text}"
    );
    let (chain, key) = forge_leaf(ca, "forged-root-path", "spiffe://example.org");
    let (ok, text) = s_client(payments.inbound, ca, &present(&chain, &key));
    assert!(!ok, "a leaf whose ID is the trust domain:\n{text}");
    wait_for("the refusal names the leaf rule", || {
        payments.log_text().contains("must have a path")
    });

    let (chain, key) = issue("expired", ca, CHECKOUT, "1s");
    std::thread::sleep(Duration::from_millis(2100));
    let (ok, text) = s_client(payments.inbound, ca, &present(&chain, &key));
    assert!(!ok, "an expired SVID:\n{text}");

    // Garbage is dropped without harming anyone else.
    let mut garbage = TcpStream::connect(payments.inbound).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = garbage.read_to_end(&mut sink);
    let (ok, _) = s_client(payments.inbound, ca, &present(&good_chain, &good_key));
    assert!(ok, "still serving after garbage");
    let metrics = payments.metrics();
    assert!(
        metric(&metrics, "airlock_tls_handshake_errors_total") >= 6.0,
        "{metrics}"
    );
}

#[test]
fn rotation_under_continuous_traffic_drops_nothing() {
    let mesh = Mesh::new();
    let one_minute = Some(Duration::from_secs(60));
    let payments = mesh.payments_with("127.0.0.6", PAYMENTS, one_minute, "1");
    let checkout = mesh.client_with("checkout", CHECKOUT, one_minute, payments.inbound, PAYMENTS);
    let upstream = checkout.upstream("payments", 8080);

    let mut long_lived = connect(upstream);
    assert!(round_trip(&mut long_lived, b"opened before any rotation").is_some());
    let started = std::time::Instant::now();
    let (mut attempts, mut failures) = (0u32, 0u32);
    while started.elapsed() < Duration::from_secs(190) {
        let mut stream = connect(upstream);
        attempts += 1;
        if round_trip(&mut stream, format!("request {attempts}").as_bytes()).is_none() {
            failures += 1;
        }
        if attempts % 50 == 0 {
            assert!(
                round_trip(&mut long_lived, b"still here").is_some(),
                "the long-lived tunnel survived rotation"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(failures, 0, "{failures} of {attempts} connections failed");
    assert!(round_trip(&mut long_lived, b"after three minutes").is_some());
    for sidecar in [&payments, &checkout] {
        let refreshes = metric(&sidecar.metrics(), "airlock_cert_refreshes_total");
        assert!(
            refreshes >= 4.0,
            "{refreshes} SVIDs in 190 s with a 1 minute TTL:\n{}",
            sidecar.log_text()
        );
    }
}

#[test]
fn a_ca_outage_keeps_valid_certs_then_fails_closed_and_recovers() {
    let mut mesh = Mesh::new();
    let short = Some(Duration::from_secs(12));
    let payments = mesh.payments_with("127.0.0.7", PAYMENTS, short, "10");
    let checkout = mesh.client_with("checkout", CHECKOUT, short, payments.inbound, PAYMENTS);
    let upstream = checkout.upstream("payments", 8080);
    let ca_addr = mesh.server.addr.to_string();

    // CA down: traffic continues on the current SVIDs.
    mesh.server.stop();
    let mut stream = connect(upstream);
    assert!(round_trip(&mut stream, b"ca is down").is_some());
    drop(stream);

    // Past expiry: fail closed, /ready false.
    // The last renewal may have come just before the outage: allow a whole TTL and more.
    wait_up_to(Duration::from_secs(45), "payments not ready", || {
        http("GET", &format!("http://{}/ready", payments.health)).0 == 503
    });
    let mut refused = connect(upstream);
    assert_eq!(
        round_trip(&mut refused, b"expired"),
        None,
        "no traffic on expired SVIDs"
    );
    assert!(metric(&checkout.metrics(), "airlock_cert_refresh_failures_total") >= 1.0);

    // CA back on the same address: both recover without a restart.
    mesh.server = CaServer::start_at(&mesh.ca, &ca_addr);
    payments.wait_ready();
    checkout.wait_ready();
    let mut stream = connect(upstream);
    assert!(round_trip(&mut stream, b"recovered").is_some());
}

#[test]
fn sigterm_drains_a_long_transfer() {
    let mesh = Mesh::new();
    let mut payments = mesh.payments_with("127.0.0.8", PAYMENTS, None, "1");
    let checkout = mesh.client_with("checkout", CHECKOUT, None, payments.inbound, PAYMENTS);
    let upstream = checkout.upstream("payments", 8080);

    let mut stream = connect(upstream);
    let chunk = vec![7u8; 64 * 1024];
    assert!(round_trip(&mut stream, &chunk).is_some());
    // SIGTERM in the middle of the transfer.
    let pid = payments.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("not ready while draining", || {
        http("GET", &format!("http://{}/ready", payments.health)).0 == 503
    });
    for _ in 0..20 {
        assert!(
            round_trip(&mut stream, &chunk).is_some(),
            "the in-flight transfer continues while draining"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stream);
    wait_for("drained sidecar exits", || {
        payments.child.try_wait().unwrap().is_some()
    });
    assert!(payments.log_text().contains("draining"));
}

/// `registry_file` is read again when it changes: a service's new endpoints take effect
/// without a restart, and an invalid file keeps the registry that works.
#[test]
fn a_changed_registry_file_is_reloaded_and_an_invalid_one_refused() {
    let mesh = Mesh::new();
    let payments = mesh.payments("127.0.0.72", PAYMENTS);
    let registry = mesh.ca.scratch("registry.yaml");
    // Replaced whole, as the kubelet swaps a ConfigMap's files: the sidecar never reads
    // a half-written file.
    let replace = |contents: &[u8]| {
        let next = registry.with_extension("next");
        std::fs::write(&next, contents).unwrap();
        std::fs::rename(&next, &registry).unwrap();
    };
    let write_registry = |endpoint: &str| {
        replace(
            format!("payments:\n  identity: {PAYMENTS}\n  endpoints: [{endpoint}]\n").as_bytes(),
        );
    };
    // First a stale endpoint where nothing listens.
    let stale = SocketAddr::from(([127, 0, 0, 73], free_port("127.0.0.73")));
    write_registry(&stale.to_string());
    let mut config = sidecar_config(mesh.identity("checkout", CHECKOUT, "5"), "127.0.0.1");
    config.outbound.upstreams.push(upstream("payments", 8080));
    config.registry_file = Some(registry.clone());
    config.policy.reload_interval = Duration::from_millis(100);
    let checkout = Sidecar::start(&mesh.ca, "checkout", &config);
    checkout.wait_ready();
    let upstream = checkout.upstream("payments", 8080);
    let reaches = || round_trip(&mut connect(upstream), b"ping").as_deref() == Some(&b"ping"[..]);
    assert!(!reaches(), "the stale endpoint is refused");

    write_registry(&payments.inbound.to_string());
    wait_for("the new endpoint", reaches);
    assert!(metric(&checkout.metrics(), "airlock_registry_reloads_total") >= 1.0);

    // Each fault on its own is refused, and the registry that works stays live.
    let payments_at = payments.inbound.to_string();
    let faults: [Vec<u8>; 4] = [
        format!(
            "payments:\n  identity: spiffe://elsewhere/ns/a/sa/b\n  endpoints: [{payments_at}]\n"
        )
        .into_bytes(),
        format!("payments:\n  identity: {PAYMENTS}\n  endpoints: []\n").into_bytes(),
        b"payments: [unclosed\n".to_vec(),
        [
            format!("payments:\n  identity: {PAYMENTS}\n  endpoints: [{payments_at}]\n# ")
                .as_bytes(),
            &[0xff],
        ]
        .concat(),
    ];
    for (refused, fault) in (1..).zip(faults) {
        replace(&fault);
        wait_for("the refusal to be counted", || {
            metric(&checkout.metrics(), "airlock_registry_reload_errors_total")
                >= f64::from(refused)
        });
        assert!(
            reaches(),
            "the previous registry still works (fault {refused})"
        );
    }
    assert_eq!(
        metric(&checkout.metrics(), "airlock_registry_reloads_total"),
        1.0
    );
}

#[test]
fn a_policy_file_rewritten_in_place_never_empties_the_policy() {
    let mesh = Mesh::new();
    let payments = mesh.payments("127.0.0.9", PAYMENTS);
    let checkout = mesh.client("checkout", CHECKOUT, payments.inbound, PAYMENTS);
    let upstream = checkout.upstream("payments", 8080);
    let call = || round_trip(&mut connect(upstream), b"ping").is_some();
    assert!(call(), "control: allowed before the rewrites");

    // An editor or `cp` truncates, then writes: the file is empty for longer than one
    // reload interval (100 ms) each time.
    let file = mesh.policies.join("payments.yaml");
    let text = std::fs::read(&file).unwrap();
    let writer = std::thread::spawn(move || {
        for _ in 0..5 {
            let mut handle = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&file)
                .unwrap();
            std::thread::sleep(Duration::from_millis(350));
            handle.write_all(&text).unwrap();
            drop(handle);
            std::thread::sleep(Duration::from_millis(150));
        }
    });
    let mut calls = 0;
    while !writer.is_finished() {
        assert!(call(), "a call during the rewrites was refused");
        calls += 1;
    }
    writer.join().unwrap();
    assert!(calls >= 5, "{calls} calls");
    assert!(
        metric(&payments.metrics(), "airlock_policy_reload_errors_total") >= 1.0,
        "the sidecar saw the empty file"
    );

    // Saying "no policies" stays possible: a comment-only file, then the default (deny).
    std::fs::write(mesh.policies.join("payments.yaml"), "# no policies\n").unwrap();
    wait_for("no policies: the default denies", || !call());
}
