//! Caller-side HTTP routing end to end: one caller sidecar in front of three callee
//! sidecars of one service, on loopback. The clients are Python's http.client (one
//! keep-alive HTTP/1.1 connection) and grpcio (one HTTP/2 channel); the apps are small
//! Python servers that answer with their name, a status, late, or never.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use airlock_config::routes::{
    FailureAccrual, PathMatch, PathMatchKind, RetryBudget, RetryConstraint, RetryRate, RouteMatch,
    RouteRetry, RouteRule, RouteTimeouts, ServicePort, ServiceProtocol,
};
use airlock_config::{InboundPort, PortProtocol};
use airlock_testkit::*;
use serde_json::Value;

const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";

/// Callee ports: plain answers, gRPC, one endpoint answering 503, one endpoint 20 ms
/// late, and an app that never answers.
const OK_PORT: u16 = 8080;
const FLAKY_PORT: u16 = 8081;
const STUCK_PORT: u16 = 8082;
const SLOW_PORT: u16 = 8083;
const GRPC_PORT: u16 = 9090;
/// The testkit's echo app, which reports the version and headers it received.
const ECHO_PORT: u16 = 8084;

const NAMES: [&str; 3] = ["payments-a", "payments-b", "payments-c"];

/// One mesh at a time: the balancer acts on the latencies it sees, and four meshes of
/// Python apps and sidecars on two cores would skew each other's.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Mesh {
    ca: TestCa,
    server: CaServer,
    callees: Vec<Sidecar>,
    callee_configs: Vec<airlock_config::Config>,
    _apps: Vec<PythonServer>,
    caller: Sidecar,
    /// Last, so it is released after everything above is stopped.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// Starts the apps of callee `name`; the third callee is the odd one out on the flaky
/// and slow ports.
fn callee_apps(name: &str, odd: bool) -> (Vec<PythonServer>, Vec<InboundPort>) {
    let flaky: &[&str] = if odd { &["status", "503"] } else { &["ok"] };
    let slow: &[&str] = if odd { &["delay", "20"] } else { &["ok"] };
    let mut apps = Vec::new();
    let mut ports = Vec::new();
    for (port, script, args) in [
        (OK_PORT, "route_app.py", &["ok"][..]),
        (FLAKY_PORT, "route_app.py", flaky),
        (STUCK_PORT, "route_app.py", &["hang"][..]),
        (SLOW_PORT, "route_app.py", slow),
        (GRPC_PORT, "grpc_echo.py", &[][..]),
    ] {
        let args: Vec<&str> = match script {
            "grpc_echo.py" if odd => vec!["serve", name, "down"],
            "grpc_echo.py" => vec!["serve", name],
            _ => std::iter::once(name).chain(args.iter().copied()).collect(),
        };
        let (app, addr) = python_server(script, &args);
        apps.push(app);
        ports.push(InboundPort {
            app: Some(addr),
            ..InboundPort::new(port, PortProtocol::Http)
        });
    }
    let (echo, _) = airlock_testkit::http_app::spawn(name);
    ports.push(InboundPort {
        app: Some(echo),
        ..InboundPort::new(ECHO_PORT, PortProtocol::Http)
    });
    (apps, ports)
}

fn http_port(port: u16) -> ServicePort {
    ServicePort::new(port, ServiceProtocol::Http)
}

fn retry_on_503() -> Option<RouteRetry> {
    Some(RouteRetry {
        codes: vec![503],
        attempts: 1,
        backoff: Duration::ZERO,
    })
}

