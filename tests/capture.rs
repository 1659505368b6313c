//! `airlock init-capture` in a network namespace this test creates: the rules land in the
//! nat table, a second run changes nothing, `--cleanup` restores the table exactly, and
//! without NET_ADMIN the command fails with one clear sentence.

use airlock_testkit::*;

const TEST: &str = "init_capture_is_idempotent_and_cleans_up_exactly";

/// The IPv4 nat table and the IPv6 filter table, without counters or comments.
fn nat_table(namespace: &Namespace) -> String {
    table(namespace, "iptables-save", "nat") + "\n" + &table(namespace, "ip6tables-save", "filter")
}

fn table(namespace: &Namespace, save: &str, name: &str) -> String {
    let output = namespace.output(&[save, "-t", name]);
    assert!(output.status.success(), "{}", stderr(&output));
    stdout(&output)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.split_once(" [") {
            Some((chain, _)) if l.starts_with(':') => chain.to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn init_capture_is_idempotent_and_cleans_up_exactly() {
    let Some(namespace) = Namespace::create("capture", TEST) else {
        return;
    };
    let binary = env!("CARGO_BIN_EXE_airlock");
    // Something of the operator's own, which airlock must leave alone.
    namespace.run(&[
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN",
    ]);
    let pristine = nat_table(&namespace);

    namespace.run(&[
        binary,
        "init-capture",
        "--outbound-exclude-cidrs",
        "10.96.0.0/12",
    ]);
    let installed = nat_table(&namespace);
    let ipv4 = table(&namespace, "iptables-save", "nat");
    let ipv6 = table(&namespace, "ip6tables-save", "filter");
    let expected = [
        (&ipv4, "-A OUTPUT -p tcp -j AIRLOCK_OUTPUT"),
        (&ipv4, "-A PREROUTING -p tcp -j AIRLOCK_INBOUND"),
        (
            &ipv4,
            "-A AIRLOCK_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        ),
        (&ipv4, "-A AIRLOCK_OUTPUT -d 10.96.0.0/12 -j RETURN"),
        (
            &ipv4,
            "-A AIRLOCK_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
        ),
        (
            &ipv4,
            "-A AIRLOCK_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
        ),
        (
            &ipv4,
            "-A AIRLOCK_INBOUND -p tcp -j REDIRECT --to-ports 15006",
        ),
        // IPv6 is refused around the sidecar, not redirected.
        (&ipv6, "-A OUTPUT -p tcp -j AIRLOCK_OUTPUT"),
        (
            &ipv6,
            "-A AIRLOCK_OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
        ),
        (&ipv6, "-A INPUT -p tcp -j AIRLOCK_INBOUND"),
    ];
    for (rules, rule) in expected {
        assert!(rules.contains(rule), "{rule} missing:\n{rules}");
    }
    namespace.run(&[
        binary,
        "init-capture",
        "--outbound-exclude-cidrs",
        "10.96.0.0/12",
    ]);
    assert_eq!(
        nat_table(&namespace),
        installed,
        "a second run changes nothing"
    );

    namespace.run(&[binary, "init-capture", "--cleanup"]);
    assert_eq!(
        nat_table(&namespace),
        pristine,
        "cleanup removes exactly what was added"
    );
    namespace.run(&[binary, "init-capture", "--cleanup"]);

    // No NET_ADMIN: one sentence that says so, and nothing installed.
    let denied = namespace.output(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        binary,
        "init-capture",
    ]);
    assert_eq!(denied.status.code(), Some(1), "{}", stderr(&denied));
    assert!(stderr(&denied).contains("NET_ADMIN"), "{}", stderr(&denied));
    assert_eq!(nat_table(&namespace), pristine);

    // Without iptables, removal cannot be said to have happened.
    let missing = namespace.output(&[
        "env",
        "PATH=/nonexistent",
        binary,
        "init-capture",
        "--cleanup",
    ]);
    assert_eq!(missing.status.code(), Some(1), "{}", stdout(&missing));
    assert!(
        stderr(&missing).contains("cannot run iptables"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn init_capture_refuses_unsafe_settings() {
    for (args, named) in [
        (&["--proxy-uid", "0"][..], "--proxy-uid"),
        (&["--outbound-port", "0"][..], "--outbound-port"),
        (
            &["--inbound-port", "15001"][..],
            "--inbound-port and --outbound-port",
        ),
        (
            &["--outbound-exclude-cidrs", "0.0.0.0/4"][..],
            "wider than a /8",
        ),
    ] {
        let error = fails_with(airlock().args(["init-capture", "--dry-run"]).args(args), 2);
        assert!(error.contains(named), "{args:?}: {error}");
    }
}
