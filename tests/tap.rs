//! `airlock tap` end to end: two real sidecars, `airlock tap --json` streaming from the
//! callee's admin API as a child process, and requests made with curl through the
//! caller. The callee's access log is off: the tap must still see, and mask, everything.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use airlock_config::{AccessLogConfig, InboundPort, PortProtocol, SinkKind};
use airlock_testkit::*;

const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";
const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 5432;

/// What a tap waits for a line before the test gives up on it.
const PATIENCE: Duration = Duration::from_secs(30);

fn policies() -> String {
    let checkout = format!("  - from: [{{source: {{principals: [{CHECKOUT}]}}}}]\n");
    documents(&[
        policy(
            "pay/payments-api",
            PAYMENTS,
            "ALLOW",
            Mode::Enforce,
            &format!(
                "{checkout}    to: [{{operation: {{ports: [{HTTP_PORT}]}}}}]\n\
                 {checkout}    to: [{{operation: {{ports: [{TCP_PORT}]}}}}]\n"
            ),
        ),
        // Ports too: on a TCP port a DENY rule matches on its L4 part alone (fail closed).
        policy(
            "pay/no-admin",
            PAYMENTS,
            "DENY",
            Mode::Enforce,
            &format!(
                "  - to: [{{operation: {{ports: [{HTTP_PORT}], paths: [/internal/*]}}}}]\n\
                 \x20 - to: [{{operation: {{ports: [{HTTP_PORT}], paths: [/admin/*]}}}}]\n"
            ),
        ),
        policy(
            "pay/lockdown",
            PAYMENTS,
            "DENY",
            Mode::DryRun,
            &format!("  - to: [{{operation: {{ports: [{HTTP_PORT}], paths: [/v1/*]}}}}]\n"),
        ),
    ])
}

struct Mesh {
    _ca: TestCa,
    _server: CaServer,
    payments: Sidecar,
    _checkout: Sidecar,
    /// checkout's upstream listener to payments:8080.
    upstream: std::net::SocketAddr,
    /// checkout's upstream listener to payments:5432 (an echo server).
    tcp_upstream: std::net::SocketAddr,
}

/// payments (an HTTP port, the access log off but asked to log `Authorization`) and
/// checkout, whose upstream leads there.
fn mesh() -> Mesh {
    let ca = TestCa::init("example.org");
    let server = CaServer::start(&ca);
    let policy_dir = ca.scratch("policies");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::write(policy_dir.join("payments.yaml"), policies()).unwrap();
    let (app, _seen) = http_app::spawn("payments");
    let identity = |name: &str, id: &str| ca.identity(&server.url, name, id, &["--uses", "5"]);
    let mut config = sidecar_config(identity("payments", PAYMENTS), "127.0.0.1");
    config.inbound.ports = vec![
        InboundPort {
            app: Some(app),
            ..InboundPort::new(HTTP_PORT, PortProtocol::Http)
        },
        InboundPort {
            app: Some(echo_server()),
            ..InboundPort::new(TCP_PORT, PortProtocol::Tcp)
        },
    ];
    config.policy.paths = vec![policy_dir];
    config.access_log = AccessLogConfig {
        sink: SinkKind::Off,
        headers: vec!["authorization".into(), "user-agent".into()],
        ..AccessLogConfig::default()
    };
    let payments = Sidecar::start(&ca, "payments", &config);
    payments.wait_ready();
    let checkout = caller(
        &ca,
        "checkout",
        identity("checkout", CHECKOUT),
        "payments",
        PAYMENTS,
        payments.inbound,
        &[HTTP_PORT, TCP_PORT],
    );
    let upstream = checkout.upstream("payments", HTTP_PORT);
    let tcp_upstream = checkout.upstream("payments", TCP_PORT);
    Mesh {
        tcp_upstream,
        _ca: ca,
        _server: server,
        payments,
        _checkout: checkout,
        upstream,
    }
}

impl Mesh {
    /// curl through checkout: (status, body).
    fn get(&self, path: &str, headers: &[&str]) -> (u16, String) {
        let mut command = std::process::Command::new("curl");
        command.args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"]);
        for header in headers {
            command.args(["-H", header]);
        }
        let output = run(command.arg(format!("http://{}{path}", self.upstream)));
        let text = stdout(&output);
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }
}

/// A running `airlock tap --json`, killed on drop, its stdout lines on a channel.
struct Tap {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Tap {
    /// Starts the tap and waits for its first line, which says the sidecar streams to it:
    /// from then on it misses nothing.
    fn start(admin: std::net::SocketAddr, filters: &[&str]) -> Self {
        let mut child = airlock()
            .args(["tap", "--json", "--admin", &admin.to_string()])
            .args(filters)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let tap = Self { child, lines };
        let first = tap.next().expect("the tap's first line");
        assert_eq!(first["event"], "tapping", "{first}");
        tap
    }

    fn next(&self) -> Option<serde_json::Value> {
        let line = self.lines.recv_timeout(PATIENCE).ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
    }

    /// Every line up to and including the first record whose path starts with `path`;
    /// panics when none comes.
    fn until(&self, path: &str) -> Vec<serde_json::Value> {
        self.until_line(path, |line| {
            line["path"].as_str().is_some_and(|p| p.starts_with(path))
        })
    }