/// The caller's registry: one service per behaviour, all on the same three endpoints.
fn registry(endpoints: &[SocketAddr]) -> BTreeMap<String, airlock_config::Service> {
    let never_eject = FailureAccrual {
        consecutive_failures: 1_000_000,
        ..FailureAccrual::default()
    };
    let grpc = ServicePort {
        rules: vec![RouteRule {
            matches: vec![RouteMatch {
                path: PathMatch {
                    kind: PathMatchKind::PathPrefix,
                    value: "/demo.Slow".into(),
                },
            }],
            timeouts: RouteTimeouts {
                request: Some(Duration::from_millis(500)),
                backend_request: None,
            },
            retry: None,
        }],
        ..http_port(GRPC_PORT)
    };
    let flaky = ServicePort {
        retry: retry_on_503(),
        failure_accrual: never_eject,
        ..http_port(FLAKY_PORT)
    };
    // No share of requests, a floor of one retry a second: ten retries in the 10 s
    // window, spent within the first few dozen requests.
    let tight = ServicePort {
        retry_constraint: RetryConstraint {
            budget: RetryBudget {
                percent: 0,
                interval: Duration::from_secs(10),
            },
            min_retry_rate: RetryRate {
                count: 1,
                interval: Duration::from_secs(1),
            },
        },
        ..flaky.clone()
    };
    let stuck = ServicePort {
        timeouts: RouteTimeouts {
            request: Some(Duration::from_millis(500)),
            backend_request: None,
        },
        ..http_port(STUCK_PORT)
    };
    let entry = |ports: Vec<ServicePort>| airlock_config::Service {
        ports,
        ..service(PAYMENTS, endpoints)
    };
    BTreeMap::from([
        ("payments".to_owned(), entry(vec![http_port(OK_PORT), grpc])),
        ("flaky".to_owned(), entry(vec![flaky])),
        ("tight".to_owned(), entry(vec![tight])),
        ("stuck".to_owned(), entry(vec![stuck])),
        ("slow".to_owned(), entry(vec![http_port(SLOW_PORT)])),
        ("echo".to_owned(), entry(vec![http_port(ECHO_PORT)])),
    ])
}

impl Mesh {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// [`Mesh::start`], with `caller` changing the caller's configuration.
    fn start_with(caller: impl FnOnce(&mut airlock_config::Config)) -> Self {
        // A test that failed while holding the turn poisons it; the next one still runs.
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ca = TestCa::init("example.org");
        let server = CaServer::start(&ca);
        let policy_dir = ca.scratch("policies");
        std::fs::create_dir(&policy_dir).unwrap();
        let allow = format!("  - from: [{{source: {{principals: [{CHECKOUT}]}}}}]\n");
        let no_admin =
            format!("  - to: [{{operation: {{ports: [{ECHO_PORT}], paths: [/admin]}}}}]\n");
        std::fs::write(
            policy_dir.join("payments.yaml"),
            documents(&[
                policy("pay/checkout", PAYMENTS, "ALLOW", Mode::Enforce, &allow),
                policy("pay/no-admin", PAYMENTS, "DENY", Mode::Enforce, &no_admin),
            ]),
        )
        .unwrap();
        let mut apps = Vec::new();
        let mut callees = Vec::new();
        let mut callee_configs = Vec::new();
        for (index, name) in NAMES.iter().enumerate() {
            let (mut started, ports) = callee_apps(name, index == 2);
            apps.append(&mut started);
            let identity = ca.identity(&server.url, name, PAYMENTS, &["--uses", "5"]);
            let mut config = sidecar_config(identity, "127.0.0.1");
            config.inbound.ports = ports;
            config.policy.paths = vec![policy_dir.clone()];
            let sidecar = Sidecar::start(&ca, name, &config);
            sidecar.wait_ready();
            config.inbound.listen = sidecar.inbound;
            callees.push(sidecar);
            callee_configs.push(config);
        }
        let endpoints: Vec<SocketAddr> = callees.iter().map(|c| c.inbound).collect();
        let identity = ca.identity(&server.url, "checkout", CHECKOUT, &["--uses", "5"]);
        let mut config = sidecar_config(identity, "127.0.0.1");
        config.registry = registry(&endpoints);
        config.outbound.upstreams = [
            ("payments", OK_PORT),
            ("payments", GRPC_PORT),
            ("flaky", FLAKY_PORT),
            ("tight", FLAKY_PORT),
            ("stuck", STUCK_PORT),
            ("slow", SLOW_PORT),
            ("echo", ECHO_PORT),
        ]
        .into_iter()
        .map(|(service, port)| upstream(service, port))
        .collect();
        caller(&mut config);
        let caller = Sidecar::start(&ca, "checkout", &config);
        caller.wait_ready();
        Mesh {
            ca,
            server,
            callees,
            callee_configs,
            _apps: apps,
            caller,
            _turn: turn,
        }
    }

