//! The report: a Markdown page in the shape of benches/RESULTS.md (settings, versions,
//! goals, links to the charts, every figure with its ratio), and writing it without losing
//! the hand-written analysis below its marker; and the same figures as [`Figures`] for the
//! charts, so report and charts cannot disagree.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use airlock_testkit::{run, stdout};

use crate::charts::{self, CHARTS, Figures, Memory, VariantFigures};
use crate::load::LoadRun;
use crate::{CONNECTIONS, Settings, Variant, WORKERS};

/// Where the generated part of RESULTS.md ends and the hand-written analysis begins.
const ANALYSIS_MARKER: &str = "<!-- analysis: kept across runs -->";

/// Writes `report` to `path`, followed by the analysis already there (below
/// [`ANALYSIS_MARKER`]), which survives a new run.
pub(crate) fn write(path: &Path, report: &str) {
    let analysis = std::fs::read_to_string(path)
        .ok()
        .and_then(|old| old.find(ANALYSIS_MARKER).map(|at| old[at..].to_owned()))
        .unwrap_or_else(|| format!("{ANALYSIS_MARKER}\n"));
    std::fs::write(path, format!("{report}\n{analysis}")).unwrap();
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

pub(crate) fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "—".into()
    }
}

pub(crate) fn report(
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

    writeln!(out, "## Charts\n").unwrap();
    for chart in &CHARTS {
        writeln!(out, "![{}]({}/{})\n", chart.title, charts::DIR, chart.file).unwrap();
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

/// The figures the charts draw, from the same runs as the report.
pub(crate) fn figures(variants: &[Variant], http: &[(&str, bool, u64, Vec<LoadRun>)]) -> Figures {
    Figures {
        loads: http
            .iter()
            .map(|(version, _, rate, _)| ((*version).to_owned(), *rate))
            .collect(),
        variants: variants
            .iter()
            .enumerate()
            .map(|(i, variant)| VariantFigures {
                name: variant.name.to_owned(),
                latency: http
                    .iter()
                    .map(|(_, _, _, runs)| [runs[i].p50, runs[i].p90, runs[i].p99])
                    .collect(),
                cpu: variant
                    .proxies
                    .as_ref()
                    .map(|_| http.iter().map(|(_, _, _, runs)| runs[i].cpu).collect()),
                memory: variant
                    .proxies
                    .as_ref()
                    .zip(variant.idle_rss_kib)
                    .map(|((c, s), idle)| Memory {
                        idle,
                        peak: (c.memory_kib().1, s.memory_kib().1),
                    }),
            })
            .collect(),
    }
}
