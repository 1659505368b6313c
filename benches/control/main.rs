//! `cargo bench --bench control`: the controller at scale. A fake Kubernetes API
//! (testkit's, the real wire format) holds 1,000 Services of 10 meshed pods each (10,000
//! endpoints) and 100 policies; the real `airlock control --source kubernetes` watches
//! it; 2,000 subscribers, each on its own mTLS connection with an SVID from the real CA,
//! follow the view. Then:
//! - **propagation**: one endpoint is added to one service, and the time until every
//!   subscriber holds it is taken from each subscriber's clock (p50, p99, max), several
//!   rounds;
//! - **rest**: the controller's CPU and RSS with every subscriber connected and nothing
//!   changing;
//! - **churn**: 100 endpoint changes per second for a while: the controller's CPU and
//!   its peak RSS.
//!
//! The subscribers and the fake API run in this process, on the same cores as the
//! controller; the figures are what the controller costs while all of that runs.
//! `--quick` runs fewer rounds and shorter phases. The report section replaces the one
//! in benches/RESULTS.md (`--out FILE` to write elsewhere).

mod cluster;
mod subscribers;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use airlock_testkit::fake_kube::FakeKube;
use airlock_testkit::*;

use crate::subscribers::Subscribers;

const SERVICES: usize = 1_000;
const PODS_PER_SERVICE: usize = 10;
const POLICIES: usize = 100;
const SUBSCRIBERS: usize = 2_000;
/// Subscribers share this many identities (a policy cut per identity).
const IDENTITIES: usize = 20;
const HEADING: &str = "## Control plane at scale";

struct Settings {
    subscribers: usize,
    rounds: usize,
    phase: Duration,
    out: PathBuf,
}

fn settings() -> Settings {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| repo().join("benches/RESULTS.md"), PathBuf::from);
    let subscribers = args
        .iter()
        .position(|a| a == "--subscribers")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(SUBSCRIBERS);
    Settings {
        subscribers,
        rounds: if quick { 3 } else { 10 },
        phase: Duration::from_secs(if quick { 5 } else { 15 }),
        out,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let settings = settings();
    let ca = TestCa::init(cluster::TRUST_DOMAIN);
    let ca_server = CaServer::start(&ca);
    println!(
        "building the cluster: {SERVICES} services, {} pods",
        SERVICES * PODS_PER_SERVICE
    );
    let fake = FakeKube::start(&cluster::objects(SERVICES, PODS_PER_SERVICE, POLICIES));
    let kubeconfig = ca.scratch("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let started = Instant::now();
    let controller = Controller::start_with(
        &ca,
        &ca_server.url,
        "kubernetes",
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("AIRLOCK_LOG", "warn"),
        ],
    );
    let ready_after = started.elapsed();
    let pid = controller.pid().expect("the controller runs");
    let count = settings.subscribers;
    println!("controller ready after {ready_after:?}; connecting {count} subscribers");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let subscribers = runtime.block_on(Subscribers::start(
        &ca,
        &ca_server.url,
        &controller.url(),
        count,
        IDENTITIES,
    ));
    let synced_after = started.elapsed();
    println!("{count} subscribers hold the snapshot after {synced_after:?}");

    // Propagation: one new endpoint on service 0, round after round.
    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        let (pod, slice, address) = cluster::scale_up(round);
        fake.apply(pod);
        std::thread::sleep(Duration::from_millis(300));
        subscribers.expect(&address);
        let t0 = Instant::now();
        fake.apply(slice);
        let latencies = runtime.block_on(subscribers.wait_all(t0, Duration::from_secs(60)));
        let summary = Summary::of(latencies);
        println!("round {round}: {summary}");
        rounds.push(summary);
        std::thread::sleep(Duration::from_millis(500));
    }

    // At rest.
    let rest = process::usage_over(pid, settings.phase, || {
        std::thread::sleep(Duration::from_millis(50));
    });
    println!("at rest: {rest}");

    // Churn: 100 changes per second, each flipping one endpoint's readiness.
    let mut tick = 0usize;
    let churn_started = Instant::now();
    let churn = process::usage_over(pid, settings.phase, || {
        fake.apply(cluster::flip(tick, SERVICES));
        tick += 1;
        let due = churn_started + Duration::from_millis(10) * u32::try_from(tick).unwrap();
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    });
    println!("churn ({tick} changes): {churn}");
    let received = subscribers.updates();

    let report = report(&Report {
        subscribers: count,
        ready_after,
        synced_after,
        rounds: &rounds,
        rest,
        churn,
        changes: tick,
        received,
    });
    println!("{report}");
    write(&settings.out, &report);
    println!("written to {}", settings.out.display());
    drop(subscribers);
    drop(runtime);
}

/// Propagation latencies of one round, in ms.
struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
    count: usize,
}

impl Summary {
    fn of(mut latencies: Vec<Duration>) -> Self {
        latencies.sort();
        let at = |q: f64| {
            let index = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
            latencies
                .get(index)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
            count: latencies.len(),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} subscribers: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.count, self.p50, self.p99, self.max
        )
    }
}

mod process {
    //! The controller's CPU and memory, from /proc.

    use std::time::{Duration, Instant};