    /// `count` HTTP/1.1 requests on one keep-alive connection through the caller.
    fn http1(&self, service: &str, port: u16, method: &str, count: usize) -> Value {
        let listener = self.caller.upstream(service, port);
        client(&[
            "http1",
            &listener.to_string(),
            "/orders",
            &count.to_string(),
            method,
        ])
    }

    fn metrics(&self) -> String {
        http("GET", &format!("http://{}/metrics", self.caller.health)).1
    }
}

/// `curl` through the caller's upstream to `echo`: (status, body).
fn curl_echo(mesh: &Mesh, path: &str, args: &[&str]) -> (u16, String) {
    let url = format!("http://{}{path}", mesh.caller.upstream("echo", ECHO_PORT));
    let output = ok(std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "20"])
        .args(args)
        .arg(url));
    let (body, status) = output.trim_end().rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

fn client(args: &[&str]) -> Value {
    let output = ok(python("route_client.py").args(args));
    serde_json::from_str(output.trim()).unwrap_or_else(|e| panic!("{e}: {output}"))
}

fn count(seen: &Value, key: &str) -> u64 {
    seen[key].as_u64().unwrap_or(0)
}

/// Each endpoint's share of `answers`, which must hold only endpoint names.
fn shares(seen: &Value, total: u64) -> Vec<f64> {
    let answers = &seen["answers"];
    assert_eq!(
        NAMES.iter().map(|n| count(answers, n)).sum::<u64>(),
        total,
        "every request answered by an endpoint: {seen}"
    );
    NAMES
        .iter()
        .map(|n| count(answers, n) as f64 / total as f64)
        .collect()
}

#[test]
fn one_connection_is_spread_over_every_endpoint_and_failures_are_routed_around() {
    let mesh = Mesh::start();

    // One keep-alive HTTP/1.1 connection: every request is balanced on its own.
    let seen = mesh.http1("payments", OK_PORT, "GET", 3000);
    for share in shares(&seen, 3000) {
        assert!((0.25..=0.42).contains(&share), "HTTP/1.1 spread: {seen}");
    }
    // One gRPC channel (one HTTP/2 connection) likewise.
    let listener = mesh.caller.upstream("payments", GRPC_PORT).to_string();
    let seen = client(&["grpc", &listener, "/demo.Payments/Charge", "3000"]);
    assert_eq!(count(&seen["codes"], "OK"), 3000, "{seen}");
    for share in shares(&seen, 3000) {
        assert!((0.25..=0.42).contains(&share), "gRPC spread: {seen}");
    }

    // The endpoint 20 ms slower than the others gets far fewer requests.
    let seen = mesh.http1("slow", SLOW_PORT, "GET", 600);
    let spread = shares(&seen, 600);
    assert!(
        spread[2] * 2.0 < spread[0] && spread[2] * 2.0 < spread[1],
        "the slow endpoint gets less than half of each other's share: {seen}"
    );

    // One endpoint answers 503. A POST is never retried, so the app sees the 503s: the
    // control case, which also shows the endpoint takes its share ...
    let seen = mesh.http1("flaky", FLAKY_PORT, "POST", 300);
    assert!(
        count(&seen["statuses"], "503") > 30,
        "unretried POSTs: {seen}"
    );
    // ... while GETs are retried elsewhere as long as the budget holds ...
    let seen = mesh.http1("flaky", FLAKY_PORT, "GET", 300);
    assert_eq!(count(&seen["statuses"], "200"), 300, "retried GETs: {seen}");
    // The caller's access log names both endpoints a retried request went to.
    let log = mesh.caller.log_text();
    let retried: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["direction"] == "outbound" && line["attempts"] == 2)
        .collect();
    assert!(
        !retried.is_empty(),
        "no retried request in the caller's log:\n{log}"
    );
    let endpoints = retried[0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{}", retried[0]);
    assert_ne!(
        endpoints[0], endpoints[1],
        "a retry goes elsewhere: {}",
        retried[0]
    );
    assert_eq!(retried[0]["status"], 200, "{}", retried[0]);
    // ... and once a budget is spent, GETs see them too.
    let seen = mesh.http1("tight", FLAKY_PORT, "GET", 300);
    assert!(count(&seen["statuses"], "503") > 30, "spent budget: {seen}");
    let metrics = mesh.metrics();
    assert!(
        metrics.contains("airlock_route_retry_budget_exhausted_total{service=\"tight\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airlock_route_retries_total{service=\"flaky\"}"),
        "{metrics}"
    );
}

