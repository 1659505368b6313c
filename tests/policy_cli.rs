//! `airlock policy check | eval | test` through the real binary.

use std::path::Path;

use airlock_testkit::*;

fn examples() -> [&'static str; 2] {
    ["examples/policies", "examples/policy-tests"]
}

#[test]
fn the_shipped_examples_are_clean_and_their_suite_passes() {
    let out = ok(airlock()
        .args([
            "policy",
            "check",
            "--trust-domain",
            "demo.airlock",
            "--tcp-ports",
            "5432",
            "--at",
            "2026-12-10T00:00:00Z",
        ])
        .args(examples()));
    assert!(
        out.contains("5 policies, 2 test suites: ok, 0 warning(s)"),
        "{out}"
    );
    let out = ok(airlock().args(["policy", "test"]).args(examples()));
    assert!(out.trim_end().ends_with("14 passed, 0 failed"), "{out}");
}

#[test]
fn check_reports_every_error_with_its_position_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [spiffe://td/ns/a//b]}}]\n---\napiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  action: ALLOW\n  rules:\n  - to: [{operation: {portz: [80]}}]\n",
    )
    .unwrap();
    let err = fails_with(airlock().args(["policy", "check"]).arg(&file), 1);
    let shown = file.display().to_string();
    assert!(
        err.contains(&format!("{shown}:7:")) && err.contains("empty segment"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{shown}:15:")) && err.contains("unknown field `portz`"),
        "{err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");
}

#[test]
fn check_warns_but_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("warn.yaml");
    std::fs::write(
        &file,
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: w, namespace: db}\nspec:\n  selector: {identities: [spiffe://other.org/ns/db/sa/pg]}\n  action: ALLOW\n  rules:\n  - {}\n  - to: [{operation: {ports: [5432], methods: [GET]}}]\n  - expiresAt: \"2020-01-01T00:00:00Z\"\n",
    )
    .unwrap();
    let out = run(airlock()
        .args([
            "policy",
            "check",
            "--trust-domain",
            "td",
            "--tcp-ports",
            "5432",
        ])
        .arg(&file));
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    for expected in [
        "selects no workload of this mesh",
        "rule 1: is shadowed by the broader rule 0",
        "rule 1: has HTTP-only conditions but its ports [5432] are TCP",
        "rule 2: has expired",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn eval_prints_decision_reason_and_dry_run() {
    let base = |extra: &[&str]| {
        let mut command = airlock();
        command
            .args([
                "policy",
                "eval",
                "--policies",
                "examples/policies",
                "--at",
                "2026-12-10T00:00:00Z",
            ])
            .args(extra);
        command
    };
    let payments = "spiffe://demo.airlock/ns/pay/sa/payments";
    let out = ok(&mut base(&[
        "--target",
        payments,
        "--port",
        "8080",
        "--source",
        "spiffe://demo.airlock/ns/shop/sa/checkout",
        "--method",
        "POST",
        "--path",
        "/v1//charges",
        "--json",
    ]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"], "allow", "{json}");
    assert_eq!(json["policy"], "pay/payments-api");
    assert_eq!(json["rule"], 0);
    assert_eq!(json["dry_run"], serde_json::json!([]));

    // No --source: an unauthenticated peer; still exit 0 because a decision was made.
    let out = ok(&mut base(&[
        "--target",
        payments,
        "--port",
        "8080",
        "--method",
        "POST",
        "--path",
        "/v1/charges",
    ]));
    assert!(
        out.contains("decision: deny") && out.contains("no ALLOW policy matched"),
        "{out}"
    );

    let checkout = "spiffe://demo.airlock/ns/shop/sa/checkout";
    // The dry-run DENY shadows an allowed call: reported, never enforced.
    let out = ok(&mut base(&[
        "--target",
        payments,
        "--port",
        "8080",
        "--source",
        "spiffe://demo.airlock/ns/shop/sa/frontend",
        "--method",
        "GET",
        "--path",
        "/v1/status",
        "--json",
    ]));
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["dry_run"][0]["policy"], "pay/status-lockdown");
    assert_eq!(json["dry_run"][0]["decision"], "deny");

    let out = ok(&mut base(&[
        "--target", payments, "--port", "8080", "--source", checkout, "--path", "/x%00",
    ]));
    assert!(
        out.contains("decision: deny") && out.contains("refused before policy (400)"),
        "{out}"
    );

    let out = ok(&mut base(&[
        "--target",
        payments,
        "--port",
        "8080",
        "--default",
        "allow-all",
        "--source",
        checkout,
    ]));
    assert!(
        out.contains("decision: deny"),
        "TCP to an allow-list workload: {out}"
    );
}

#[test]
fn eval_usage_errors_exit_2() {
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["--protocol", "tcp", "--method", "GET"],
            &["--protocol tcp"],
        ),
        (&["--source", "checkout"], &["--source", "spiffe://"]),
        (&["--default", "maybe"], &["--default", "allow-mesh"]),
    ];
    for (extra, fragments) in cases {
        let err = fails_with(
            airlock()
                .args(["policy", "eval", "--policies", "examples/policies"])
                .args(["--target", "spiffe://demo.airlock/x", "--port", "80"])
                .args(extra),
            2,
        );
        for fragment in fragments {
            assert!(
                err.contains(fragment),
                "{extra:?}: missing {fragment:?} in {err}"
            );
        }
    }
}

#[test]
fn test_reports_failures_with_the_reason_they_got() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wrong.yaml"),
        "apiVersion: airlock.dev/v1alpha1\nkind: PolicyTest\nmetadata: {name: wrong}\nspec:\n  at: \"2026-12-10T00:00:00Z\"\n  cases:\n  - name: frontend charges\n    target: spiffe://demo.airlock/ns/pay/sa/payments\n    port: 8080\n    source: spiffe://demo.airlock/ns/shop/sa/frontend\n    method: POST\n    path: /v1/charges\n    expect: allow\n",
    )
    .unwrap();
    let out = run(airlock()
        .args(["policy", "test", "examples/policies"])
        .arg(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("FAIL wrong / frontend charges")
            && text.contains("expected allow, got deny (no ALLOW policy matched)"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("0 passed, 1 failed"), "{text}");
    assert!(Path::new("examples/policies").exists());
}
