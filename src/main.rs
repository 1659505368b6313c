//! `airlock`: one binary for the workload CA, the sidecar and the policy tools.
//!
//! Exit status: 0 success, 1 failure, 2 usage error (bad flags, bad config).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod admin_client;
mod ca_cmd;
mod capture_cmd;
mod control_cmd;
mod demo;
mod inject_cmd;
mod logging;
mod policy_cmd;
mod proxy_cmd;
mod status_cmd;
mod tap_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "Zero-trust service mesh: SPIFFE workload CA and mTLS sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The workload certificate authority.
    Ca {
        #[command(subcommand)]
        command: ca_cmd::CaCommand,
    },
    /// Run the sidecar.
    Proxy(proxy_cmd::ProxyArgs),
    /// Run the controller: push services, endpoints and policies to subscribed sidecars.
    Control(control_cmd::ControlArgs),
    /// Validate, evaluate and test authorization policies.
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
    },
    /// Install (or remove) the iptables rules that route a pod's traffic through its sidecar.
    InitCapture(capture_cmd::CaptureArgs),
    /// Add the sidecar to the workloads of Kubernetes YAML (written to standard output).
    Inject(inject_cmd::InjectArgs),
    /// Serve the mutating admission webhook that injects the sidecar into new pods.
    Injector(inject_cmd::InjectorArgs),
    /// Write the sidecars' registry from `kubectl get services,pods -A -o json`.
    Registry(inject_cmd::RegistryArgs),
    /// Stream a running sidecar's decisions and requests live, from its admin API.
    Tap(tap_cmd::TapArgs),
    /// Run a whole mesh on loopback: a CA, five workloads with sidecars, the example policies.
    Demo {
        /// Print the results once and exit (status 0 only if every call went as expected).
        #[arg(long)]
        once: bool,
    },
}

/// A failure that ends the command: its message and exit status.
#[derive(Debug)]
pub struct Failure {
    /// One sentence for stderr, naming the file, field or flag at fault.
    pub message: String,
    /// The exit status: 1 when the job failed, 2 for invalid input.
    pub status: u8,
}

impl Failure {
    /// Something went wrong while doing the job (status 1).
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            status: 1,
        }
    }

    /// The operator asked for something invalid (status 2).
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            status: 2,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ca { command } => ca_cmd::run(command),
        Command::Proxy(args) => proxy_cmd::run(args),
        Command::Control(args) => control_cmd::run(args),
        Command::Policy { command } => policy_cmd::run(command),
        Command::InitCapture(args) => capture_cmd::run(args),
        Command::Inject(args) => inject_cmd::inject(args),
        Command::Injector(args) => inject_cmd::injector(args),
        Command::Registry(args) => inject_cmd::registry(args),
        Command::Tap(args) => tap_cmd::run(args),
        Command::Demo { once } => demo::run(once),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("airlock: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}
