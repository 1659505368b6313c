//! README's first command, as CI runs it.

mod common;

use common::*;

#[test]
fn demo_once_runs_every_step_as_expected() {
    let out = ok(airlock().args(["demo", "--once"]));
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.ends_with("yes") || l.ends_with("NO"))
        .collect();
    assert_eq!(rows.len(), 4, "{out}");
    assert!(rows.iter().all(|r| r.ends_with("yes")), "{out}");
    assert!(
        out.contains("spiffe://demo.airlock/ns/shop/sa/checkout"),
        "{out}"
    );
}
