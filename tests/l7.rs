//! L7 end to end: HTTP/1.1, HTTP/2 and gRPC through two real sidecars, authorized request
//! by request. Clients are curl, raw sockets (for shapes curl will not send) and Python
//! grpcio; the app is a small hyper server that reports what it received.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_config::{AccessLogConfig, FileSinkConfig, InboundPort, PortProtocol, SinkKind};
use airlock_testkit::http_app;
use airlock_testkit::*;

const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";
const INTRUDER: &str = "spiffe://example.org/ns/sandbox/sa/intruder";

/// Ports of the payments workload.
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;
const AUTO_HTTP_PORT: u16 = 7070;
const AUTO_BANNER_PORT: u16 = 7071;
/// An `auto` port with an HTTP app that policy allows at L4 only (no HTTP conditions).
const AUTO_L4_HTTP_PORT: u16 = 7072;
/// The same, with an app whose HTTP parser is as lenient as Python's.
const AUTO_L4_LENIENT_PORT: u16 = 7073;
const ONE_AT_A_TIME_PORT: u16 = 8081;

fn policies() -> String {
    let checkout = format!("  - from: [{{source: {{principals: [{CHECKOUT}]}}}}]\n");
    let allow = format!(
        "{checkout}    to:\n\
         \x20   - operation:\n\
         \x20       ports: [{HTTP_PORT}, {AUTO_HTTP_PORT}, {ONE_AT_A_TIME_PORT}]\n\
         \x20       methods: [GET, POST]\n\
         \x20       paths: [/v1/charges, /v1/charges/*, /public/*, /upgrade, /slow]\n\
         \x20   - operation: {{ports: [{GRPC_PORT}], methods: [POST], paths: [/demo.Payments/Charge]}}\n\
         \x20 # A rule with HTTP conditions never allows TCP: the opaque port has a rule of its own.\n\
         {checkout}    to: [{{operation: {{ports: [{AUTO_BANNER_PORT}, {AUTO_L4_HTTP_PORT}, {AUTO_L4_LENIENT_PORT}]}}}}]\n"
    );
    documents(&[
        policy("pay/payments-api", PAYMENTS, "ALLOW", Mode::Enforce, &allow),
        // Ports too: on a TCP port a DENY rule matches on its L4 part alone (fail closed).
        policy(
            "pay/no-admin-host",
            PAYMENTS,
            "DENY",
            Mode::Enforce,
            &format!(
                "  - to: [{{operation: {{ports: [{HTTP_PORT}], hosts: [admin.internal]}}}}]\n"
            ),
        ),
        policy(
            "pay/no-debug",
            PAYMENTS,
            "DENY",
            Mode::Enforce,
            &format!(
                "  - to: [{{operation: {{ports: [{HTTP_PORT}]}}}}]\n    \
                 when: [{{key: \"request.headers[x-debug]\", values: [\"1\"]}}]\n"
            ),
        ),
        policy(
            "pay/future-lockdown",
            PAYMENTS,
            "DENY",
            Mode::DryRun,
            &format!("  - to: [{{operation: {{ports: [{HTTP_PORT}], paths: [/public/*]}}}}]\n"),
        ),
    ])
}

/// A server-first TCP app: it greets before the client says anything, then echoes.
fn banner_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = stream;
                let _ = writer.write_all(b"220 banner\r\n");
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}

struct L7Mesh {
    ca: TestCa,
    _server: CaServer,
    _servers: Vec<PythonServer>,
    payments: Sidecar,
    _clients: Vec<Sidecar>,
    seen: http_app::Seen,
    /// checkout's upstream listener for each payments port.
    checkout: std::collections::BTreeMap<u16, SocketAddr>,
    /// The intruder's upstream listener to payments:8080.
    intruder: SocketAddr,
    access_log: PathBuf,
    policy_dir: PathBuf,
}

