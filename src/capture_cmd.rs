//! `airlock init-capture`: installs the iptables rules that route the pod's TCP traffic
//! through its sidecar (rules: `airlock_proxy::capture`), or removes them (`--cleanup`).
//! Runs in the pod's init container, which needs NET_ADMIN and NET_RAW and nothing more.

use std::process::Command;

use airlock_proxy::capture::{CaptureSpec, Rule, removal, removal_ipv6};
use clap::Args;
use ipnet::Ipv4Net;

use crate::Failure;

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// UID of the sidecar: its own connections are never captured.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    /// The sidecar's transparent outbound listener.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// The sidecar's inbound plaintext capture listener.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// The sidecar's mesh transport port; inbound traffic to it is never redirected.
    #[arg(long, default_value_t = 15008)]
    mesh_port: u16,
    /// The sidecar's health port; never redirected either (kubelet probes it).
    #[arg(long, default_value_t = 15020)]
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

pub fn run(args: CaptureArgs) -> Result<(), Failure> {
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
        for rule in remove {
            if let Err(IptablesError::NotPermitted(message)) = iptables(table, &rule) {
                return Err(not_permitted(&message));
            }
        }
        if args.cleanup {
            continue;
        }
        for rule in install {
            iptables(table, &rule).map_err(|e| match e {
                IptablesError::NotPermitted(message) => not_permitted(&message),
                IptablesError::Failed(message) => Failure::failed(format!(
                    "{} {} failed: {message}",
                    table.command().join(" "),
                    rule.join(" ")
                )),
            })?;
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

fn not_permitted(message: &str) -> Failure {
    Failure::failed(format!(
        "iptables is not permitted here ({message}): init-capture needs the NET_ADMIN capability in the pod's network namespace"
    ))
}
