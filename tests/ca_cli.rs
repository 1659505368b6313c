//! `airlock ca init` / `ca issue` / `ca token` as processes, checked with openssl, Python
//! `cryptography` and x509-parser.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use airlock_testkit::*;
use base64::Engine;
use x509_parser::prelude::*;

/// The EC private scalar, as openssl decrypts and prints it.
fn private_scalar(key: &std::path::Path) -> Vec<u8> {
    let text = ok(Command::new("openssl")
        .args([
            "pkey",
            "-noout",
            "-text",
            "-passin",
            &format!("pass:{PASSPHRASE}"),
            "-in",
        ])
        .arg(key));
    let hex: String = text
        .split("priv:")
        .nth(1)
        .and_then(|rest| rest.split("pub:").next())
        .unwrap()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    // openssl may print a leading zero byte.
    bytes[bytes.len() - 32..].to_vec()
}

fn openssl_text(pem_file: &std::path::Path) -> String {
    ok(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(pem_file))
}

#[test]
fn init_writes_encrypted_keys_and_a_valid_ca_chain() {
    let ca = TestCa::init("example.org");
    for key in ["root.key", "issuing.key"] {
        let path = ca.path(key);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key}: {text}"
        );
        assert!(!text.contains("BEGIN PRIVATE KEY") && !text.contains("BEGIN EC PRIVATE KEY"));
        // openssl opens it with the passphrase, and not without.
        ok(Command::new("openssl")
            .args([
                "pkey",
                "-noout",
                "-passin",
                &format!("pass:{PASSPHRASE}"),
                "-in",
            ])
            .arg(&path));
        let wrong = run(Command::new("openssl")
            .args(["pkey", "-noout", "-passin", "pass:wrong-one", "-in"])
            .arg(&path));
        assert!(
            !wrong.status.success(),
            "{key} opened with a wrong passphrase"
        );
        // No plaintext key material: the private scalar appears neither raw nor decoded.
        let scalar = private_scalar(&path);
        assert_eq!(scalar.len(), 32);
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert!(
            !decoded.windows(32).any(|w| w == scalar.as_slice()),
            "{key} holds the plaintext key"
        );
    }

    ok(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca.path("root.pem"))
        .arg(ca.path("issuing.pem")));
    let root = openssl_text(&ca.path("root.pem"));
    assert!(root.contains("CA:TRUE"), "{root}");
    assert!(root.contains("X509v3 Key Usage: critical"), "{root}");
    assert!(root.contains("Certificate Sign, CRL Sign"), "{root}");
    assert!(root.contains("URI:spiffe://example.org"), "{root}");
    assert!(root.contains("ASN1 OID: prime256v1"), "{root}");
    let issuing = openssl_text(&ca.path("issuing.pem"));
    assert!(issuing.contains("CA:TRUE, pathlen:0"), "{issuing}");
    assert_eq!(
        fs::read(ca.path("bundle.pem")).unwrap(),
        fs::read(ca.path("root.pem")).unwrap()
    );
}

#[test]
fn init_refuses_bad_input_and_overwrites() {
    let ca = TestCa::init("example.org");
    let err = fails_with(
        airlock()
            .args(["ca", "init", "--trust-domain", "example.org", "--dir"])
            .arg(&ca.dir),
        2,
    );
    assert!(err.contains("already holds a CA"), "{err}");

    let fresh = ca.scratch("fresh");
    let err = fails_with(
        airlock()
            .env_remove("AIRLOCK_CA_PASSPHRASE")
            .args(["ca", "init", "--trust-domain", "td", "--dir"])
            .arg(&fresh),
        2,
    );
    assert!(
        err.contains("AIRLOCK_CA_PASSPHRASE") && err.contains("--passphrase-file"),
        "{err}"
    );
    let err = fails_with(
        airlock()
            .env("AIRLOCK_CA_PASSPHRASE", "short")
            .args(["ca", "init", "--trust-domain", "td", "--dir"])
            .arg(&fresh),
        2,
    );
    assert!(err.contains("shorter than 8"), "{err}");
    let err = fails_with(
        airlock()
            .args(["ca", "init", "--trust-domain", "Example.org", "--dir"])
            .arg(&fresh),
        2,
    );
    assert!(
        err.contains("--trust-domain") && err.contains("lowercase"),
        "{err}"
    );
    assert!(!fresh.join("ca.yaml").exists());

    // A passphrase file works, and one that others can read is refused.
    let pass = ca.scratch("pass");
    fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails_with(
        airlock()
            .env_remove("AIRLOCK_CA_PASSPHRASE")
            .args(["ca", "init", "--trust-domain", "td", "--dir"])
            .arg(&fresh)
            .arg("--passphrase-file")
            .arg(&pass),
        2,
    );
    assert!(
        err.contains("chmod 600") && err.contains(&pass.display().to_string()),
        "{err}"
    );
    fs::set_permissions(&pass, fs::Permissions::from_mode(0o600)).unwrap();
    ok(airlock()
        .env_remove("AIRLOCK_CA_PASSPHRASE")
        .args(["ca", "init", "--trust-domain", "td", "--dir"])
        .arg(&fresh)
        .arg("--passphrase-file")
        .arg(&pass));
}

