//! Asking the live sidecar: `airlock policy eval --admin` and `airlock proxy status`
//! against real sidecars, checked against what the mesh actually does with a curl
//! request (allowed and denied alike), before and after a policy reload.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airlock_config::{InboundPort, PortProtocol};
use airlock_testkit::http_app;
use airlock_testkit::*;
use serde_json::Value;

const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";
const HTTP_PORT: u16 = 8080;

/// ALLOW checkout on `allowed/*`; DENY `/secret` to everyone, named so the test can see
/// which policy decided.
fn policies(allowed: &str) -> String {
    documents(&[
        policy(
            "pay/payments-api",
            PAYMENTS,
            "ALLOW",
            Mode::Enforce,
            &format!(
                "  - from: [{{source: {{principals: [{CHECKOUT}]}}}}]\n    \
                 to: [{{operation: {{ports: [{HTTP_PORT}], paths: [/{allowed}/*, /secret]}}}}]\n"
            ),
        ),
        policy(
            "pay/no-secret",
            PAYMENTS,
            "DENY",
            Mode::Enforce,
            &format!("  - to: [{{operation: {{ports: [{HTTP_PORT}], paths: [/secret]}}}}]\n"),
        ),
    ])
}

struct Mesh {
    _ca: TestCa,
    _server: CaServer,
    payments: Sidecar,
    _checkout: Sidecar,
    /// checkout's upstream listener to payments:8080.
    upstream: SocketAddr,
    policy_file: PathBuf,
}