    /// CPU and memory over one phase.
    pub(crate) struct Usage {
        /// CPU seconds per second of the phase.
        pub(crate) cpu: f64,
        /// RSS at the end, MB.
        pub(crate) rss_mb: f64,
        /// The process's peak RSS so far (VmHWM), MB.
        pub(crate) peak_mb: f64,
    }

    impl std::fmt::Display for Usage {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{:.3} CPU, RSS {:.1} MB (peak {:.1} MB)",
                self.cpu, self.rss_mb, self.peak_mb
            )
        }
    }

    fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // After the command name in parentheses: fields 14 and 15 are utime and stime.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn status_kb(pid: u32, key: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Runs `step` (which paces itself) repeatedly for `phase` and measures `pid`
    /// meanwhile.
    pub(crate) fn usage_over(pid: u32, phase: Duration, mut step: impl FnMut()) -> Usage {
        let (cpu_before, started) = (cpu_seconds(pid), Instant::now());
        while started.elapsed() < phase {
            step();
        }
        let elapsed = started.elapsed().as_secs_f64();
        Usage {
            cpu: (cpu_seconds(pid) - cpu_before) / elapsed,
            rss_mb: status_kb(pid, "VmRSS:") / 1024.0,
            peak_mb: status_kb(pid, "VmHWM:") / 1024.0,
        }
    }
}

struct Report<'a> {
    subscribers: usize,
    ready_after: Duration,
    synced_after: Duration,
    rounds: &'a [Summary],
    rest: process::Usage,
    churn: process::Usage,
    changes: usize,
    received: u64,
}

fn report(r: &Report<'_>) -> String {
    let mut out = String::new();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let when = time::OffsetDateTime::now_utc();
    writeln!(
        out,
        "{HEADING}\n\n`cargo bench --bench control`, {}-{:02}-{:02} {:02}:{:02} UTC, commit {commit}, on {cores} cores ({cpu}); \
         the subscribers and the fake API server run in the benchmark's process on the same cores.\n\n\
         A fake Kubernetes API (the real wire format) holds {SERVICES} Services with {PODS_PER_SERVICE} meshed pods each \
         ({} endpoints) and {POLICIES} AuthorizationPolicy objects; `airlock control --source kubernetes` watches it; \
         {} subscribers ({IDENTITIES} identities) each hold their own mTLS connection (SVIDs from the CA).\n",
        when.year(),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        SERVICES * PODS_PER_SERVICE,
        r.subscribers,
    )
    .unwrap();
    writeln!(
        out,
        "Controller ready (SVID, cluster listed, first view) {:.1} s after start; all subscribers holding the snapshot {:.1} s after they started connecting.\n",
        r.ready_after.as_secs_f64(),
        r.synced_after.as_secs_f64()
    )
    .unwrap();
    writeln!(
        out,
        "**Propagation** of one added endpoint to every subscriber (from the EndpointSlice write to each subscriber's receipt):\n\n\
         | round | subscribers | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|"
    )
    .unwrap();
    for (i, round) in r.rounds.iter().enumerate() {
        writeln!(
            out,
            "| {i} | {} | {:.1} | {:.1} | {:.1} |",
            round.count, round.p50, round.p99, round.max
        )
        .unwrap();
    }
    let worst_p99 = r.rounds.iter().map(|s| s.p99).fold(0.0, f64::max);
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    writeln!(
        out,
        "\n**Controller cost.**\n\n| phase | CPU (cores) | RSS MB | peak RSS MB |\n|---|---|---|---|\n\
         | at rest, {} subscribers | {:.3} | {:.1} | {:.1} |\n\
         | churn, 100 endpoint changes/s ({} changes, {} messages received in all) | {:.3} | {:.1} | {:.1} |\n",
        r.subscribers, r.rest.cpu, r.rest.rss_mb, r.rest.peak_mb, r.changes, r.received, r.churn.cpu, r.churn.rss_mb, r.churn.peak_mb
    )
    .unwrap();
    writeln!(
        out,
        "| goal | figure | met |\n|---|---|---|\n\
         | every subscriber updated within 1 s at p99 | worst round's p99 {worst_p99:.0} ms | {} |\n\
         | controller under 200 MB | peak {:.0} MB | {} |\n\
         \nAnchor: istiod is documented at about 1 vCPU and 1.5 GB for 1,000 services and 2,000 sidecars.",
        met(worst_p99 <= 1000.0),
        r.churn.peak_mb,
        met(r.churn.peak_mb <= 200.0),
    )
    .unwrap();
    out
}

/// The hand-written analysis under the report's section, kept across runs.
const ANALYSIS: &str = "### Where the controller's memory goes (written by hand";

/// Replaces the report's section in `path` (from its heading to the analysis, or to the
/// end), keeping what comes before it (the mesh benchmark's report and analysis) and the
/// hand-written analysis after it.
fn write(path: &std::path::Path, section: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let (before, after) = match old.find(HEADING) {
        Some(at) => {
            let rest = &old[at..];
            let analysis = rest.find(ANALYSIS).map_or("", |a| &rest[a..]);
            (&old[..at], analysis)
        }
        None => (old.as_str(), ""),
    };
    let before = before.trim_end();
    let mut text = String::new();
    if !before.is_empty() {
        text.push_str(before);
        text.push_str("\n\n");
    }
    text.push_str(section.trim_end());
    text.push('\n');
    if !after.is_empty() {
        text.push('\n');
        text.push_str(after);
    }
    std::fs::write(path, text).unwrap();
}