#[test]
fn issued_svid_comes_from_the_template_not_the_csr() {
    let ca = TestCa::init("example.org");
    // A CSR that asks for everything it must not get.
    let (_key, csr) = openssl_csr(
        ca.temp.path(),
        "evil",
        &[
            "-subj",
            "/CN=forged admin/O=Evil Corp",
            "-addext",
            "subjectAltName=URI:spiffe://example.org/ns/kube-system/sa/admin,URI:spiffe://evil.org/x,DNS:evil.example.com,IP:10.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-addext",
            "extendedKeyUsage=codeSigning",
        ],
    );
    let id = ca.id("/ns/pay/sa/api");
    let before = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let chain = ca.issue(&id, &csr, &["--ttl", "30m"]);
    let chain_file = ca.scratch("chain.pem");
    fs::write(&chain_file, &chain).unwrap();

    // Independent checks: openssl path validation and Python's SPIFFE checklist.
    let verified = ok(Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(ca.path("root.pem"))
        .arg("-untrusted")
        .arg(ca.path("issuing.pem"))
        .arg(&chain_file));
    assert!(verified.contains(": OK"), "{verified}");
    let checklist = ok(python("check_svid.py").arg(&chain_file).arg(&id));
    assert!(checklist.trim().ends_with("ok"), "{checklist}");

    let text = openssl_text(&chain_file);
    for forbidden in [
        "forged",
        "Evil",
        "evil",
        "10.0.0.1",
        "kube-system",
        "Code Signing",
        "CA:TRUE",
        "Certificate Sign",
    ] {
        assert!(
            !text.contains(forbidden),
            "{forbidden:?} leaked into the SVID:\n{text}"
        );
    }
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );

    // x509-parser: the exact template.
    let pems: Vec<_> = Pem::iter_from_buffer(chain.as_bytes())
        .map(|p| p.unwrap())
        .collect();
    assert_eq!(pems.len(), 2, "leaf + intermediate");
    let leaf = pems[0].parse_x509().unwrap();
    assert!(leaf.subject().iter().next().is_none(), "empty subject");
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert_eq!(san.value.general_names, vec![GeneralName::URI(&id)]);
    let serial = leaf.raw_serial();
    assert!(
        serial.len() >= 16 && serial.len() <= 17,
        "128-bit serial, got {} bytes",
        serial.len()
    );
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    assert!(
        not_before <= before && before - not_before <= 60,
        "backdated at most a minute"
    );
    assert!((not_after - before - 1800).abs() <= 5, "ttl 30m honoured");
    assert!(leaf.key_usage().unwrap().unwrap().critical);
    let issuer = pems[1].parse_x509().unwrap();
    assert_eq!(leaf.issuer(), issuer.subject());
}

#[test]
fn issue_refuses_bad_csrs_ids_and_ttls() {
    let ca = TestCa::init("example.org");
    let id = ca.id("/ns/pay/sa/api");
    let issue = |csr: &std::path::Path, args: &[&str]| {
        let mut command = airlock();
        command
            .args(["ca", "issue", "--dir"])
            .arg(&ca.dir)
            .arg("--csr")
            .arg(csr)
            .args(args);
        command
    };

    // RSA keys, small or not, are refused by name.
    for bits in ["1024", "2048"] {
        let csr = ca.scratch(&format!("rsa{bits}.csr"));
        ok(Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                &format!("rsa:{bits}"),
                "-nodes",
                "-subj",
                "/CN=x",
                "-keyout",
            ])
            .arg(ca.scratch("rsa.key"))
            .arg("-out")
            .arg(&csr));
        let err = fails_with(&mut issue(&csr, &["--spiffe-id", &id]), 1);
        assert!(
            err.contains("RSA keys are not accepted") && err.contains(&format!("{bits} bits")),
            "{err}"
        );
    }

    // A CSR whose signature does not verify.
    let (_, good) = openssl_csr(ca.temp.path(), "good", &[]);
    let der = run(Command::new("openssl")
        .args(["req", "-outform", "DER", "-in"])
        .arg(&good))
    .stdout;
    let mut broken = der.clone();
    let last = broken.len() - 1;
    broken[last] ^= 0x01;
    let broken_der = ca.scratch("broken.der");
    fs::write(&broken_der, &broken).unwrap();
    let broken_pem = ca.scratch("broken.csr");
    ok(Command::new("openssl")
        .args(["req", "-inform", "DER", "-in"])
        .arg(&broken_der)
        .arg("-out")
        .arg(&broken_pem));
    let err = fails_with(&mut issue(&broken_pem, &["--spiffe-id", &id]), 1);
    assert!(
        err.contains("signature does not verify") && err.contains("broken.csr"),
        "{err}"
    );

    // Not a CSR at all.
    let err = fails_with(&mut issue(&ca.path("root.pem"), &["--spiffe-id", &id]), 1);
    assert!(err.contains("CERTIFICATE REQUEST"), "{err}");

    // Invalid SPIFFE IDs: clap refuses the flag with the broken rule (usage error).
    for (bad, reason) in [
        ("spiffe://example.org/a//b", "empty segment"),
        ("spiffe://Example.org/a", "lowercase"),
        ("spiffe://example.org/a/", "must not end"),
        ("spiffe://example.org/a%20b", "percent"),
        ("http://example.org/a", "must start with"),
        // X509-SVID §3.1: the trust domain's own ID names no workload.
        ("spiffe://example.org", "must have a path"),
    ] {
        let err = fails_with(&mut issue(&good, &["--spiffe-id", bad]), 2);
        assert!(
            err.contains("--spiffe-id") && err.contains(reason),
            "{bad}: {err}"
        );
    }
    let err = fails_with(
        &mut issue(&good, &["--spiffe-id", "spiffe://other.org/ns/a/sa/b"]),
        2,
    );
    assert!(err.contains("outside this CA's trust domain"), "{err}");
    let err = fails_with(
        &mut issue(&good, &["--spiffe-id", &ca.id("/ns/airlock/sa/ca")]),
        2,
    );
    assert!(err.contains("reserved"), "{err}");

    // TTL above the maximum names the limit.
    let err = fails_with(
        &mut issue(&good, &["--spiffe-id", &id, "--ttl", "2days"]),
        2,
    );
    assert!(
        err.contains("--ttl") && err.contains("max_ttl") && err.contains("3600"),
        "{err}"
    );
}