impl L7Mesh {
    /// `access_log` makes the payments sidecar's access-log settings from the path a
    /// file sink would write to.
    fn new(ip: &str, access_log: impl FnOnce(&Path) -> AccessLogConfig) -> Self {
        let ca = TestCa::init("example.org");
        let server = CaServer::start(&ca);
        let policy_dir = ca.scratch("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        std::fs::write(policy_dir.join("payments.yaml"), policies()).unwrap();
        let (app, seen) = http_app::spawn("payments");
        let (grpc, grpc_addr) = python_server("grpc_echo.py", &["serve"]);
        let (lenient, lenient_addr) = python_server("lenient_http.py", &["serve"]);
        let banner = banner_server();
        let access_log_path = ca.scratch("access.log");
        let identity = |name: &str, id: &str| ca.identity(&server.url, name, id, &["--uses", "5"]);
        let mut config = sidecar_config(identity("payments", PAYMENTS), ip);
        let port = |port, protocol, app| InboundPort {
            app: Some(app),
            ..InboundPort::new(port, protocol)
        };
        let mut limited = port(HTTP_PORT, PortProtocol::Http, app);
        limited.http.max_body_bytes = Some(1024);
        limited.http.header_read_timeout = Duration::from_secs(1);
        limited.http.request_timeout = Duration::from_secs(1);
        let mut one_at_a_time = port(ONE_AT_A_TIME_PORT, PortProtocol::Http, app);
        one_at_a_time.http.max_concurrent_requests = 1;
        config.inbound.ports = vec![
            limited,
            one_at_a_time,
            port(GRPC_PORT, PortProtocol::Http, grpc_addr),
            port(AUTO_HTTP_PORT, PortProtocol::Auto, app),
            port(AUTO_BANNER_PORT, PortProtocol::Auto, banner),
            port(AUTO_L4_HTTP_PORT, PortProtocol::Auto, app),
            port(AUTO_L4_LENIENT_PORT, PortProtocol::Auto, lenient_addr),
        ];
        config.policy.paths = vec![policy_dir.clone()];
        config.policy.reload_interval = Duration::from_millis(100);
        config.access_log = access_log(&access_log_path);
        let payments = Sidecar::start(&ca, "payments", &config);
        payments.wait_ready();

        let client = |name: &str, id: &str, ports: &[u16]| {
            let mut config = sidecar_config(identity(name, id), "127.0.0.1");
            config.outbound.upstreams = ports.iter().map(|&p| upstream("payments", p)).collect();
            config
                .registry
                .insert("payments".into(), service(PAYMENTS, &[payments.inbound]));
            Sidecar::start(&ca, name, &config)
        };
        let ports = [
            HTTP_PORT,
            ONE_AT_A_TIME_PORT,
            GRPC_PORT,
            AUTO_HTTP_PORT,
            AUTO_BANNER_PORT,
            AUTO_L4_HTTP_PORT,
            AUTO_L4_LENIENT_PORT,
        ];
        let checkout_sidecar = client("checkout", CHECKOUT, &ports);
        let checkout = ports
            .iter()
            .map(|&p| (p, checkout_sidecar.upstream("payments", p)))
            .collect();
        let intruder_sidecar = client("intruder", INTRUDER, &[HTTP_PORT]);
        let intruder = intruder_sidecar.upstream("payments", HTTP_PORT);
        checkout_sidecar.wait_ready();
        intruder_sidecar.wait_ready();
        Self {
            ca,
            _server: server,
            _servers: vec![grpc, lenient],
            payments,
            _clients: vec![checkout_sidecar, intruder_sidecar],
            seen,
            checkout,
            intruder,
            access_log: access_log_path,
            policy_dir,
        }
    }

    fn url(&self, port: u16, path: &str) -> String {
        format!("http://{}{path}", self.checkout[&port])
    }
}

/// Access log lines to a file at `path`, rotated and masked by the defaults.
fn to_file(path: &Path) -> AccessLogConfig {
    AccessLogConfig {
        sink: SinkKind::File,
        file: Some(FileSinkConfig::new(path)),
        ..AccessLogConfig::default()
    }
}

fn log_off() -> AccessLogConfig {
    AccessLogConfig {
        sink: SinkKind::Off,
        ..AccessLogConfig::default()
    }
}

/// curl's answer: status, the `airlock-deny-reason` header, and the body.
struct Answer {
    status: u16,
    deny_reason: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn curl(url: &str, extra: &[&str]) -> Answer {
    let output = run(std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D", "-", "-o", "-"])
        .args(extra)
        .arg(url));
    let text = stdout(&output);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response from {url}: {text} {}", stderr(&output)));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let deny_reason = head
        .lines()
        .find_map(|l| l.strip_prefix("airlock-deny-reason: "))
        .map(str::to_owned);
    Answer {
        status,
        deny_reason,
        body: body.to_owned(),
    }
}

/// Sends raw bytes and returns everything read until the server closes (or 10 s pass).
fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn requests_are_authorized_one_by_one_over_http1_and_http2() {
    let mesh = L7Mesh::new("127.0.0.21", to_file);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let allowed = curl(&mesh.url(HTTP_PORT, "/v1/charges?id=7"), &[version]);
        assert_eq!(allowed.status, 200, "{version}: {}", allowed.body);
        let seen = allowed.json();
        assert_eq!(seen["path"], "/v1/charges?id=7");
        assert_eq!(
            seen["version"],
            if version == "--http1.1" {
                "HTTP/1.1"
            } else {
                "HTTP/2.0"
            }
        );
        assert_eq!(seen["headers"]["x-airlock-peer-identity"], CHECKOUT);
        assert_eq!(
            seen["headers"]["x-forwarded-client-cert"],
            format!("By={PAYMENTS};URI={CHECKOUT}")
        );

        let denied = curl(&mesh.url(HTTP_PORT, "/v1/admin"), &[version]);
        assert_eq!(denied.status, 403, "{version}");
        assert_eq!(
            denied.deny_reason.as_deref(),
            Some("no ALLOW policy matched")
        );
        let wrong_method = curl(
            &mesh.url(HTTP_PORT, "/v1/charges"),
            &[version, "-X", "DELETE"],
        );
        assert_eq!(wrong_method.status, 403, "{version}");
    }