impl Mesh {
    fn new() -> Self {
        let ca = TestCa::init("example.org");
        let server = CaServer::start(&ca);
        let policy_dir = ca.scratch("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        let policy_file = policy_dir.join("payments.yaml");
        std::fs::write(&policy_file, policies("v1")).unwrap();
        let (app, _seen) = http_app::spawn("payments");
        let identity = |name: &str, id: &str| ca.identity(&server.url, name, id, &["--uses", "5"]);
        let mut config = sidecar_config(identity("payments", PAYMENTS), "127.0.0.1");
        config.inbound.ports = vec![InboundPort {
            app: Some(app),
            ..InboundPort::new(HTTP_PORT, PortProtocol::Http)
        }];
        config.policy.paths = vec![policy_dir];
        config.policy.reload_interval = Duration::from_millis(100);
        let payments = Sidecar::start(&ca, "payments", &config);
        payments.wait_ready();
        let checkout = caller(
            &ca,
            "checkout",
            identity("checkout", CHECKOUT),
            "payments",
            PAYMENTS,
            payments.inbound,
            &[HTTP_PORT],
        );
        let upstream = checkout.upstream("payments", HTTP_PORT);
        Self {
            _ca: ca,
            _server: server,
            payments,
            _checkout: checkout,
            upstream,
            policy_file,
        }
    }

    /// The status a real request through checkout's sidecar gets.
    fn through_mesh(&self, path: &str) -> u16 {
        http("GET", &format!("http://{}{path}", self.upstream)).0
    }

    /// `airlock policy eval --admin` for checkout's GET `path`, as JSON.
    fn live_eval(&self, path: &str) -> Value {
        let admin = self.payments.admin.to_string();
        let out = ok(airlock().args([
            "policy", "eval", "--admin", &admin, "--port", "8080", "--source", CHECKOUT,
            "--method", "GET", "--path", path, "--json",
        ]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// `airlock proxy status --admin --json`.
    fn status(&self) -> Value {
        let admin = self.payments.admin.to_string();
        let out = ok(airlock().args(["proxy", "status", "--admin", &admin, "--json"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

/// What the mesh did maps onto an eval decision: 200 is allow, 403 is deny.
fn as_decision(status: u16) -> &'static str {
    match status {
        200 => "allow",
        403 => "deny",
        other => panic!("the mesh answered {other}, neither allowed nor denied"),
    }
}

#[test]
fn live_eval_agrees_with_the_mesh_and_follows_reloads() {
    let mesh = Mesh::new();
    // (path, decision the mesh must make, the deciding policy)
    let before = [
        ("/v1/charges", "allow", Some("pay/payments-api")),
        ("/secret", "deny", Some("pay/no-secret")),
        ("/v2/charges", "deny", None),
    ];
    let mut version = String::new();
    for (path, expected, policy) in before {
        let actual = as_decision(mesh.through_mesh(path));
        assert_eq!(actual, expected, "the mesh on {path}");
        let eval = mesh.live_eval(path);
        assert_eq!(eval["decision"], expected, "live eval on {path}: {eval}");
        assert_eq!(eval["policy"].as_str(), policy, "{path}: {eval}");
        assert_eq!(eval["target"], PAYMENTS, "{eval}");
        version = eval["policy_version"].as_str().unwrap().to_owned();
        assert_eq!(version.len(), 64, "a SHA-256: {eval}");
    }

    // No policy decided /v2: the configured default did, and the answer says which.
    assert_eq!(mesh.live_eval("/v2/charges")["default"], "deny");
    // A port the sidecar does not serve is refused before policy, as the mesh does.
    let admin = mesh.payments.admin.to_string();
    let unserved: Value = serde_json::from_str(&ok(airlock().args([
        "policy",
        "eval",
        "--admin",
        &admin,
        "--port",
        "9999",
        "--source",
        CHECKOUT,
        "--path",
        "/v1/charges",
        "--json",
    ])))
    .unwrap();
    assert_eq!(unserved["decision"], "deny", "{unserved}");
    assert!(
        unserved["reason"]
            .as_str()
            .unwrap()
            .contains("port 9999 is not served here"),
        "{unserved}"
    );

    // The text form is the file-based one plus the version.
    let text = ok(airlock().args([
        "policy", "eval", "--admin", &admin, "--port", "8080", "--source", CHECKOUT, "--path",
        "/secret",
    ]));
    assert!(text.contains("decision: deny"), "{text}");
    assert!(
        text.contains("reason:   DENY policy pay/no-secret rule 0"),
        "{text}"
    );
    assert!(text.contains(&format!("version:  {version}")), "{text}");

    // Edit the file: v2 is allowed now, v1 no longer. Live eval follows the reload, and
    // still agrees with the mesh.
    std::fs::write(&mesh.policy_file, policies("v2")).unwrap();
    wait_for("the edited policy to be live", || {
        mesh.live_eval("/v2/charges")["decision"] == "allow"
    });
    let eval = mesh.live_eval("/v1/charges");
    assert_ne!(eval["policy_version"], version.as_str(), "{eval}");
    for (path, expected) in [("/v1/charges", "deny"), ("/v2/charges", "allow")] {
        assert_eq!(as_decision(mesh.through_mesh(path)), expected, "{path}");
        assert_eq!(mesh.live_eval(path)["decision"], expected, "{path}");
    }

    // A broken edit is refused: the version stays, and status says why.
    let live = mesh.status()["policy"]["version"].clone();
    assert_eq!(live, eval["policy_version"]);
    std::fs::write(
        &mesh.policy_file,
        "apiVersion: airlock.dev/v1alpha1\nkind: Nope\n",
    )
    .unwrap();
    wait_for("status to report the refused reload", || {
        !mesh.status()["policy"]["last_error"].is_null()
    });
    let status = mesh.status();
    assert_eq!(status["policy"]["version"], live, "the old set stays live");
    let message = status["policy"]["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("payments.yaml"), "{message}");
    assert_eq!(mesh.live_eval("/v2/charges")["policy_version"], live);
}

#[test]
fn status_shows_the_live_sidecar() {
    let mesh = Mesh::new();
    let status = mesh.status();
    assert!(status["denials"].as_array().unwrap().is_empty(), "{status}");
    assert_eq!(
        as_decision(mesh.through_mesh("/secret?token=hunter2")),
        "deny"
    );
    assert_eq!(as_decision(mesh.through_mesh("/v1/charges")), "allow");

    let status = mesh.status();
    assert_eq!(status["identity"]["spiffe_id"], PAYMENTS, "{status}");
    assert_eq!(status["identity"]["valid"], true, "{status}");
    let listeners = &status["listeners"];
    assert_eq!(listeners["inbound"], mesh.payments.inbound.to_string());
    assert_eq!(listeners["admin"], mesh.payments.admin.to_string());
    assert_eq!(listeners["health"], mesh.payments.health.to_string());
    assert_eq!(status["policy"]["policies"], 2, "{status}");
    assert!(status["policy"]["last_error"].is_null(), "{status}");
    assert!(!status["bundle_roots"].as_array().unwrap().is_empty());
    let denials = status["denials"].as_array().unwrap();
    assert_eq!(denials.len(), 1, "only the denied request: {status}");
    let denial = &denials[0];
    assert_eq!(denial["peer"], CHECKOUT);
    assert_eq!(denial["port"], HTTP_PORT);
    assert_eq!(denial["method"], "GET");
    assert_eq!(denial["path"], "/secret", "the query never shows");
    assert_eq!(denial["policy"], "pay/no-secret");
    assert!(!status.to_string().contains("hunter2"), "{status}");
    let version = status["policy"]["version"].as_str().unwrap();
    assert_eq!(mesh.live_eval("/secret")["policy_version"], version);

    // The screen: identity, version, listeners, the denial.
    let admin = mesh.payments.admin.to_string();
    let screen = ok(airlock().args(["proxy", "status", "--admin", &admin]));
    for expected in [
        format!("identity:    {PAYMENTS}"),
        format!("policy:      version {version} (2 policies, default deny)"),
        format!("inbound    {}", mesh.payments.inbound),
        format!("admin      {admin}"),
        format!(
            "{CHECKOUT} (127.0.0.1) -> port 8080 GET /secret: DENY policy pay/no-secret rule 0"
        ),
    ] {
        assert!(
            screen.contains(&expected),
            "{expected:?} missing:\n{screen}"
        );
    }

    // The sidecar names a bad field of a hand-written body.
    let output = run(std::process::Command::new("curl").args([
        "-sS",
        "-w",
        "\n%{http_code}",
        "-d",
        r#"{"port": 70000}"#,
        &format!("http://{admin}/policy/eval"),
    ]));
    let text = stdout(&output);
    assert!(text.ends_with("\n400"), "{text}");
    assert!(text.contains("field `port`"), "{text}");
}

#[test]
fn bad_input_exits_2_naming_the_flag() {
    let cases: [&[&str]; 4] = [
        &["proxy", "status", "--admin", "localhost"],
        &["proxy", "status"],
        &["policy", "eval", "--admin", "127.0.0.1:1", "--port", "0"],
        &[
            "policy",
            "eval",
            "--admin",
            "127.0.0.1:1",
            "--port",
            "80",
            "--policies",
            "p/",
        ],
    ];
    let named = ["--admin", "--admin", "--port", "--policies"];
    for (args, flag) in cases.iter().zip(named) {
        let stderr = fails_with(airlock().args(*args), 2);
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    // Control: well-formed flags get past parsing, to the (absent) sidecar: exit 1.
    let stderr = fails_with(
        airlock().args(["proxy", "status", "--admin", "127.0.0.1:1"]),
        1,
    );
    assert!(stderr.contains("cannot reach"), "{stderr}");
}
