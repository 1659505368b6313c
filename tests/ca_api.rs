//! `airlock ca serve` over real HTTPS: curl and openssl as clients, Python `cryptography`
//! as the Kubernetes token signer, and airlock's own CA client.

use std::fs;
use std::process::Command;

use airlock_testkit::*;

fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

#[test]
fn join_token_issues_once_and_the_audit_log_keeps_no_secrets() {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let id = ca.id("/ns/shop/sa/checkout");
    let token = ca.token(&id, &[]);
    // The CSR asks for another identity; the token decides.
    let (_, csr) = openssl_csr(
        ca.temp.path(),
        "w",
        &[
            "-addext",
            "subjectAltName=URI:spiffe://example.org/ns/kube-system/sa/admin",
        ],
    );
    let body = svid_request(&csr, Some(600));

    let reply = post_svid(&ca, &server, &body, &["-H", &bearer(&token)]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let json = reply.json();
    assert_eq!(json["spiffe_id"], id.as_str());
    assert_eq!(
        json["bundle"][0].as_str().unwrap(),
        fs::read_to_string(ca.path("bundle.pem")).unwrap()
    );
    assert!(json["expires_at"].as_str().unwrap().ends_with('Z'));
    let chain = ca.scratch("chain.pem");
    save_chain(&reply, &chain);
    let checklist = ok(python("check_svid.py").arg(&chain).arg(&id));
    assert!(checklist.trim().ends_with("ok"), "{checklist}");
    ok(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca.path("bundle.pem"))
        .arg("-untrusted")
        .arg(ca.path("issuing.pem"))
        .arg(&chain));

    // Replay of the single-use token.
    let replay = post_svid(&ca, &server, &body, &["-H", &bearer(&token)]);
    assert_eq!(
        (replay.status, replay.error_code().as_str()),
        (401, "unauthenticated"),
        "{replay:?}"
    );

    wait_for("audit line", || server.log_text().contains("svid_issued"));
    let log = server.log_text();
    let audit: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["event"] == "svid_issued")
        .expect("a JSON audit line");
    assert_eq!(audit["fields"]["identity"], id.as_str());
    assert_eq!(audit["fields"]["auth_method"], "join_token");
    assert!(audit["fields"]["serial"].as_str().unwrap().len() == 32);
    assert!(
        audit["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let secret = token.rsplit('.').next().unwrap();
    assert!(
        !log.contains(secret) && !log.contains("BEGIN"),
        "secrets in the log:\n{log}"
    );
}

#[test]
fn a_single_use_token_has_one_winner_under_concurrency() {
    let ca = TestCa::init("example.org");
    ca.configure("rate_limit: {per_second: 100.0, burst: 100}\n");
    let server = CaServer::start(&ca);
    let token = ca.token(&ca.id("/ns/a/sa/b"), &[]);
    let (_, csr) = openssl_csr(ca.temp.path(), "w", &[]);
    let body = svid_request(&csr, None);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| post_svid(&ca, &server, &body, &["-H", &bearer(&token)]).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        7,
        "{statuses:?}"
    );
}

