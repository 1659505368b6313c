//! Revocation and rotation with the real binary: `airlock ca revoke` and `ca rotate` change
//! what a running `ca serve` (two replicas sharing the deny list) and a running sidecar
//! accept, within seconds and without a restart. curl and openssl are the clients.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_config::{InboundPort, PortProtocol};
use airlock_testkit::*;

const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";
const CART: &str = "spiffe://example.org/ns/shop/sa/cart";

/// An SVID for `id` from `ca issue`: (chain, key).
fn issue(ca: &TestCa, name: &str, id: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = openssl_csr(ca.temp.path(), name, &[]);
    let chain = ca.scratch(&format!("{name}.pem"));
    std::fs::write(&chain, ca.issue(id, &csr, &["--ttl", "10m"])).unwrap();
    (chain, key)
}

/// The serial as openssl prints it (upper case, maybe a leading 00).
fn serial(chain: &Path) -> String {
    ok(Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(chain))
    .trim()
    .trim_start_matches("serial=")
    .to_owned()
}

/// A renewal: `POST /v1/svid` with `chain` as client certificate.
fn renew(ca: &TestCa, server: &CaServer, chain: &Path, key: &Path) -> Reply {
    let (_, csr) = openssl_csr(ca.temp.path(), "renewal", &[]);
    let body = svid_request(&csr, None);
    post_svid(
        ca,
        server,
        &body,
        &[
            "--cert",
            &chain.display().to_string(),
            "--key",
            &key.display().to_string(),
        ],
    )
}

fn revoke(ca: &TestCa, args: &[&str]) -> String {
    ok(airlock()
        .args(["ca", "revoke", "--dir"])
        .arg(&ca.dir)
        .args(args))
}

#[test]
fn a_revocation_reaches_both_ca_replicas_and_the_sidecars_within_seconds() {
    let ca = TestCa::init("example.org");
    // Two replicas of one CA read the same deny list, as two pods read one ConfigMap.
    let shared = ca.scratch("shared");
    std::fs::create_dir(&shared).unwrap();
    ca.set(
        "revocation_file",
        &shared.join("revocations.json").display().to_string(),
    );
    let first = CaServer::start(&ca);
    let second = CaServer::start(&ca);
    let echo = echo_server();
    let policies = ca.scratch("policies");
    std::fs::create_dir(&policies).unwrap();
    let mut identity = ca.identity(&first.url, "payments", PAYMENTS, &[]);
    identity.bundle_refresh = Duration::from_secs(1);
    let mut config = sidecar_config(identity, "127.0.0.21");
    config.inbound.ports.push(InboundPort {
        app: Some(echo),
        ..InboundPort::new(8080, PortProtocol::Tcp)
    });
    config.policy.paths = vec![policies.clone()];
    let payments = Sidecar::start(&ca, "payments", &config);
    payments.wait_ready();

    let (checkout_chain, checkout_key) = issue(&ca, "checkout", CHECKOUT);
    let (other_chain, other_key) = issue(&ca, "other", CHECKOUT);
    let (accepted, text) = s_client(
        payments.inbound,
        &ca,
        &present_svid(&checkout_chain, &checkout_key),
    );
    assert!(accepted, "control: before the revocation\n{text}");
    assert_eq!(
        renew(&ca, &first, &checkout_chain, &checkout_key).status,
        200
    );

    let said = revoke(
        &ca,
        &[
            "--serial",
            &serial(&checkout_chain),
            "--reason",
            "laptop stolen",
        ],
    );
    assert!(said.contains("revoked serial"), "{said}");
    let stored = std::fs::read_to_string(shared.join("revocations.json")).unwrap();
    assert!(stored.contains("laptop stolen"), "{stored}");

    wait_for("the sidecar refuses the revoked SVID", || {
        !s_client(
            payments.inbound,
            &ca,
            &present_svid(&checkout_chain, &checkout_key),
        )
        .0
    });
    assert!(
        metric(
            &payments.metrics(),
            "airlock_tls_handshake_errors_total{reason=\"revoked\"}"
        ) >= 1.0
    );
    let (accepted, text) = s_client(
        payments.inbound,
        &ca,
        &present_svid(&other_chain, &other_key),
    );
    assert!(
        accepted,
        "another SVID of the same identity still works\n{text}"
    );
    for server in [&first, &second] {
        // A 401 over a working handshake: the sidecar then authenticates with its token,
        // and can still fetch the bundle.
        wait_for("each replica refuses the revoked SVID's renewal", || {
            let reply = renew(&ca, server, &checkout_chain, &checkout_key);
            reply.status == 401 && reply.body.contains("revoked")
        });
        assert_eq!(renew(&ca, server, &other_chain, &other_key).status, 200);
    }

    // A whole identity: issuance is refused too, and the refused join token is not spent.
    let token = ca.token(CART, &[]);
    let (cart_chain, cart_key) = issue(&ca, "cart", CART);
    revoke(&ca, &["--spiffe-id", CART]);
    let err = fails_with(
        airlock()
            .args(["ca", "issue", "--spiffe-id", CART, "--dir"])
            .arg(&ca.dir)
            .arg("--csr")
            .arg(ca.temp.path().join("cart.csr")),
        2,
    );
    assert!(err.contains("revoked"), "{err}");
    let (_, csr) = openssl_csr(ca.temp.path(), "cart-new", &[]);
    let body = svid_request(&csr, None);
    let bearer = format!("authorization: Bearer {token}");
    let with_token = |server: &CaServer| post_svid(&ca, server, &body, &["-H", &bearer]);
    wait_for("the replica has loaded the revocation", || {
        renew(&ca, &second, &cart_chain, &cart_key).status != 200
    });
    let reply = with_token(&second);
    assert_eq!(
        (reply.status, reply.error_code().as_str()),
        (403, "identity_revoked"),
        "{reply:?}"
    );
    wait_for("the sidecar refuses every SVID of the identity", || {
        !s_client(payments.inbound, &ca, &present_svid(&cart_chain, &cart_key)).0
    });

    revoke(&ca, &["--spiffe-id", CART, "--lift"]);
    wait_for("lifted: the same token now redeems", || {
        with_token(&first).status == 200
    });
    assert_eq!(with_token(&second).status, 401, "and only once");

    let err = fails_with(
        airlock()
            .args(["ca", "revoke", "--serial", "xyz", "--dir"])
            .arg(&ca.dir),
        2,
    );
    assert!(
        err.contains("--serial") && err.contains("hexadecimal"),
        "{err}"
    );
    let err = fails_with(airlock().args(["ca", "revoke", "--dir"]).arg(&ca.dir), 2);
    assert!(
        err.contains("--serial") || err.contains("--spiffe-id"),
        "{err}"
    );
}

