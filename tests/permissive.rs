//! Permissive mode, in a network namespace this test creates: iptables REDIRECTs plaintext
//! for the app's ports to the sidecar's capture listener, SO_ORIGINAL_DST names the port,
//! and policy decides the unauthenticated peer by address alone.
//!
//! The test re-runs itself inside the namespace (so every process it starts lives there)
//! and removes the namespace afterwards, also when it fails. Without root, `ip` or
//! `iptables` it says so and skips; CI runs as root and installs both.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use airlock_config::{InboundPort, PortProtocol};
use airlock_testkit::*;

const INSIDE: &str = "AIRLOCK_TEST_INSIDE_NETNS";
const TEST: &str = "permissive_plaintext_is_authorized_by_address_only";
const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";

#[test]
fn permissive_plaintext_is_authorized_by_address_only() {
    if std::env::var_os(INSIDE).is_some() {
        inside_the_namespace();
    } else {
        run_in_a_fresh_namespace();
    }
}

fn run_in_a_fresh_namespace() {
    let Some(namespace) = Namespace::create("permissive", TEST) else {
        return;
    };
    let ns = |args: &[&str]| namespace.run(args);
    for port in ["8080", "9090"] {
        ns(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
            "--dport",
            port,
            "-j",
            "REDIRECT",
            "--to-ports",
            "15006",
        ]);
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &namespace.0])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env(INSIDE, "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the test failed inside the namespace (see its output above)"
    );
}

fn write_policy(dir: &std::path::Path, source: &str) {
    std::fs::write(
        dir.join("payments.yaml"),
        format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: payments-api, namespace: pay}}\nspec:\n  selector: {{identities: [{PAYMENTS}]}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {source}}}]\n    to: [{{operation: {{ports: [8080, 9090]}}}}]\n"
        ),
    )
    .unwrap();
}

fn inside_the_namespace() {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let echo = echo_server();
    let policies = ca.scratch("policies");
    std::fs::create_dir(&policies).unwrap();
    write_policy(&policies, "{ipBlocks: [127.0.0.0/8]}");
    let mut config = sidecar_config(
        ca.identity(&server.url, "payments", PAYMENTS, &[]),
        "127.0.0.1",
    );
    // The capture rules inside the namespace redirect to this fixed port.
    config.inbound.permissive_listen = Some(SocketAddr::from(([127, 0, 0, 1], 15006)));
    config.inbound.ports = vec![
        InboundPort {
            app: Some(echo),
            permissive: true,
            ..InboundPort::new(8080, PortProtocol::Tcp)
        },
        InboundPort {
            app: Some(echo),
            ..InboundPort::new(9090, PortProtocol::Tcp)
        },
    ];
    config.policy.paths = vec![policies.clone()];
    config.policy.reload_interval = Duration::from_millis(100);
    let sidecar = Sidecar::start(&ca, "payments", &config);
    sidecar.wait_ready();
    let app_port = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));

    // The client dials the app's port; the kernel hands the connection to the sidecar.
    let mut live = connect(app_port(8080));
    assert_eq!(
        round_trip(&mut live, b"plaintext, by address").as_deref(),
        Some(&b"plaintext, by address"[..])
    );

    // A port that is not permissive refuses plaintext even though policy would allow it.
    let mut strict = connect(app_port(9090));
    assert_eq!(round_trip(&mut strict, b"no"), None);
    assert!(
        metric(
            &sidecar.metrics(),
            "airlock_connect_refused_total{reason=\"undeclared_port\"}"
        ) >= 1.0
    );

    // Identity fields never match a plaintext peer: the live tunnel closes, new ones fail.
    write_policy(&policies, "{principals: [\"*\"]}");
    wait_for("plaintext tunnel terminated", || {
        metric(
            &sidecar.metrics(),
            "airlock_authz_total{decision=\"terminate\"",
        ) >= 1.0
    });
    assert_eq!(round_trip(&mut live, b"after"), None);
    let mut again = connect(app_port(8080));
    assert_eq!(round_trip(&mut again, b"again"), None);
    assert!(sidecar.log_text().contains("no ALLOW policy matched"));
}
