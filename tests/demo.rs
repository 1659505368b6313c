//! README's first command, as CI runs it: the whole mesh comes up, every scripted call
//! gets its expected decision, and nothing is left behind.

use std::net::{SocketAddr, TcpStream};

use airlock_testkit::*;

#[test]
fn demo_once_decides_every_call_as_expected_and_leaves_nothing_behind() {
    let out = ok(airlock().args(["demo", "--once"]));
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" → ") && (l.contains(" yes ") || l.contains(" NO ")))
        .collect();
    assert_eq!(rows.len(), 10, "{out}");
    assert!(rows.iter().all(|r| r.contains(" yes ")), "{out}");
    for shown in [
        "ALLOW policy pay/payments-api rule 0",
        "DENY policy airlock-system/no-debug-endpoints",
        "DENY policy airlock-system/quarantine-sandbox",
        "dry-run pay/status-lockdown would deny",
        "time-bound grant",
        // The live rotation: a new serial, and calls still answered.
        "installed a renewed SVID after",
        "GET /v1/charges after the rotation: 200",
        // The live revocation: refused, then allowed again once lifted.
        "Live: airlock ca revoke --spiffe-id spiffe://demo.airlock/ns/finance/sa/reconcile",
        "200 again after",
    ] {
        assert!(out.contains(shown), "{shown} missing:\n{out}");
    }
    // Everything it started is gone: listeners closed, temporary files removed.
    let upstreams: Vec<SocketAddr> = out
        .lines()
        .filter_map(|l| l.split("http://").nth(1))
        .filter_map(|rest| rest.split('/').next()?.parse().ok())
        .collect();
    assert!(upstreams.len() >= 6, "{out}");
    for addr in upstreams {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still open");
    }
    let logs: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.ends_with(".access.log"))
        .collect();
    assert_eq!(logs.len(), 5, "{out}");
    for log in logs {
        assert!(!std::path::Path::new(log).exists(), "{log} left behind");
    }
}