#[test]
fn a_revocation_cuts_live_tunnels_and_refuses_pooled_connections() {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let policies = ca.scratch("policies");
    std::fs::create_dir(&policies).unwrap();
    let allow = format!("  - from: [{{source: {{principals: [{CHECKOUT}]}}}}]\n");
    std::fs::write(
        policies.join("payments.yaml"),
        policy("pay/checkout", PAYMENTS, "ALLOW", Mode::Enforce, &allow),
    )
    .unwrap();
    let mut identity = ca.identity(&server.url, "payments", PAYMENTS, &[]);
    identity.bundle_refresh = Duration::from_secs(1);
    let mut config = sidecar_config(identity, "127.0.0.22");
    config.inbound.ports.push(InboundPort {
        app: Some(echo_server()),
        ..InboundPort::new(8080, PortProtocol::Tcp)
    });
    config.policy.paths = vec![policies];
    let payments = Sidecar::start(&ca, "payments", &config);
    payments.wait_ready();
    let identity = ca.identity(&server.url, "checkout", CHECKOUT, &[]);
    let checkout = caller(
        &ca,
        "checkout",
        identity,
        "payments",
        PAYMENTS,
        payments.inbound,
        &[8080],
    );
    let upstream = checkout.upstream("payments", 8080);

    // A live tunnel, and the pooled mesh connection under it.
    let mut live = connect(upstream);
    assert_eq!(
        round_trip(&mut live, b"before").as_deref(),
        Some(&b"before"[..])
    );
    revoke(&ca, &["--spiffe-id", CHECKOUT, "--reason", "compromised"]);
    // Within a bundle refresh: the live tunnel is cut, not left to run on the handshake
    // of before ...
    wait_for("the live tunnel to be cut", || {
        round_trip(&mut live, b"x").is_none()
    });
    // ... and a new one is refused, though the caller's pool had a connection open.
    let mut fresh = connect(upstream);
    assert_eq!(round_trip(&mut fresh, b"after"), None);
    let metrics = payments.metrics();
    assert!(
        metric(&metrics, "airlock_authz_total{decision=\"terminate\"") >= 1.0,
        "{metrics}"
    );
    let log = payments.log_text();
    assert!(log.contains("the peer's identity is revoked"), "{log}");

    // The control case: lifted, the same caller gets through again.
    revoke(&ca, &["--spiffe-id", CHECKOUT, "--lift"]);
    wait_up_to(
        Duration::from_secs(30),
        "the lifted caller to get through",
        || round_trip(&mut connect(upstream), b"again").is_some(),
    );
}

