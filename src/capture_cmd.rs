//! `airlock init-capture`: installs the iptables rules that route the pod's TCP traffic
//! through its sidecar (rules: `airlock_proxy::capture`), or removes them (`--cleanup`).
//! Runs in the pod's init container, which needs NET_ADMIN and NET_RAW and nothing more.

use std::process::Command;

use airlock_config::ports;
use airlock_proxy::capture::{CaptureSpec, Rule, removal, removal_ipv6};
use clap::Args;
use ipnet::Ipv4Net;

use crate::Failure;

#[derive(Debug, Args)]
pub(crate) struct CaptureArgs {
    /// UID of the sidecar: its own connections are never captured.
    #[arg(long, default_value_t = ports::PROXY_UID)]
    proxy_uid: u32,
    /// The sidecar's transparent outbound listener.
    #[arg(long, default_value_t = ports::OUTBOUND)]
    outbound_port: u16,
    /// The sidecar's inbound plaintext capture listener.
    #[arg(long, default_value_t = ports::INBOUND_PLAINTEXT)]
    inbound_port: u16,
    /// The sidecar's mesh transport port; inbound traffic to it is never redirected.
    #[arg(long, default_value_t = ports::MESH)]
    mesh_port: u16,
    /// The sidecar's health port; never redirected either (kubelet probes it).
    #[arg(long, default_value_t = ports::HEALTH)]
    health_port: u16,
    /// More inbound ports that go straight to the pod (comma-separated), on top of the
    /// mesh and health ports.
    #[arg(long, value_delimiter = ',')]
    inbound_exclude_ports: Vec<u16>,
    /// Outbound destination ports left alone (comma-separated).
    #[arg(long, value_delimiter = ',')]
    outbound_exclude_ports: Vec<u16>,
    /// Outbound destinations left alone, as CIDRs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    outbound_exclude_cidrs: Vec<Ipv4Net>,
    /// Capture outbound traffic only.
    #[arg(long)]
    no_inbound: bool,
    /// Remove the rules this command installs, and nothing else.
    #[arg(long)]
    cleanup: bool,
    /// Print the iptables commands instead of running them.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) fn run(args: CaptureArgs) -> Result<(), Failure> {
    if args.proxy_uid == 0 {
        return Err(Failure::usage(
            "--proxy-uid 0 would exempt every root process from capture",
        ));
    }
    let ports = [
        ("--outbound-port", args.outbound_port),
        ("--inbound-port", args.inbound_port),
        ("--mesh-port", args.mesh_port),
        ("--health-port", args.health_port),
    ];
    if let Some((flag, _)) = ports.iter().find(|(_, port)| *port == 0) {
        return Err(Failure::usage(format!(
            "{flag} must be a port number, not 0"
        )));
    }
    if args.inbound_port == args.outbound_port {
        return Err(Failure::usage(
            "--inbound-port and --outbound-port must differ: they are two listeners",
        ));
    }
    let spec = CaptureSpec {
        proxy_uid: args.proxy_uid,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        inbound_exclude_ports: [args.mesh_port, args.health_port]
            .into_iter()
            .chain(args.inbound_exclude_ports)
            .collect(),
        outbound_exclude_ports: args.outbound_exclude_ports,
        outbound_exclude_cidrs: args
            .outbound_exclude_cidrs
            .into_iter()
            .map(|c| c.trunc())
            .collect(),
        capture_inbound: !args.no_inbound,
    };
    // A short prefix would quietly exempt a large part of the Internet from capture.
    if let Some(wide) = spec
        .outbound_exclude_cidrs
        .iter()
        .find(|c| c.prefix_len() < 8)
    {
        return Err(Failure::usage(format!(
            "--outbound-exclude-cidrs: {wide} is wider than a /8 and would exempt too much from capture"
        )));
    }
    // The kernel may have no IPv6 at all; then there is nothing to refuse.
    let ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
    let tables = [
        (Table::Nat, removal(), spec.install()),
        (Table::Ipv6Filter, removal_ipv6(), spec.install_ipv6()),
    ];
    let tables = tables
        .into_iter()
        .filter(|(table, _, _)| ipv6 || *table == Table::Nat);
    if args.dry_run {
        for (table, remove, install) in tables {
            let rules = remove
                .into_iter()
                .chain(if args.cleanup { Vec::new() } else { install });
            for rule in rules {
                println!("{} {}", table.command().join(" "), rule.join(" "));
            }
        }
        return Ok(());
    }
    for (table, remove, install) in tables {
        // Removing first makes installing idempotent: a second run yields the same rules.
        // A rule or chain that is not there is fine; any other failure is not.
        for rule in remove {
            match iptables(table, &rule) {
                Ok(()) => {}
                Err(IptablesError::Failed(message)) if already_gone(&message) => {}
                Err(error) => return Err(rule_failure(table, &rule, error)),
            }
        }
        if args.cleanup {
            continue;
        }
        for rule in install {
            iptables(table, &rule).map_err(|e| rule_failure(table, &rule, e))?;
        }
    }
    if args.cleanup {
        println!("airlock capture rules removed");
        return Ok(());
    }
    println!(
        "airlock capture installed: outbound TCP → {}, inbound TCP → {}; IPv6 TCP {}",
        spec.outbound_port,
        if spec.capture_inbound {
            spec.inbound_port.to_string()
        } else {
            "not captured".into()
        },
        if ipv6 { "refused" } else { "absent" }
    );
    Ok(())
}

/// Where the rules go: IPv4 redirects in `nat`, IPv6 refusals in `filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Nat,
    Ipv6Filter,
}

impl Table {
    fn command(self) -> [&'static str; 3] {
        match self {
            Self::Nat => ["iptables", "-t", "nat"],
            Self::Ipv6Filter => ["ip6tables", "-t", "filter"],
        }
    }
}

/// iptables' words for "no such rule or chain" (legacy and nf_tables back ends).
fn already_gone(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    [
        "does not exist",
        "no chain/target/match",
        "bad rule",
        "couldn't load target",
    ]
    .iter()
    .any(|words| lower.contains(words))
}

enum IptablesError {
    NotPermitted(String),
    Failed(String),
}

fn iptables(table: Table, rule: &Rule) -> Result<(), IptablesError> {
    let [program, table_flag, table_name] = table.command();
    let output = Command::new(program)
        .args(["-w", "5", table_flag, table_name])
        .args(rule)
        .output()
        .map_err(|e| IptablesError::Failed(format!("cannot run {program}: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    let lower = message.to_ascii_lowercase();
    if lower.contains("permission denied") || lower.contains("must be root") {
        Err(IptablesError::NotPermitted(message))
    } else {
        Err(IptablesError::Failed(message))
    }
}

/// The one clear sentence for a rule that iptables refused.
fn rule_failure(table: Table, rule: &Rule, error: IptablesError) -> Failure {
    match error {
        IptablesError::NotPermitted(message) => Failure::failed(format!(
            "iptables is not permitted here ({message}): init-capture needs the NET_ADMIN capability in the pod's network namespace"
        )),
        IptablesError::Failed(message) => Failure::failed(format!(
            "{} {} failed: {message}",
            table.command().join(" "),
            rule.join(" ")
        )),
    }
}
