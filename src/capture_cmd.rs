//! `airlock init-capture`: installs the iptables rules that route the pod's TCP traffic
//! through its sidecar (rules: `airlock_proxy::capture`), or removes them (`--cleanup`).
//! Runs in the pod's init container, which needs NET_ADMIN and NET_RAW and nothing more.

use std::net::Ipv4Addr;
use std::process::Command;

use airlock_proxy::capture::{CaptureSpec, Rule, removal};
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
    /// Inbound ports that go straight to the pod (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [15008, 15020])]
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
        inbound_exclude_ports: args.inbound_exclude_ports,
        outbound_exclude_ports: args.outbound_exclude_ports,
        outbound_exclude_cidrs: args
            .outbound_exclude_cidrs
            .into_iter()
            .map(|c| c.trunc())
            .collect(),
        capture_inbound: !args.no_inbound,
    };
    if spec
        .outbound_exclude_cidrs
        .iter()
        .any(|c| c.contains(&Ipv4Addr::UNSPECIFIED))
    {
        return Err(Failure::usage(
            "--outbound-exclude-cidrs: a CIDR that holds 0.0.0.0 would turn capture off; use no capture instead",
        ));
    }
    if args.dry_run {
        let rules = removal().into_iter().chain(if args.cleanup {
            Vec::new()
        } else {
            spec.install()
        });
        for rule in rules {
            println!("iptables -t nat {}", rule.join(" "));
        }
        return Ok(());
    }
    // Removing first makes installing idempotent: a second run yields the same rules.
    for rule in removal() {
        if let Err(IptablesError::NotPermitted(message)) = iptables(&rule) {
            return Err(not_permitted(&message));
        }
    }
    if args.cleanup {
        println!("airlock capture rules removed");
        return Ok(());
    }
    for rule in spec.install() {
        iptables(&rule).map_err(|e| match e {
            IptablesError::NotPermitted(message) => not_permitted(&message),
            IptablesError::Failed(message) => Failure::failed(format!(
                "iptables -t nat {} failed: {message}",
                rule.join(" ")
            )),
        })?;
    }
    println!(
        "airlock capture installed: outbound TCP → {}, inbound TCP → {}",
        spec.outbound_port,
        if spec.capture_inbound {
            spec.inbound_port.to_string()
        } else {
            "not captured".into()
        }
    );
    Ok(())
}

enum IptablesError {
    NotPermitted(String),
    Failed(String),
}

fn iptables(rule: &Rule) -> Result<(), IptablesError> {
    let output = Command::new("iptables")
        .args(["-w", "5", "-t", "nat"])
        .args(rule)
        .output()
        .map_err(|e| IptablesError::Failed(format!("cannot run iptables: {e}")))?;
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
