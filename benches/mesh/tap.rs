//! What `airlock tap` costs: the airlock pair's HTTP/1.1 load, measured before any tap
//! was attached, while an `airlock tap --json` stream reads the server side's decisions,
//! and after that stream left. The first and last rows should agree: a sidecar nobody
//! taps builds no record for a tap (its access log is off here), so a tap that came and
//! went leaves nothing behind.

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use airlock_testkit::{airlock, wait_up_to};

use crate::load::{LoadRun, fixed_rate};
use crate::process::Process;
use crate::{Fixture, Variant};

/// The load: requests per second, HTTP/1.1.
const RATE: u64 = 1000;

/// One phase: its name and what the load saw.
pub(crate) struct Phase {
    name: &'static str,
    run: LoadRun,
}

/// Runs the three phases on `variant` (the airlock pair, whose server side's admin API
/// the tap streams from).
pub(crate) fn measure(fixture: &Fixture, variant: &Variant, seconds: u64) -> Vec<Phase> {
    let admin = variant
        .server_admin
        .expect("the airlock pair names its server side's admin API");
    let before = fixed_rate(variant, false, RATE, seconds);
    let lines = fixture.dir.join("tap.jsonl");
    let tapping = Process::spawn(
        airlock().args(["tap", "--admin", &admin.to_string(), "--json"]),
        &lines,
    );
    // The stream is attached once a request shows up on it.
    wait_up_to(
        Duration::from_secs(10),
        &format!("the tap's first line in {}", lines.display()),
        || {
            let _ = Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://{}/kib", variant.http_entry))
                .status();
            std::fs::read_to_string(&lines).is_ok_and(|text| text.contains("\"/kib\""))
        },
    );
    let during = fixed_rate(variant, false, RATE, seconds);
    let streamed = std::fs::read_to_string(&lines)
        .map(|text| text.lines().filter(|l| l.contains("\"/kib\"")).count())
        .unwrap_or(0);
    assert!(
        streamed as f64 >= during.achieved * seconds as f64 * 0.5,
        "the tap streamed only {streamed} request lines: it was not attached throughout"
    );
    drop(tapping);
    let after = fixed_rate(variant, false, RATE, seconds);
    vec![
        Phase {
            name: "before any tap",
            run: before,
        },
        Phase {
            name: "one tap streaming (`--json`)",
            run: during,
        },
        Phase {
            name: "after the tap left",
            run: after,
        },
    ]
}

/// The report's section: latency and both sides' CPU per phase, and the idle cost as the
/// ratio of the server side's CPU after the tap to before it.
pub(crate) fn report(phases: &[Phase]) -> String {
    let mut out = String::new();
    writeln!(
        out,
        "\n## What tapping costs\n\n\
         The airlock pair above, HTTP/1.1 at {RATE} req/s, access log off: before any tap \
         was attached, while `airlock tap --admin ADDR --json` streamed every request of \
         the server side, and after it disconnected. Goal: nothing when nobody taps (the \
         last row matches the first).\n"
    )
    .unwrap();
    writeln!(
        out,
        "| phase | p50 ms | p99 ms | CPU client | CPU server |\n|---|---|---|---|---|"
    )
    .unwrap();
    for phase in phases {
        writeln!(
            out,
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            phase.name, phase.run.p50, phase.run.p99, phase.run.cpu.0, phase.run.cpu.1
        )
        .unwrap();
    }
    if let [before, during, after] = phases {
        writeln!(
            out,
            "\nServer side's CPU per request: {} × with a tap streaming, {} × after it left \
             (both against before any tap).",
            crate::report::ratio(during.run.cpu.1, before.run.cpu.1),
            crate::report::ratio(after.run.cpu.1, before.run.cpu.1),
        )
        .unwrap();
    }
    out
}