    /// Every line up to and including the first for which `done` holds.
    fn until_line(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        loop {
            let Some(line) = self.next() else {
                panic!("no tap line for {what} within {PATIENCE:?}; saw {seen:#?}");
            };
            let done = done(&line);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tap_shows_decisions_masked_with_the_access_log_off_and_filters_them() {
    let mesh = mesh();
    let everything = Tap::start(mesh.payments.admin, &[]);
    let denials = Tap::start(mesh.payments.admin, &["--decision", "deny"]);

    let (status, body) = mesh.get(
        "/v1/items?token=supersecret-query-2&page=3",
        &["Authorization: Bearer supersecret-header-1"],
    );
    assert_eq!(status, 200, "{body}");
    // Control: the secrets really travelled, so their absence below is masking.
    let app: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        app["headers"]["authorization"],
        "Bearer supersecret-header-1"
    );
    assert_eq!(app["path"], "/v1/items?token=supersecret-query-2&page=3");

    let lines = everything.until("/v1/items");
    let allowed = lines.last().unwrap();
    assert_eq!(allowed["event"], "end");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["source"], CHECKOUT);
    assert_eq!(allowed["port"], HTTP_PORT);
    assert_eq!(allowed["method"], "GET");
    assert_eq!(allowed["status"], 200);
    assert!(allowed["duration_ms"].as_f64().is_some(), "{allowed}");
    assert_eq!(allowed["policy"], "pay/payments-api");
    assert_eq!(allowed["rule"], 0);
    assert_eq!(allowed["path"], "/v1/items?token=***&page=3");
    assert!(
        allowed["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["authorization", "***"])),
        "{allowed}"
    );
    assert_eq!(allowed["dry_run"][0]["policy"], "pay/lockdown");
    assert_eq!(allowed["dry_run"][0]["would_allow"], false);
    let text = format!("{lines:?}");
    assert!(!text.contains("supersecret"), "a secret in the tap: {text}");

    let (status, _) = mesh.get("/admin/users", &[]);
    assert_eq!(status, 403);
    let denied = everything.until("/admin/users").pop().unwrap();
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["policy"], "pay/no-admin");
    assert_eq!(denied["rule"], 1);
    assert_eq!(denied["reason"], "DENY policy pay/no-admin rule 1");
    assert_eq!(denied["source"], CHECKOUT);

    // The allowed request was published before this one was made: had the filter let it
    // through, the deny tap would show it before this line.
    let (status, _) = mesh.get("/admin/last", &[]);
    assert_eq!(status, 403);
    let filtered = denials.until("/admin/last");
    let records: Vec<_> = filtered.iter().filter(|l| l["event"] == "end").collect();
    assert!(
        records.iter().all(|l| l["decision"] == "deny"),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|l| l["path"] == "/admin/users"),
        "control: the deny tap saw the first denial too: {records:#?}"
    );

    // The access log really is off, and the sidecar's own log holds no secret either.
    let log = mesh.payments.log_text();
    assert!(
        !log.contains("\"kind\":\"http\""),
        "an access log line: {log}"
    );
    assert!(
        !log.contains("supersecret"),
        "a secret in the sidecar's log"
    );
}

#[test]
fn refusals_are_one_line_with_their_exit_status() {
    let mesh = mesh();
    let (status, body) = mesh.payments.admin("GET", "/tap?decision=maybe");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`decision`"), "{body}");
    let (status, body) = mesh.payments.admin("GET", "/tap?colour=red");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`colour`"), "{body}");

    let admin = mesh.payments.admin.to_string();
    let error = fails_with(
        airlock().args(["tap", "--admin", &admin, "--peer", "checkout"]),
        2,
    );
    assert!(error.contains("--peer"), "{error}");

    let closed = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let error = fails_with(airlock().args(["tap", "--admin", &closed]), 1);
    assert_eq!(error.trim().lines().count(), 1, "{error}");
    assert!(error.contains(&format!("--admin {closed}")), "{error}");

    let help = ok(airlock().args(["tap", "--help"]));
    assert!(
        help.contains("airlock tap --admin 127.0.0.1:15000"),
        "{help}"
    );
}

#[test]
fn a_tcp_tunnel_shows_when_it_opens_and_when_it_ends() {
    let mesh = mesh();
    let port = TCP_PORT.to_string();
    let tap = Tap::start(mesh.payments.admin, &["--port", &port]);
    let mut stream = connect(mesh.tcp_upstream);
    assert_eq!(
        round_trip(&mut stream, b"ping").as_deref(),
        Some(&b"ping"[..])
    );
    let opened = tap.until_line("the tunnel's open", |l| l["event"] == "open");
    let open = opened.last().unwrap();
    assert_eq!(open["kind"], "tcp");
    assert_eq!(open["decision"], "allow");
    assert_eq!(open["source"], CHECKOUT);
    assert_eq!(open["policy"], "pay/payments-api");
    assert_eq!(open["rule"], 1);
    drop(stream);
    let ended = tap.until_line("the tunnel's end", |l| l["event"] == "end");
    let end = ended.last().unwrap();
    assert_eq!(end["port"], TCP_PORT);
    assert_eq!(end["bytes_in"], 4, "{end}");
    // The HTTP port's requests are not this tap's: the filter holds.
    assert!(
        opened
            .iter()
            .chain(&ended)
            .all(|l| l["port"].is_null() || l["port"] == TCP_PORT),
        "{opened:#?} {ended:#?}"
    );
}
