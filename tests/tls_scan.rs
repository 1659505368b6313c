//! An independent TLS scanner (testssl.sh, Debian's `testssl`) against the CA API and a
//! sidecar's mesh port: only TLS 1.3, only strong suites, no renegotiation; and the mesh
//! port demands a client certificate. Any finding above INFO fails the test.
//!
//! Certificate findings (`-S`) are not part of the scan: SPIFFE SVIDs carry no DNS name,
//! no CRL/OCSP and live for an hour by design.

use std::net::SocketAddr;
use std::process::Command;

use airlock_config::{InboundPort, PortProtocol};
use airlock_testkit::*;

fn testssl(target: SocketAddr, report: &std::path::Path) -> Vec<serde_json::Value> {
    let found = Command::new("testssl").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "testssl is missing; install it with `apt-get install testssl.sh` (or run tests/setup.sh)"
    );
    let output = run(Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "-p",
            "-R",
            "-E",
            "--jsonfile",
        ])
        .arg(report)
        .arg(target.to_string()));
    let text = std::fs::read_to_string(report).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); testssl said:\n{}{}",
            stdout(&output),
            stderr(&output)
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// `expected`: finding ids that are explained for this target and so not problems.
fn assert_clean(name: &str, findings: &[serde_json::Value], expected: &[&str]) {
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("{name}: no {id} finding"))
            .to_owned()
    };
    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "TLS1_2"] {
        assert!(
            finding(old).starts_with("not offered"),
            "{name}: {old} {}",
            finding(old)
        );
    }
    assert!(
        finding("TLS1_3").starts_with("offered"),
        "{name}: TLS 1.3 {}",
        finding("TLS1_3")
    );
    let problems: Vec<String> = findings
        .iter()
        .filter(|f| !matches!(f["severity"].as_str(), Some("OK" | "INFO" | "DEBUG")))
        .filter(|f| !expected.iter().any(|id| f["id"] == *id))
        .map(|f| format!("{} {} {}", f["id"], f["severity"], f["finding"]))
        .collect();
    assert!(
        problems.is_empty(),
        "{name}: findings:\n{}",
        problems.join("\n")
    );
    let suites: Vec<String> = findings
        .iter()
        .filter(|f| f["id"].as_str().is_some_and(|id| id.starts_with("cipher-")))
        .map(|f| f["finding"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(!suites.is_empty(), "{name}: no cipher suites listed");
    for suite in &suites {
        assert!(
            suite.starts_with("TLS 1.3") && (suite.contains("256") || suite.contains("AESGCM")),
            "{name}: {suite}"
        );
    }
}

#[test]
fn ca_api_and_mesh_port_pass_an_independent_tls_scan() {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let identity = ca.identity(
        &server.url,
        "scanned",
        "spiffe://example.org/ns/pay/sa/payments",
        &[],
    );
    let mut config = sidecar_config(identity, "127.0.0.1");
    config
        .inbound
        .ports
        .push(InboundPort::new(8080, PortProtocol::Tcp));
    let sidecar = Sidecar::start(&ca, "scanned", &config);
    sidecar.wait_ready();

    assert_clean(
        "CA API",
        &testssl(server.addr, &ca.scratch("ca-scan.json")),
        &[],
    );
    // testssl 3.0 cannot present a client certificate, so its own OpenSSL handshake to the
    // mesh port is refused ("optimal_proto" warning); its socket-level protocol, cipher and
    // renegotiation probes still run, and the client-certificate demand is checked below.
    assert_clean(
        "mesh port",
        &testssl(sidecar.inbound, &ca.scratch("mesh-scan.json")),
        &["optimal_proto"],
    );

    // The mesh port demands a client certificate (the CA API offers but does not require one).
    let (accepted, text) = s_client(sidecar.inbound, &ca, &[]);
    assert!(!accepted && text.contains("certificate required"), "{text}");
}