    // After a deny, the same connection still serves (curl reuses it for the next URL).
    let output = run(std::process::Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{num_connects}\n",
        &mesh.url(HTTP_PORT, "/v1/admin"),
        &mesh.url(HTTP_PORT, "/v1/charges"),
    ]));
    assert_eq!(stdout(&output), "403 1\n200 0\n");

    // The DENY on the host matches whatever its case and port.
    let host = curl(
        &mesh.url(HTTP_PORT, "/v1/charges"),
        &["-H", "Host: ADMIN.Internal:8080"],
    );
    assert_eq!(host.status, 403);
    assert_eq!(
        host.deny_reason.as_deref(),
        Some("DENY policy pay/no-admin-host rule 0")
    );

    // Another identity is refused, request by request.
    let intruder = curl(&format!("http://{}/v1/charges", mesh.intruder), &[]);
    assert_eq!(intruder.status, 403);

    // A caller cannot speak for someone else.
    let spoofed = curl(
        &mesh.url(HTTP_PORT, "/v1/charges"),
        &[
            "-H",
            &format!("x-airlock-peer-identity: {PAYMENTS}"),
            "-H",
            "x-forwarded-client-cert: By=x;URI=spiffe://example.org/ns/pay/sa/admin",
        ],
    );
    assert_eq!(spoofed.status, 200);
    assert_eq!(
        spoofed.json()["headers"]["x-airlock-peer-identity"],
        CHECKOUT
    );
    assert_eq!(
        spoofed.json()["headers"]["x-forwarded-client-cert"],
        format!("By={PAYMENTS};URI={CHECKOUT}")
    );

    let metrics = mesh.payments.metrics();
    for sample in [
        "airlock_http_requests_total{direction=\"inbound\",status_class=\"2xx\",decision=\"allow\"}",
        "airlock_http_requests_total{direction=\"inbound\",status_class=\"4xx\",decision=\"deny\"}",
        "airlock_http_request_duration_seconds_count{direction=\"inbound\"}",
        "airlock_authz_total{decision=\"deny\",policy=\"pay/no-admin-host\"}",
    ] {
        assert!(metric(&metrics, sample) >= 1.0, "{sample}\n{metrics}");
    }
}