#[test]
fn not_after_is_capped_at_the_issuer() {
    let ca = TestCa::init("example.org");
    ca.set("max_ttl", "365days");
    let (_, csr) = openssl_csr(ca.temp.path(), "w", &[]);
    let chain = ca.issue(&ca.id("/ns/a/sa/b"), &csr, &["--ttl", "365days"]);
    let pems: Vec<_> = Pem::iter_from_buffer(chain.as_bytes())
        .map(|p| p.unwrap())
        .collect();
    let leaf = pems[0].parse_x509().unwrap();
    let issuer = pems[1].parse_x509().unwrap();
    assert_eq!(leaf.validity().not_after, issuer.validity().not_after);
}

#[test]
fn key_files_are_guarded() {
    let ca = TestCa::init("example.org");
    let (_, csr) = openssl_csr(ca.temp.path(), "w", &[]);
    let id = ca.id("/ns/a/sa/b");
    let issue = || {
        let mut command = airlock();
        command
            .args(["ca", "issue", "--spiffe-id", &id, "--dir"])
            .arg(&ca.dir)
            .arg("--csr")
            .arg(&csr);
        command
    };

    let err = fails_with(
        issue().env("AIRLOCK_CA_PASSPHRASE", "not-the-passphrase"),
        1,
    );
    assert!(
        err.contains("wrong passphrase") && err.contains("issuing.key"),
        "{err}"
    );

    fs::set_permissions(ca.path("issuing.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails_with(&mut issue(), 1);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
    fs::set_permissions(ca.path("issuing.key"), fs::Permissions::from_mode(0o600)).unwrap();

    fs::write(
        ca.path("ca.yaml"),
        "trust_domain: example.org\nmax_ttl: 1h\nlisten_on: x\n",
    )
    .unwrap();
    let err = fails_with(&mut issue(), 2);
    assert!(
        err.contains("ca.yaml") && err.contains("listen_on") && err.contains("line 3"),
        "{err}"
    );
}

#[test]
fn token_create_refuses_foreign_ids_and_stores_no_secret() {
    let ca = TestCa::init("example.org");
    let token = ca.token(&ca.id("/ns/a/sa/b"), &["--ttl", "10m", "--uses", "2"]);
    assert!(token.starts_with("airlock-join."), "{token}");
    let stored = fs::read_to_string(ca.path("tokens.json")).unwrap();
    let secret = token.rsplit('.').next().unwrap();
    assert!(!stored.contains(secret));
    assert_eq!(
        fs::metadata(ca.path("tokens.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // Usage errors, each naming what is wrong.
    let refused = |id: &str, dir: &std::path::Path| {
        fails_with(
            airlock()
                .args(["ca", "token", "create", "--spiffe-id", id, "--dir"])
                .arg(dir),
            2,
        )
    };
    let err = refused("spiffe://other.org/x", &ca.dir);
    assert!(err.contains("outside this CA's trust domain"), "{err}");
    let err = refused("spiffe://example.org", &ca.dir);
    assert!(
        err.contains("--spiffe-id") && err.contains("must have a path"),
        "{err}"
    );
    let err = refused("spiffe://example.org/x", &ca.scratch("nope"));
    assert!(err.contains("not a CA directory"), "{err}");
}
