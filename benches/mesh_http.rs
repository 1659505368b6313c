//! HTTP through the sidecar pair, against direct loopback, at a fixed request rate
//! (open loop: oha `-q` with `--latency-correction`, so a stall shows as latency instead
//! of a slower sender). The server sidecar authorizes every request on method and path.
//!
//! `cargo bench --bench mesh_http` (needs `oha` on PATH). Settings from the environment:
//! `AIRLOCK_BENCH_RATE` (requests/s, default 1000), `AIRLOCK_BENCH_SECONDS` (default 15),
//! `AIRLOCK_BENCH_CONNECTIONS` (default 16). Prints a markdown table: latency percentiles,
//! achieved rate, and CPU seconds per 1,000 requests of each sidecar (from /proc).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../src/http_app.rs"]
mod http_app;

use std::net::SocketAddr;
use std::process::Command;

use common::*;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; fields after it are space-separated.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
}

struct Run {
    name: &'static str,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    rate: f64,
    success: f64,
    cpu_per_1000: Option<(f64, f64)>,
}

fn oha(url: &str, http2: bool) -> serde_json::Value {
    let rate = setting("AIRLOCK_BENCH_RATE", 1000);
    let seconds = setting("AIRLOCK_BENCH_SECONDS", 15);
    let connections = setting("AIRLOCK_BENCH_CONNECTIONS", 16);
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
        &connections.to_string(),
    ]);
    if http2 {
        // One connection per client, HTTP/2 prior knowledge (h2c).
        command.args(["--http2", "-p", "1"]);
    }
    let output = run(command.arg(url));
    assert!(output.status.success(), "oha failed: {}", stderr(&output));
    serde_json::from_slice(&output.stdout).expect("oha JSON")
}

fn measure(name: &'static str, url: &str, http2: bool, sidecars: &[&Sidecar]) -> Run {
    let before: Vec<f64> = sidecars.iter().map(|s| cpu_seconds(s.child.id())).collect();
    let report = oha(url, http2);
    let after: Vec<f64> = sidecars.iter().map(|s| cpu_seconds(s.child.id())).collect();
    let summary = &report["summary"];
    let ok = report["statusCodeDistribution"]["200"]
        .as_f64()
        .unwrap_or(0.0);
    let all: f64 = report["statusCodeDistribution"]
        .as_object()
        .map(|codes| codes.values().filter_map(serde_json::Value::as_f64).sum())
        .unwrap_or(0.0);
    assert!(
        ok > 0.0 && ok == all,
        "{name}: every answer must be 200: {}",
        report["statusCodeDistribution"]
    );
    let percentile =
        |p: &str| report["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let cpu = |i: usize| (after[i] - before[i]) / (ok / 1000.0);
    Run {
        name,
        p50: percentile("p50"),
        p90: percentile("p90"),
        p99: percentile("p99"),
        p999: percentile("p99.9"),
        max: summary["slowest"].as_f64().unwrap_or(f64::NAN) * 1000.0,
        rate: summary["requestsPerSec"].as_f64().unwrap_or(f64::NAN),
        success: summary["successRate"].as_f64().unwrap_or(f64::NAN),
        cpu_per_1000: (sidecars.len() == 2).then(|| (cpu(0), cpu(1))),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and `cargo test --benches` probe this way
    }
    let ca = TestCa::init("bench.local");
    let server = CaServer::start(&ca);
    let (app, _seen) = http_app::spawn("bench");
    let identity = |name: &str, id: &str| {
        let token = ca.scratch(&format!("{name}.token"));
        std::fs::write(&token, ca.token(id, &[])).unwrap();
        format!(
            "identity:\n  trust_domain: bench.local\n  ca_url: {}\n  ca_bundle: {}\n  token_file: {}\n",
            server.url,
            ca.path("bundle.pem").display(),
            token.display()
        )
    };
    let policies = ca.scratch("policies.yaml");
    std::fs::write(
        &policies,
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: api, namespace: bench}\nspec:\n  selector: {identities: [spiffe://bench.local/ns/bench/sa/server]}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [spiffe://bench.local/ns/bench/sa/client]}}]\n    to: [{operation: {ports: [8080], methods: [GET], paths: [/kib]}}]\n",
    )
    .unwrap();
    let server_side = Sidecar::start(
        &ca,
        "server",
        &SidecarAddrs::new("127.0.0.2"),
        &format!(
            "{}inbound:\n  listen: INBOUND_LISTEN\n  ports:\n  - {{port: 8080, protocol: http, app: {app}}}\npolicy:\n  paths: [{}]\naccess_log:\n  sink: off\n",
            identity("server", "spiffe://bench.local/ns/bench/sa/server"),
            policies.display()
        ),
    );
    server_side.wait_ready();
    let upstream = SocketAddr::from(([127, 0, 0, 1], free_port("127.0.0.1")));
    let client_side = Sidecar::start(
        &ca,
        "client",
        &SidecarAddrs::new("127.0.0.1"),
        &format!(
            "{}inbound:\n  listen: INBOUND_LISTEN\noutbound:\n  upstreams:\n  - {{listen: {upstream}, service: server, port: 8080}}\nregistry:\n  server:\n    identity: spiffe://bench.local/ns/bench/sa/server\n    endpoints: [{}]\naccess_log:\n  sink: off\n",
            identity("client", "spiffe://bench.local/ns/bench/sa/client"),
            server_side.inbound
        ),
    );
    client_side.wait_ready();

    let direct = format!("http://{app}/kib");
    let meshed = format!("http://{upstream}/kib");
    let pair = [&client_side, &server_side];
    let runs = [
        measure("HTTP/1.1 direct", &direct, false, &[]),
        measure("HTTP/1.1 sidecar pair", &meshed, false, &pair),
        measure("HTTP/2 direct", &direct, true, &[]),
        measure("HTTP/2 sidecar pair", &meshed, true, &pair),
    ];
    println!(
        "\nrate {} req/s for {} s over {} connections; latency in ms\n",
        setting("AIRLOCK_BENCH_RATE", 1000),
        setting("AIRLOCK_BENCH_SECONDS", 15),
        setting("AIRLOCK_BENCH_CONNECTIONS", 16)
    );
    println!(
        "| variant | p50 | p90 | p99 | p99.9 | max | req/s | success | CPU s / 1k req (client, server sidecar) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let cpu = r
            .cpu_per_1000
            .map_or_else(|| "—".to_owned(), |(c, s)| format!("{c:.3}, {s:.3}"));
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {:.4} | {cpu} |",
            r.name, r.p50, r.p90, r.p99, r.p999, r.max, r.rate, r.success
        );
    }
}