#[test]
fn underscore_headers_and_method_spellings_cannot_bypass_identity_or_policy() {
    let mesh = L7Mesh::new("127.0.0.28", |_| log_off());
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let url = mesh.url(HTTP_PORT, "/v1/charges");
        // Spellings of the identity headers that CGI, WSGI and Rack read as the real ones.
        let forged = curl(
            &url,
            &[
                version,
                "-H",
                "x_airlock_peer_identity: spiffe://example.org/ns/pay/sa/admin",
                "-H",
                "x_forwarded_client_cert: By=x;URI=spiffe://example.org/ns/pay/sa/admin",
                "-H",
                "x_tenant: acme",
            ],
        );
        assert_eq!(forged.status, 200, "{version}: {}", forged.body);
        let headers = &forged.json()["headers"];
        assert_eq!(headers["x-airlock-peer-identity"], CHECKOUT, "{headers}");
        for dropped in [
            "x_airlock_peer_identity",
            "x_forwarded_client_cert",
            "x_tenant",
        ] {
            assert!(
                headers.get(dropped).is_none(),
                "{dropped} reached the app: {headers}"
            );
        }

        // A DENY on x-debug: the control is denied, the underscore spelling never gets
        // through as the header the app would read.
        let control = curl(&url, &[version, "-H", "x-debug: 1"]);
        assert_eq!(control.status, 403, "{version}");
        let underscored = curl(&url, &[version, "-H", "x_debug: 1"]);
        assert_eq!(underscored.status, 200, "{version}");
        assert!(underscored.json()["headers"].get("x_debug").is_none());

        // DELETE is not allowed; `delete` is not a way around that.
        let control = curl(&url, &[version, "-X", "DELETE"]);
        assert_eq!(control.status, 403, "{version}");
        let lower = curl(&url, &[version, "-X", "delete"]);
        assert_eq!(lower.status, 400, "{version}: {}", lower.body);
        // Nor is a method override, whatever its spelling.
        for header in [
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
        ] {
            let overridden = curl(
                &url,
                &[version, "-X", "POST", "-H", &format!("{header}: DELETE")],
            );
            assert_eq!(overridden.status, 400, "{version} {header}");
        }
        let same = curl(
            &url,
            &[version, "-X", "POST", "-H", "X-HTTP-Method-Override: POST"],
        );
        assert_eq!(
            same.status, 200,
            "{version}: an override naming the request's own method"
        );
    }

    // The HTTP/1 app pool is keyed by the app's address: rotating Host values reuse one
    // idle connection instead of opening one each (the app sees one peer, not twenty).
    let mut app_peers = std::collections::BTreeSet::new();
    for i in 0..20 {
        let answer = curl(
            &mesh.url(HTTP_PORT, "/v1/charges"),
            &["--http1.1", "-H", &format!("Host: tenant-{i}.example")],
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
        let seen = answer.json();
        assert_eq!(seen["headers"]["host"], format!("tenant-{i}.example"));
        app_peers.insert(seen["peer"].as_str().unwrap().to_owned());
    }
    assert!(
        app_peers.len() <= 2,
        "one idle connection per Host: {app_peers:?}"
    );
}

