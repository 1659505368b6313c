//! Balancing with one slow backend: each proxy kind's client side in front of three
//! server sides, each of those in front of its own app, one app answering 20 ms late.
//! airlock balances per request (P2C over peak-EWMA), Envoy with `LEAST_REQUEST`, nginx
//! with `least_conn`. The same open-loop HTTP/1.1 load goes through each; what counts is
//! the latency the load sees and how the requests were spread.

use std::fmt::Write as _;
use std::time::Duration;

use airlock_testkit::CaServer;
use airlock_testkit::http_app::{self, Seen};

use crate::load::{LoadRun, fixed_rate};
use crate::{Fixture, airlock, envoy, nginx};

/// The slow backend's extra latency.
const SLOW: Duration = Duration::from_millis(20);
/// The load: requests per second.
const RATE: u64 = 500;

/// One variant's run: its latency and the share of requests each backend answered
/// (the slow one last).
pub(crate) struct Balanced {
    name: &'static str,
    run: LoadRun,
    shares: [f64; 3],
}

fn counts(seen: &[Seen; 3]) -> [usize; 3] {
    seen.each_ref().map(|s| s.lock().unwrap().len())
}

/// Runs the three variants one after another, each with three fresh apps.
pub(crate) fn measure(
    fixture: &Fixture,
    ca_server: &CaServer,
    envoy: &str,
    seconds: u64,
) -> Vec<Balanced> {
    [
        ("airlock", "airlock-balanced"),
        ("envoy", "envoy-balanced"),
        ("nginx", "nginx-balanced"),
    ]
    .into_iter()
    .map(|(kind, name)| {
        let (fast_a, seen_a) = http_app::spawn("fast-a");
        let (fast_b, seen_b) = http_app::spawn("fast-b");
        let (slow, seen_slow) = http_app::spawn_delayed("slow", SLOW);
        let apps = [fast_a, fast_b, slow];
        let variant = match kind {
            "airlock" => airlock::pair(fixture, ca_server, &apps, name),
            "envoy" => envoy::pair(fixture, envoy, &apps, name),
            _ => nginx::pair(fixture, &apps, name),
        };
        crate::check_variant(&variant);
        let seen = [seen_a, seen_b, seen_slow];
        let before = counts(&seen);
        let run = fixed_rate(&variant, false, RATE, seconds);
        let after = counts(&seen);
        let answered: [usize; 3] = std::array::from_fn(|i| after[i] - before[i]);
        let total = answered.iter().sum::<usize>().max(1) as f64;
        Balanced {
            name: kind,
            run,
            shares: answered.map(|n| n as f64 / total),
        }
    })
    .collect()
}

/// The report's section: p50 and p99 per proxy, airlock's ratios to the others, and the
/// spread.
pub(crate) fn report(balanced: &[Balanced]) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "\n## Balancing with one slow backend\n\n\
         Each client-side proxy in front of three server sides (same pairing, mTLS and \
         authorization as above), each in front of its own app; one app answers {} ms \
         late. airlock: P2C over peak-EWMA, per request; Envoy: `LEAST_REQUEST`; nginx: \
         `least_conn`. HTTP/1.1, {RATE} req/s open loop. Goal: airlock's p99 ≤ 0.8 × \
         Envoy's.\n",
        SLOW.as_millis()
    )
    .unwrap();
    writeln!(
        out,
        "| proxy | p50 ms | p99 ms | p99 ÷ Envoy's | fast A | fast B | slow |\n|---|---|---|---|---|---|---|"
    )
    .unwrap();
    let envoy_p99 = balanced
        .iter()
        .find(|b| b.name == "envoy")
        .map_or(f64::NAN, |b| b.run.p99);
    for b in balanced {
        writeln!(
            out,
            "| {} | {:.2} | {:.2} | {} | {:.0} % | {:.0} % | {:.0} % |",
            b.name,
            b.run.p50,
            b.run.p99,
            crate::report::ratio(b.run.p99, envoy_p99),
            b.shares[0] * 100.0,
            b.shares[1] * 100.0,
            b.shares[2] * 100.0,
        )
        .unwrap();
    }
    if let Some(airlock) = balanced.iter().find(|b| b.name == "airlock") {
        let met = airlock.run.p99 <= 0.8 * envoy_p99;
        writeln!(
            out,
            "\nGoal {}: airlock's p99 {:.2} ms against Envoy's {envoy_p99:.2} ms.",
            if met { "met" } else { "missed" },
            airlock.run.p99
        )
        .unwrap();
    }
    out
}