#[test]
fn an_app_that_never_answers_meets_the_request_timeout() {
    let mesh = Mesh::start();
    let seen = mesh.http1("stuck", STUCK_PORT, "GET", 2);
    assert_eq!(count(&seen["statuses"], "504"), 2, "{seen}");
    // gRPC: DEADLINE_EXCEEDED from the route's rule, while the port's other methods
    // (the control case) are answered.
    let listener = mesh.caller.upstream("payments", GRPC_PORT).to_string();
    let seen = client(&["grpc", &listener, "/demo.Slow/Hang", "2"]);
    assert_eq!(count(&seen["codes"], "DEADLINE_EXCEEDED"), 2, "{seen}");
    let seen = client(&["grpc", &listener, "/demo.Payments/Charge", "2"]);
    assert_eq!(count(&seen["codes"], "OK"), 2, "{seen}");
    assert!(
        mesh.metrics()
            .contains("airlock_route_timeouts_total{service=\"stuck\"} 2"),
        "{}",
        mesh.metrics()
    );
}

#[test]
fn grpc_unavailable_in_trailers_takes_its_endpoint_out() {
    let mesh = Mesh::start();
    let listener = mesh.caller.upstream("payments", GRPC_PORT).to_string();
    let odd = mesh.callees[2].inbound;
    // The third endpoint answers every call with headers, then UNAVAILABLE in its
    // trailers: only the trailers say it failed.
    let seen = client(&["grpc", &listener, "/demo.Payments/Down", "600"]);
    let unavailable = count(&seen["codes"], "UNAVAILABLE");
    assert!(
        unavailable > 0,
        "the control: the odd endpoint fails: {seen}"
    );
    assert!(
        unavailable < 100,
        "taken out, it gets far fewer than its third of 600: {seen}"
    );
    let metrics = mesh.metrics();
    let ejections = |endpoint: SocketAddr| {
        format!(
            "airlock_route_endpoint_ejections_total{{service=\"payments\",endpoint=\"{endpoint}\"}}"
        )
    };
    assert!(metrics.contains(&ejections(odd)), "{metrics}");
    for healthy in &mesh.callees[..2] {
        assert!(!metrics.contains(&ejections(healthy.inbound)), "{metrics}");
    }
}