#[test]
fn kubernetes_service_account_tokens() {
    let ca = TestCa::init("example.org");
    ok(python("k8s_jwt.py").arg("keygen").arg(&ca.dir));
    ca.configure(
        "kubernetes:\n  issuer: https://kubernetes.default.svc\n  audience: airlock-ca\n  jwks_file: jwks.json\n  allowed_namespaces: [shop, pay]\n",
    );
    let server = CaServer::start(&ca);
    let (_, csr) = openssl_csr(ca.temp.path(), "w", &[]);
    let body = svid_request(&csr, None);
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |namespace: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = serde_json::json!({
            "iss": "https://kubernetes.default.svc",
            "aud": ["airlock-ca"],
            "sub": format!("system:serviceaccount:{namespace}:checkout"),
            "iat": now, "nbf": now - 5, "exp": now + 600,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": "checkout", "uid": "1234"}, "pod": {"name": "p", "uid": "5"}},
        });
        edit(&mut claims);
        ok(python("k8s_jwt.py")
            .arg("sign")
            .arg(&ca.dir)
            .arg(claims.to_string()))
        .trim()
        .to_owned()
    };
    let keep = |_: &mut serde_json::Value| {};

    let good = post_svid(
        &ca,
        &server,
        &body,
        &["-H", &bearer(&claims("shop", &keep))],
    );
    assert_eq!(good.status, 200, "{good:?}");
    assert_eq!(
        good.json()["spiffe_id"],
        "spiffe://example.org/ns/shop/sa/checkout"
    );

    let refused: Vec<(&str, String, u16)> = vec![
        (
            "expired",
            claims("shop", &|c| {
                c["exp"] = (now - 120).into();
                c["nbf"] = (now - 600).into();
            }),
            401,
        ),
        (
            "not yet valid",
            claims("shop", &|c| c["nbf"] = (now + 600).into()),
            401,
        ),
        (
            "wrong audience",
            claims("shop", &|c| c["aud"] = serde_json::json!(["kubernetes"])),
            401,
        ),
        (
            "wrong issuer",
            claims("shop", &|c| c["iss"] = "https://evil.example".into()),
            401,
        ),
        (
            "sub mismatch",
            claims("shop", &|c| {
                c["sub"] = "system:serviceaccount:shop:admin".into()
            }),
            401,
        ),
        ("namespace not allowed", claims("kube-system", &keep), 403),
    ];
    for (what, token, status) in refused {
        let reply = post_svid(&ca, &server, &body, &["-H", &bearer(&token)]);
        assert_eq!(reply.status, status, "{what}: {reply:?}");
    }
    // Tampered payload: swap the namespace but keep the signature.
    let token = claims("shop", &keep);
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(engine.decode(parts[1]).unwrap())
        .unwrap()
        .replace("shop", "pay");
    let forged = format!("{}.{}.{}", parts[0], engine.encode(payload), parts[2]);
    let reply = post_svid(&ca, &server, &body, &["-H", &bearer(&forged)]);
    assert_eq!(reply.status, 401, "tampered: {reply:?}");
    // alg=none.
    let none = format!(
        "{}.{}.",
        engine.encode(r#"{"alg":"none","kid":"sa-key-1"}"#),
        parts[1]
    );
    let reply = post_svid(&ca, &server, &body, &["-H", &bearer(&none)]);
    assert_eq!(reply.status, 401, "alg none: {reply:?}");
}

#[test]
fn a_changed_jwks_is_reloaded_and_an_invalid_one_keeps_the_old_keys() {
    let ca = TestCa::init("example.org");
    ok(python("k8s_jwt.py").arg("keygen").arg(&ca.dir));
    ca.configure(
        "kubernetes:\n  issuer: https://kubernetes.default.svc\n  audience: airlock-ca\n  jwks_file: jwks.json\n",
    );
    let server = CaServer::start(&ca);
    let (_, csr) = openssl_csr(ca.temp.path(), "w", &[]);
    let body = svid_request(&csr, None);
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": "https://kubernetes.default.svc", "aud": ["airlock-ca"],
        "sub": "system:serviceaccount:shop:checkout", "iat": now, "nbf": now - 5, "exp": now + 600,
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "checkout", "uid": "1"}},
    })
    .to_string();
    let sign = || {
        ok(python("k8s_jwt.py").arg("sign").arg(&ca.dir).arg(&claims))
            .trim()
            .to_owned()
    };
    let status = |token: &str| post_svid(&ca, &server, &body, &["-H", &bearer(token)]).status;
    let old_token = sign();
    assert_eq!(status(&old_token), 200, "control: the first key");

    // The cluster rotates its service-account key: a new JWKS (as the ConfigMap update).
    ok(python("k8s_jwt.py").arg("keygen").arg(&ca.dir));
    let new_token = sign();
    wait_for("tokens of the new key are accepted", || {
        status(&new_token) == 200
    });
    assert_eq!(status(&old_token), 401, "the old key is gone with its JWKS");

    std::fs::write(ca.path("jwks.json"), "{not json").unwrap();
    wait_for("the refused reload is logged", || {
        server.log_text().contains("the changed JWKS does not load")
    });
    assert_eq!(
        status(&new_token),
        200,
        "an invalid JWKS keeps the last valid keys"
    );
}