#[test]
fn rotation_ends_renewal_for_the_old_issuer_unless_kept() {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let (a_chain, a_key) = issue(&ca, "a", CHECKOUT);
    assert_eq!(renew(&ca, &server, &a_chain, &a_key).status, 200, "control");

    let said = ok(airlock().args(["ca", "rotate", "--dir"]).arg(&ca.dir));
    assert!(said.contains("cannot renew"), "{said}");
    wait_for(
        "the running CA refuses renewal by the retired issuer",
        || {
            let reply = renew(&ca, &server, &a_chain, &a_key);
            reply.status == 401 && reply.body.contains("retired issuing CA")
        },
    );
    let (b_chain, b_key) = issue(&ca, "b", CHECKOUT);
    let reply = renew(&ca, &server, &b_chain, &b_key);
    assert_eq!(reply.status, 200, "the new issuer's SVIDs renew: {reply:?}");
    let issuing = std::fs::read_to_string(ca.path("issuing.pem")).unwrap();
    assert!(
        reply.json()["chain"][1].as_str().unwrap() == issuing,
        "the running CA signs with the new issuing certificate"
    );

    let said = ok(airlock()
        .args(["ca", "rotate", "--keep-renewals", "--dir"])
        .arg(&ca.dir));
    assert!(said.contains("may renew until they expire"), "{said}");
    wait_for("the newest issuer changed", || {
        let (c_chain, c_key) = issue(&ca, "c", CHECKOUT);
        let reply = renew(&ca, &server, &c_chain, &c_key);
        reply.status == 200 && reply.json()["chain"][1].as_str().unwrap() != issuing
    });
    assert_eq!(
        renew(&ca, &server, &b_chain, &b_key).status,
        200,
        "kept: the previous issuer's SVIDs renew"
    );
    assert_eq!(
        renew(&ca, &server, &a_chain, &a_key).status,
        401,
        "the one before it is not kept"
    );

    let old_root = std::fs::read_to_string(ca.path("root.pem")).unwrap();
    let said = ok(airlock()
        .args(["ca", "rotate", "--root", "--dir"])
        .arg(&ca.dir));
    assert!(said.contains("previous root stays trusted until"), "{said}");
    let bundle = std::fs::read_to_string(ca.path("bundle.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    assert!(bundle.contains(old_root.trim()));
    let (d_chain, _) = issue(&ca, "d", CHECKOUT);
    let new_root = std::fs::read_to_string(ca.path("root.pem")).unwrap();
    assert_ne!(new_root, old_root);
    let untrusted = ca.scratch("d-intermediate.pem");
    std::fs::write(
        &untrusted,
        std::fs::read_to_string(ca.path("issuing.pem")).unwrap(),
    )
    .unwrap();
    let verified = ok(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca.path("root.pem"))
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&d_chain));
    assert!(verified.contains("OK"), "{verified}");
    // The old root stays trusted: SVIDs under it still verify against the bundle.
    let verified = ok(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca.path("bundle.pem"))
        .arg("-untrusted")
        .arg(&b_chain)
        .arg(&b_chain));
    assert!(verified.contains("OK"), "{verified}");

    // A rotation cut short between the issuing key and its certificate leaves a pair that
    // does not load; running `ca rotate` again repairs it.
    std::fs::copy(ca.path("root.key"), ca.path("issuing.key")).unwrap();
    let (_, csr) = openssl_csr(ca.temp.path(), "after-crash", &[]);
    let err = fails_with(
        airlock()
            .args(["ca", "issue", "--spiffe-id", CHECKOUT, "--dir"])
            .arg(&ca.dir)
            .arg("--csr")
            .arg(&csr),
        1,
    );
    assert!(err.contains("does not belong"), "{err}");
    ok(airlock().args(["ca", "rotate", "--dir"]).arg(&ca.dir));
    assert!(!ca.issue(CHECKOUT, &csr, &[]).is_empty(), "repaired");

    std::fs::rename(ca.path("root.key"), ca.scratch("offline-root.key")).unwrap();
    let err = fails_with(airlock().args(["ca", "rotate", "--dir"]).arg(&ca.dir), 2);
    assert!(err.contains("root.key") && err.contains("offline"), "{err}");
}