#[test]
fn routed_requests_in_flight_are_capped() {
    let mesh = Mesh::start_with(|caller| caller.outbound.http.max_concurrent_requests = 1);
    // `/slow` holds the one place for two seconds while probes are refused. A probe that
    // overtook it (this machine is shared) takes the place instead and `/slow` is
    // refused: then the round is run again.
    let refused = (0..3).find_map(|_| {
        std::thread::scope(|scope| {
            let slow = scope.spawn(|| curl_echo(&mesh, "/slow", &[]));
            std::thread::sleep(Duration::from_millis(500));
            let mut refused = None;
            while refused.is_none() && !slow.is_finished() {
                let (status, body) = curl_echo(&mesh, "/", &[]);
                if status == 503 {
                    refused = Some(body);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (slow.join().unwrap().0 == 200).then_some(refused).flatten()
        })
    });
    let refused = refused.expect("a request while /slow was in flight is refused");
    assert!(refused.contains("max_concurrent_requests"), "{refused}");
    // The control: with the place free again, a request goes through.
    assert_eq!(curl_echo(&mesh, "/", &[]).0, 200);
    assert!(
        mesh.metrics()
            .contains("airlock_http_limit_rejections_total{limit=\"concurrent_requests\"}"),
        "{}",
        mesh.metrics()
    );
}

#[test]
fn a_killed_endpoint_is_routed_around_and_probed_back_in() {
    let mut mesh = Mesh::start();
    mesh.http1("payments", OK_PORT, "GET", 30);
    let killed = mesh.callees.remove(0);
    drop(killed);
    // Nothing reached the dead endpoint, so every request went elsewhere: no errors.
    let seen = mesh.http1("payments", OK_PORT, "GET", 200);
    assert_eq!(count(&seen["statuses"], "200"), 200, "{seen}");
    assert_eq!(count(&seen["answers"], NAMES[0]), 0, "{seen}");
    assert!(
        mesh.metrics()
            .contains("airlock_route_endpoint_ejections_total"),
        "{}",
        mesh.metrics()
    );
    // The endpoint comes back at the same address: a probe finds it.
    let identity = mesh
        .ca
        .identity(&mesh.server.url, "payments-a2", PAYMENTS, &["--uses", "5"]);
    let config = airlock_config::Config {
        identity,
        ..mesh.callee_configs[0].clone()
    };
    let revived = Sidecar::start(&mesh.ca, "payments-a2", &config);
    revived.wait_ready();
    wait_up_to(
        Duration::from_secs(90),
        "the revived endpoint to be probed back in",
        || {
            count(
                &mesh.http1("payments", OK_PORT, "GET", 50)["answers"],
                NAMES[0],
            ) > 0
        },
    );
}

#[test]
fn routed_requests_are_authorized_identified_and_upgraded_like_tunnelled_ones() {
    let mesh = Mesh::start();
    // The app cannot speak for a sidecar: its routing and identity headers go, the
    // callee writes the verified identity, and the request reaches the port it named.
    let (status, body) = curl_echo(
        &mesh,
        "/orders",
        &[
            "-H",
            "airlock-target-port: 8080",
            "-H",
            "airlock-app-protocol: http2",
            "-H",
            "x-airlock-peer-identity: spiffe://example.org/ns/x/sa/admin",
        ],
    );
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        seen["version"], "HTTP/1.1",
        "an HTTP/1.1 caller reaches the app in HTTP/1.1"
    );
    let headers = seen["headers"].as_object().unwrap();
    assert_eq!(headers["x-airlock-peer-identity"], CHECKOUT, "{body}");
    assert!(headers.keys().all(|h| !h.starts_with("airlock-")), "{body}");
    // HTTP/2 with prior knowledge stays HTTP/2 to the app.
    let (status, body) = curl_echo(&mesh, "/orders", &["--http2-prior-knowledge"]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        "HTTP/2.0"
    );
    // The callee's policy decides each request: a denied path is 403 with its reason.
    let (status, body) = curl_echo(&mesh, "/admin", &[]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("pay/no-admin"), "{body}");

    // A WebSocket upgrade goes through, then bytes both ways.
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(mesh.caller.upstream("echo", ECHO_PORT)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    socket
        .write_all(b"GET /upgrade HTTP/1.1\r\nHost: echo\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket.write_all(b"frames after the switch").unwrap();
    let mut echoed = [0u8; 23];
    socket.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"frames after the switch");
}