#[test]
fn ipv4_callers_of_a_dual_stack_listener_have_buckets_of_their_own() {
    let ca = TestCa::init("example.org");
    ca.configure("rate_limit:\n  per_second: 0.001\n  burst: 2\n");
    let server = CaServer::start_at(&ca, "[::]:0");
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let post_from = |source: &str| {
        curl_verified(
            &ca.path("bundle.pem"),
            &[
                "--interface",
                source,
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
                "-X",
                "POST",
                "--data-binary",
                "{}",
            ],
            &format!("https://localhost:{port}/v1/svid"),
        )
    };
    // Each caller arrives as ::ffff:127.0.0.x.
    assert_eq!(post_from("127.0.0.2").status, 400);
    assert_eq!(post_from("127.0.0.2").status, 400);
    assert_eq!(
        post_from("127.0.0.2").status,
        429,
        "127.0.0.2 used its burst"
    );
    assert_eq!(
        post_from("127.0.0.3").status,
        400,
        "another IPv4 caller is not in 127.0.0.2's bucket"
    );
}

#[test]
fn renewal_with_a_valid_svid_and_refusals_for_expired_or_foreign_ones() {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let id = ca.id("/ns/pay/sa/api");
    let (key, csr) = openssl_csr(ca.temp.path(), "w", &[]);
    let chain = ca.scratch("chain.pem");
    fs::write(&chain, ca.issue(&id, &csr, &[])).unwrap();
    let body = svid_request(&csr, None);
    let with_cert = |chain: &std::path::Path, key: &std::path::Path| {
        vec![
            "--cert".to_owned(),
            chain.display().to_string(),
            "--key".to_owned(),
            key.display().to_string(),
        ]
    };

    let args = with_cert(&chain, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let renewed = post_svid(&ca, &server, &body, &args);
    assert_eq!(renewed.status, 200, "{renewed:?}");
    assert_eq!(renewed.json()["spiffe_id"], id.as_str());
    wait_for("renewal audit", || {
        server.log_text().contains("svid_renewal")
    });

    // No credentials at all.
    let anonymous = post_svid(&ca, &server, &body, &[]);
    assert_eq!(
        (anonymous.status, anonymous.error_code().as_str()),
        (401, "unauthenticated")
    );

    // An expired SVID: the TLS handshake itself is refused, nothing is issued.
    let (old_key, old_csr) = openssl_csr(ca.temp.path(), "old", &[]);
    let old_chain = ca.scratch("old.pem");
    fs::write(&old_chain, ca.issue(&id, &old_csr, &["--ttl", "1s"])).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let args = with_cert(&old_chain, &old_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let expired = post_svid(&ca, &server, &body, &args);
    assert_ne!(expired.status, 200, "{expired:?}");
    assert_ne!(expired.curl_exit, 0, "{expired:?}");

    // A valid SVID of another trust domain (another CA).
    let foreign = TestCa::init("other.org");
    let (f_key, f_csr) = openssl_csr(foreign.temp.path(), "f", &[]);
    let f_chain = foreign.scratch("f.pem");
    fs::write(
        &f_chain,
        foreign.issue(&foreign.id("/ns/pay/sa/api"), &f_csr, &[]),
    )
    .unwrap();
    let args = with_cert(&f_chain, &f_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reply = post_svid(&ca, &server, &body, &args);
    assert_ne!(reply.status, 200, "{reply:?}");

    // Leaves signed by the real issuing key, outside airlock's template: a workload ID
    // renews (the control), the trust domain's own ID does not (X509-SVID §5.2).
    let (forged_chain, forged_key) = forge_leaf(&ca, "forged-workload", &id);
    let args = with_cert(&forged_chain, &forged_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let control = post_svid(&ca, &server, &body, &args);
    assert_eq!(control.status, 200, "{control:?}");
    let (root_chain, root_key) = forge_leaf(&ca, "forged-root", "spiffe://example.org");
    let args = with_cert(&root_chain, &root_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let reply = post_svid(&ca, &server, &body, &args);
    assert_ne!(reply.status, 200, "{reply:?}");
    assert_ne!(reply.curl_exit, 0, "the handshake itself fails: {reply:?}");

    let issued = server.log_text().matches("\"svid_issued\"").count();
    assert_eq!(issued, 2, "only the valid renewals were issued");
}

#[test]
fn api_errors_have_stable_codes_and_limits() {
    let ca = TestCa::init("example.org");
    ca.configure("rate_limit: {per_second: 0.01, burst: 6}\n");
    let server = CaServer::start(&ca);
    let token = ca.token(&ca.id("/ns/a/sa/b"), &["--uses", "5"]);
    let (_, csr) = openssl_csr(ca.temp.path(), "w", &[]);
    let auth = bearer(&token);

    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", "{not json".into(), 400, "bad_request"),
        (
            "unknown field",
            r#"{"csr":"x","spiffe_id":"spiffe://example.org/admin"}"#.into(),
            400,
            "bad_request",
        ),
        ("bad CSR", r#"{"csr":"hello"}"#.into(), 400, "csr_rejected"),
        (
            "ttl over max",
            svid_request(&csr, Some(7 * 24 * 3600)),
            400,
            "ttl_rejected",
        ),
        (
            "too large",
            format!(r#"{{"csr":"{}"}}"#, "A".repeat(70 * 1024)),
            413,
            "body_too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let reply = post_svid(&ca, &server, &body, &["-H", &auth]);
        assert_eq!(
            (reply.status, reply.error_code().as_str()),
            (status, code),
            "{what}: {reply:?}"
        );
    }
    // None of those refusals consumed the token: it still works.
    let good = post_svid(&ca, &server, &svid_request(&csr, None), &["-H", &auth]);
    assert_eq!(good.status, 200, "{good:?}");
    // The bucket (6) is now empty.
    let limited = post_svid(&ca, &server, &svid_request(&csr, None), &["-H", &auth]);
    assert_eq!(
        (limited.status, limited.error_code().as_str()),
        (429, "rate_limited"),
        "{limited:?}"
    );

    let missing = curl(&ca, &server, "/v1/nothing", &[]);
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );
    let wrong = curl(&ca, &server, "/v1/svid", &[]);
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (405, "method_not_allowed")
    );
}

#[test]
fn bundle_endpoints_and_tls_1_3_only() {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let pem = curl(&ca, &server, "/v1/bundle", &[]);
    assert_eq!(pem.status, 200);
    assert_eq!(pem.body, fs::read_to_string(ca.path("bundle.pem")).unwrap());
    let jwks = curl(&ca, &server, "/v1/bundle.jwks", &[]).json();
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["use"].as_str(),
            key["kty"].as_str(),
            key["crv"].as_str()
        ),
        (Some("x509-svid"), Some("EC"), Some("P-256"))
    );
    assert!(key.get("kid").is_none());
    assert!(
        jwks["spiffe_sequence"].as_u64().is_some()
            && jwks["spiffe_refresh_hint"].as_u64().is_some()
    );

    // TLS 1.2 is not offered; the API's certificate is the CA's SPIFFE identity.
    let tls12 = curl(&ca, &server, "/v1/bundle", &["--tls-max", "1.2"]);
    assert_ne!(tls12.curl_exit, 0, "{tls12:?}");
    let s_client = run(Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &server.addr.to_string(),
            "-showcerts",
            "-CAfile",
        ])
        .arg(ca.path("bundle.pem"))
        .stdin(std::process::Stdio::null()));
    let text = stdout(&s_client);
    assert!(
        text.contains("TLSv1.3") && text.contains("Verify return code: 0 (ok)"),
        "{text}"
    );
    let leaf = text
        .split("-----END CERTIFICATE-----")
        .next()
        .unwrap()
        .to_owned()
        + "-----END CERTIFICATE-----\n";
    let leaf_file = ca.scratch("api.pem");
    fs::write(
        &leaf_file,
        leaf.split("-----BEGIN")
            .nth(1)
            .map(|b| format!("-----BEGIN{b}"))
            .unwrap(),
    )
    .unwrap();
    let details = ok(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf_file));
    assert!(
        details.contains("URI:spiffe://example.org/ns/airlock/sa/ca")
            && details.contains("DNS:localhost"),
        "{details}"
    );
}

#[test]
fn the_sidecar_client_obtains_and_renews_over_mutual_tls() {
    use airlock_ca::client::CaClient;
    use airlock_identity::{BundleStore, SvidStore, TrustBundle, TrustDomain, tls};

    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let id = ca.id("/ns/shop/sa/web");
    let token = ca.token(&id, &[]);
    let td = TrustDomain::parse("example.org").unwrap();
    let bundle = BundleStore::new(TrustBundle::load(td.clone(), &ca.path("bundle.pem")).unwrap());
    let store = SvidStore::new(tls::provider());
    let client = CaClient::new(&server.url, bundle, store.clone()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let first = client.obtain_svid(Some(&token), None).await.unwrap();
        assert_eq!(first.response.spiffe_id.as_str(), id);
        let first_serial = store.install(first.chain, first.key).unwrap().serial_hex;

        // Renewal: no token, the installed SVID authenticates over mTLS.
        let second = client
            .obtain_svid(None, Some(std::time::Duration::from_secs(300)))
            .await
            .unwrap();
        assert_eq!(second.response.spiffe_id.as_str(), id);
        let second_leaf = store.install(second.chain, second.key).unwrap();
        assert_ne!(second_leaf.serial_hex, first_serial);
        assert!(second_leaf.not_after - second_leaf.not_before <= 300 + 30);

        // The replayed token is refused with the CA's code.
        let err = client
            .obtain_svid(Some(&token), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("401") && err.contains("unauthenticated"),
            "{err}"
        );
        let (pem, revocations) = client.fetch_trust().await.unwrap();
        assert_eq!(pem, fs::read_to_string(ca.path("bundle.pem")).unwrap());
        assert_eq!(revocations, Default::default(), "nothing revoked yet");
    });

    // A keep-alive connection outliving its client certificate cannot renew on it.
    runtime.block_on(async {
        let short = client
            .obtain_svid(None, Some(std::time::Duration::from_secs(2)))
            .await
            .unwrap();
        store.install(short.chain, short.key).unwrap();
        let mut session = client.connect().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let err = session
            .obtain_svid(None, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("401") && err.contains("expired since this connection"),
            "{err}"
        );
    });

    // A client that pins a CA of another trust domain refuses this server.
    let foreign = TestCa::init("other.org");
    let other_td = TrustDomain::parse("other.org").unwrap();
    let foreign_bundle =
        BundleStore::new(TrustBundle::load(other_td, &foreign.path("bundle.pem")).unwrap());
    let client =
        CaClient::new(&server.url, foreign_bundle, SvidStore::new(tls::provider())).unwrap();
    let err = runtime
        .block_on(client.fetch_trust())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot reach the CA") && err.contains("certificate"),
        "{err}"
    );
}