#[test]
fn path_tricks_never_reach_the_app_unnormalized() {
    let mesh = L7Mesh::new("127.0.0.22", |_| log_off());
    // (raw path sent with --path-as-is, status, the path the app must receive)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/public/../v1/admin", 403, None),
        ("/public/%2e%2e/v1/admin", 403, None),
        ("/public/%2E%2E/%2e%2e/v1/admin", 403, None),
        ("/public/..;x/v1/admin", 403, None),
        ("/public/..%3Bx/v1/admin", 403, None),
        ("/public/..%2Fv1/admin", 400, None),
        ("/public/..%5Cv1/admin", 400, None),
        ("/v1/charges%00", 400, None),
        ("//v1//charges", 200, Some("/v1/charges")),
        ("/v1/./charges/", 200, Some("/v1/charges/")),
        ("/public/a/../b", 200, Some("/public/b")),
        ("/v1/charges;jsessionid=1", 200, Some("/v1/charges")),
        ("/v1/%63harges", 200, Some("/v1/charges")),
        ("/v1/charges/%7Eme", 200, Some("/v1/charges/~me")),
    ];
    for (path, status, received) in cases {
        let before = mesh.seen.lock().unwrap().len();
        let answer = curl(&mesh.url(HTTP_PORT, path), &["--path-as-is"]);
        assert_eq!(answer.status, *status, "{path}: {}", answer.body);
        let seen = mesh.seen.lock().unwrap()[before..].to_vec();
        match received {
            Some(expected) => assert_eq!(seen, vec![expected.to_string()], "{path}"),
            None => assert!(seen.is_empty(), "{path} reached the app as {seen:?}"),
        }
    }
    // A fragment is never part of the path (curl would strip it, so send it raw).
    let answer = raw(
        mesh.checkout[&HTTP_PORT],
        b"GET /v1/admin#/../../v1/charges HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 403, "{answer}");
}

