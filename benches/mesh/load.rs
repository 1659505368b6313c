//! The measurements: fixed-rate HTTP load (oha, open loop), bulk TCP (iperf3) and new
//! connections per second (oha without keep-alive), each through one variant's entry.

use std::net::SocketAddr;
use std::process::Command;

use airlock_testkit::{run, stderr, stdout};

use crate::{CONNECTIONS, Variant};

/// Latency figures (ms) and CPU of one fixed-rate run.
#[derive(Clone, Default)]
pub(crate) struct LoadRun {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) achieved: f64,
    /// CPU seconds per 1,000 requests: client side, server side.
    pub(crate) cpu: (f64, f64),
}

pub(crate) fn fixed_rate(variant: &Variant, http2: bool, rate: u64, seconds: u64) -> LoadRun {
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
pub(crate) fn bulk_tcp(entry: SocketAddr, seconds: u64) -> f64 {
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
pub(crate) fn new_connections(entry: SocketAddr, seconds: u64) -> f64 {
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