#[test]
fn limits_and_smuggling_shapes_get_their_status_and_spare_other_clients() {
    let mesh = L7Mesh::new("127.0.0.23", |_| log_off());
    let url = mesh.url(HTTP_PORT, "/v1/charges");
    let big_header = format!("x-big: {}", "a".repeat(20_000));
    assert_eq!(curl(&url, &["-H", &big_header]).status, 431);
    let many: Vec<String> = (0..120).map(|i| format!("x-h{i}: v")).collect();
    let many_args: Vec<&str> = many.iter().flat_map(|h| ["-H", h.as_str()]).collect();
    assert_eq!(curl(&url, &many_args).status, 431);
    let long = mesh.url(HTTP_PORT, &format!("/v1/charges/{}", "a".repeat(9000)));
    assert_eq!(curl(&long, &[]).status, 414);
    let body = "x".repeat(2048);
    assert_eq!(
        curl(&url, &["--data-binary", &body]).status,
        413,
        "Content-Length"
    );
    assert_eq!(
        curl(
            &url,
            &["--data-binary", &body, "-H", "Transfer-Encoding: chunked"]
        )
        .status,
        413,
        "chunked"
    );
    assert_eq!(curl(&url, &["--data-binary", "small"]).status, 200);

    let target = mesh.checkout[&HTTP_PORT];
    for (shape, request) in [
        (
            "differing Content-Length",
            "POST /v1/charges HTTP/1.1\r\nHost: p\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding not chunked",
            "POST /v1/charges HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
        ),
        (
            "bad method token",
            "G(T /v1/charges HTTP/1.1\r\nHost: p\r\n\r\n",
        ),
        (
            "no Host",
            "GET /v1/charges HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
        (
            "two Hosts",
            "GET /v1/charges HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        ),
        (
            "Host differs from the absolute-form authority",
            "GET http://public.svc/v1/charges HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
        ),
        (
            "userinfo in Host",
            "GET /v1/charges HTTP/1.1\r\nHost: x@admin.internal\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let answer = raw(target, request.as_bytes());
        assert_eq!(status_of(&answer), 400, "{shape}: {answer}");
    }
    // Content-Length and chunked together: chunked wins and the connection closes after
    // the response, so the request hidden in the body is never served.
    let before = mesh.seen.lock().unwrap().len();
    let answer = raw(
        target,
        b"POST /v1/charges HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: p\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(
        mesh.seen.lock().unwrap()[before..].to_vec(),
        vec!["/v1/charges".to_string()]
    );

    // Slowloris: a head that never completes is dropped at the header timeout, while
    // other clients are served meanwhile.
    let mut slow = TcpStream::connect(target).unwrap();
    slow.write_all(b"GET /v1/charges HTTP/1.1\r\nHost: p\r\nX-Slow: ")
        .unwrap();
    assert_eq!(curl(&url, &[]).status, 200);
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = slow.read_to_end(&mut rest);
    assert!(
        closed.is_ok() && rest.is_empty(),
        "the slow connection must be closed without an answer: {closed:?} {}",
        String::from_utf8_lossy(&rest)
    );
    // A body that stops arriving: 408.
    let mut stalled = TcpStream::connect(target).unwrap();
    stalled
        .write_all(
            b"POST /v1/charges HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\nonly a part",
        )
        .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = vec![0u8; 512];
    let n = stalled.read(&mut answer).unwrap_or(0);
    assert_eq!(status_of(&String::from_utf8_lossy(&answer[..n])), 408);

    // One request at a time on this port: the second one, concurrent, gets 503.
    let slow_url = mesh.url(ONE_AT_A_TIME_PORT, "/slow");
    let first = std::thread::spawn(move || curl(&slow_url, &[]).status);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        curl(&mesh.url(ONE_AT_A_TIME_PORT, "/v1/charges"), &[]).status,
        503
    );
    assert_eq!(first.join().unwrap(), 200);

    let metrics = mesh.payments.metrics();
    for limit in [
        "headers",
        "uri_bytes",
        "body_bytes",
        "header_read_timeout",
        "request_timeout",
        "concurrent_requests",
    ] {
        let sample = format!("airlock_http_limit_rejections_total{{limit=\"{limit}\"}}");
        assert!(metric(&metrics, &sample) >= 1.0, "{sample}\n{metrics}");
    }
}

#[test]
fn grpc_calls_are_authorized_per_method() {
    let mesh = L7Mesh::new("127.0.0.24", |_| log_off());
    let call = |method: &str| {
        let output = run(python("grpc_echo.py").args([
            "call",
            &mesh.checkout[&GRPC_PORT].to_string(),
            method,
        ]));
        stdout(&output).trim().to_owned()
    };
    assert_eq!(call("/demo.Payments/Charge"), "OK done:order-42");
    let denied = call("/demo.Payments/Refund");
    assert!(
        denied.starts_with("PERMISSION_DENIED no ALLOW policy matched"),
        "{denied}"
    );
}

#[test]
fn auto_ports_detect_http_and_let_server_first_protocols_through() {
    let mesh = L7Mesh::new("127.0.0.25", |_| log_off());
    assert_eq!(
        curl(&mesh.url(AUTO_HTTP_PORT, "/v1/charges"), &[]).status,
        200
    );
    assert_eq!(
        curl(&mesh.url(AUTO_HTTP_PORT, "/v1/admin"), &[]).status,
        403
    );
    assert_eq!(
        curl(
            &mesh.url(AUTO_HTTP_PORT, "/v1/charges"),
            &["--http2-prior-knowledge"]
        )
        .status,
        200
    );
    // The banner server speaks first; the client waits silently for it.
    let mut stream = connect(mesh.checkout[&AUTO_BANNER_PORT]);
    let mut banner = [0u8; 12];
    stream.read_exact(&mut banner).unwrap_or_else(|e| {
        panic!(
            "no banner ({e}); payments log:\n{}",
            mesh.payments.log_text()
        )
    });
    assert_eq!(&banner, b"220 banner\r\n");
    assert_eq!(
        round_trip(&mut stream, b"after the banner").as_deref(),
        Some(&b"after the banner"[..])
    );
    // A WebSocket-style upgrade on an HTTP port: authorized, then raw bytes both ways.
    let mut upgrade = connect(mesh.checkout[&HTTP_PORT]);
    upgrade
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: p\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        upgrade.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(
        round_trip(&mut upgrade, b"frames after the switch").as_deref(),
        Some(&b"frames after the switch"[..])
    );

    // Blank lines before the request line cannot steer HTTP past authorization as TCP.
    let answer = raw(
        mesh.checkout[&AUTO_HTTP_PORT],
        b"\r\n\r\nGET /v1/admin HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 403, "{answer}");
    // Only WebSocket may switch protocols: an h2c upgrade is served as a plain request.
    let answer = curl(
        &mesh.url(HTTP_PORT, "/v1/charges"),
        &[
            "-H",
            "Connection: Upgrade, HTTP2-Settings",
            "-H",
            "Upgrade: h2c",
            "-H",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.json()["headers"].get("upgrade").is_none(),
        "{}",
        answer.body
    );

    let metrics = mesh.payments.metrics();
    for result in ["http1", "http2", "timeout"] {
        let sample = format!("airlock_protocol_detections_total{{result=\"{result}\"}}");
        assert!(metric(&metrics, &sample) >= 1.0, "{sample}\n{metrics}");
    }
    // The dry-run DENY is counted, never enforced.
    assert_eq!(curl(&mesh.url(HTTP_PORT, "/public/x"), &[]).status, 200);
    let metrics = mesh.payments.metrics();
    assert_eq!(
        metric(
            &metrics,
            "airlock_dry_run_total{policy=\"pay/future-lockdown\",outcome=\"would_deny\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[test]
fn a_caller_cannot_escape_http_handling_on_an_auto_port_by_waiting() {
    let mesh = L7Mesh::new("127.0.0.29", |_| log_off());
    let forged = "x-airlock-peer-identity: spiffe://example.org/ns/pay/sa/admin\r\n";
    let request =
        format!("GET /v1/charges HTTP/1.1\r\nHost: p\r\n{forged}Connection: close\r\n\r\n");
    // Silent past the detection timeout (200 ms), then HTTP: still served as HTTP, so the
    // app gets the verified identity, not the caller's.
    let mut stream = connect(mesh.checkout[&AUTO_L4_HTTP_PORT]);
    std::thread::sleep(Duration::from_millis(700));
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let seen: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
    assert_eq!(
        seen["headers"]["x-airlock-peer-identity"], CHECKOUT,
        "{answer}"
    );

    // Nor by spelling the request line as only lenient servers read it (nginx: repeated
    // and trailing spaces; Python, the app here: tabs, a leading space): still HTTP to the
    // sidecar, which refuses what it does not serve. Control: the same app, asked plainly,
    // gets the verified identity.
    let plain = raw(
        mesh.checkout[&AUTO_L4_LENIENT_PORT],
        format!("GET /v1/charges HTTP/1.1\r\nHost: p\r\n{forged}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(plain.contains(CHECKOUT), "{plain}");
    for line in [
        "GET  /v1/charges  HTTP/1.1 ",
        "GET\t/v1/charges\tHTTP/1.1",
        " GET /v1/charges HTTP/1.1",
    ] {
        let answer = raw(
            mesh.checkout[&AUTO_L4_LENIENT_PORT],
            format!("{line}\r\nHost: p\r\n{forged}Connection: close\r\n\r\n").as_bytes(),
        );
        assert!(
            !answer.contains("ns/pay/sa/admin"),
            "{line:?}: the forged identity reached the app: {answer}"
        );
    }

    // A server-first app greets; HTTP after the greeting is refused, not relayed.
    let mut stream = connect(mesh.checkout[&AUTO_BANNER_PORT]);
    let mut banner = [0u8; 12];
    stream.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    assert_eq!(
        round_trip(&mut stream, request.as_bytes()),
        None,
        "the echo app never saw it"
    );
    // Control: the same server-first app keeps working for its own protocol.
    let mut stream = connect(mesh.checkout[&AUTO_BANNER_PORT]);
    stream.read_exact(&mut banner).unwrap();
    assert_eq!(
        round_trip(&mut stream, b"QUIT\r\n").as_deref(),
        Some(&b"QUIT\r\n"[..])
    );
    let metrics = mesh.payments.metrics();
    for result in ["late_http", "late_http_refused"] {
        let sample = format!("airlock_protocol_detections_total{{result=\"{result}\"}}");
        assert!(metric(&metrics, &sample) >= 1.0, "{sample}\n{metrics}");
    }
}

#[test]
fn access_log_masks_secrets_and_rotates_with_retention() {
    let mesh = L7Mesh::new("127.0.0.26", |path| {
        let mut file = FileSinkConfig::new(path);
        file.max_bytes = 4000;
        file.max_files = 2;
        file.max_age = Duration::from_secs(24 * 3600);
        AccessLogConfig {
            file: Some(file),
            headers: vec!["user-agent".into(), "x-note".into()],
            ..to_file(path)
        }
    });
    let secrets = [
        "s3cr3t-bearer-value",
        "cookie-value-42",
        "query-token-value",
        "jane.doe@example.com",
        "4111111111111111",
        "basic-pass",
    ];
    let calls: Vec<(String, Vec<String>)> = vec![
        (
            "/v1/charges?token=query-token-value&page=2".into(),
            vec![
                "Authorization: Bearer s3cr3t-bearer-value".into(),
                "Cookie: session=cookie-value-42".into(),
            ],
        ),
        ("/public/jane.doe@example.com".into(), vec![]),
        (
            "/v1/charges?card=4111111111111111".into(),
            vec!["x-note: pay with 4111111111111111".into()],
        ),
        (
            "/v1/admin".into(),
            vec!["Proxy-Authorization: basic-pass".into()],
        ),
    ];
    for (path, headers) in &calls {
        let args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h.as_str()]).collect();
        let answer = curl(&mesh.url(HTTP_PORT, path), &args);
        assert!(answer.status == 200 || answer.status == 403, "{path}");
    }
    let log_files = || -> Vec<PathBuf> {
        let dir = mesh.access_log.parent().unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("access.log"))
            })
            .collect();
        files.sort();
        files
    };
    let all_text = || -> String {
        log_files()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    };
    wait_for("four access log lines", || all_text().lines().count() >= 4);
    let text = all_text() + &mesh.payments.log_text();
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    let lines: Vec<serde_json::Value> = all_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = &lines[0];
    assert_eq!(first["path"], "/v1/charges?token=***&page=2");
    assert_eq!(first["source"], CHECKOUT);
    assert_eq!(first["destination"], PAYMENTS);
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["status"], 200);
    assert_eq!(first["kind"], "http");
    assert!(first["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(
        lines.iter().any(|l| l["path"] == "/public/[email]"
            && l["dry_run"][0]["policy"] == "pay/future-lockdown"
            && l["dry_run"][0]["would_allow"] == false),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l["decision"] == "deny"
        && l["status"] == 403
        && l["reason"] == "no ALLOW policy matched"));

    // Rotation by size keeps at most two old files; the live one is 0640.
    for i in 0..60 {
        let _ = curl(&mesh.url(HTTP_PORT, &format!("/v1/charges?n={i}")), &[]);
    }
    wait_for("rotation", || log_files().len() >= 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(log_files().len(), 3, "{:?}", log_files());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&mesh.access_log)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let _ = &mesh.ca;
}

#[test]
fn a_policy_change_cuts_requests_in_flight() {
    let mesh = L7Mesh::new("127.0.0.27", |_| log_off());
    let slow_url = mesh.url(HTTP_PORT, "/slow");
    let slow = std::thread::spawn(move || curl(&slow_url, &[]));
    wait_for("the slow request to reach the app", || {
        mesh.seen.lock().unwrap().iter().any(|p| p == "/slow")
    });
    // checkout loses its grant while the app is still working on the answer.
    std::fs::write(
        mesh.policy_dir.join("payments.yaml"),
        policies().replace(CHECKOUT, "spiffe://example.org/ns/shop/sa/someone-else"),
    )
    .unwrap();
    let answer = slow.join().unwrap();
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.deny_reason.as_deref(), Some("no longer allowed"));
    let metrics = mesh.payments.metrics();
    assert!(
        metric(&metrics, "airlock_authz_total{decision=\"terminate\"") >= 1.0,
        "{metrics}"
    );
    // New requests are decided under the new policy.
    assert_eq!(curl(&mesh.url(HTTP_PORT, "/v1/charges"), &[]).status, 403);
}
