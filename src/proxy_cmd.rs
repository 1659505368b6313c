//! `airlock proxy --config FILE`: the sidecar; `airlock proxy status` asks a running one.

use std::path::PathBuf;

use airlock_proxy::config::Config;
use airlock_proxy::{LogControl, LogLevelError};
use clap::{Args, Subcommand};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::Failure;

#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Examples:\n  airlock proxy --config sidecar.yaml\n  airlock proxy status --admin 127.0.0.1:15000"
)]
pub(crate) struct ProxyArgs {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    /// The sidecar's YAML configuration (docs/proxy.md).
    #[arg(long, required = true)]
    config: Option<PathBuf>,
    /// Refuse to start unless the configuration file has this SHA-256 (hex). The
    /// injector pins the configuration it wrote into the pod annotation this way.
    #[arg(long, value_name = "HEX")]
    config_sha256: Option<String>,
}

/// Questions to a running sidecar.
#[derive(Debug, Subcommand)]
enum ProxyCommand {
    /// Show a running sidecar's identity, trust, policy version, registry, listeners,
    /// live connections and recent denials (from its admin API).
    Status(crate::status_cmd::StatusArgs),
}

pub(crate) fn run(args: ProxyArgs) -> Result<(), Failure> {
    let config_path = match (args.command, args.config) {
        (Some(ProxyCommand::Status(status)), _) => return crate::status_cmd::run(status),
        (None, Some(path)) => path,
        // clap requires --config when no subcommand is given.
        (None, None) => return Err(Failure::usage("--config is required")),
    };
    let config =
        Config::load_pinned(&config_path, args.config_sha256.as_deref()).map_err(Failure::usage)?;
    let log = init_logging();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.limits.worker_threads {
        runtime.worker_threads(threads);
    }
    let runtime = runtime.enable_all().build().map_err(Failure::failed)?;
    let shutdown = {
        let _context = runtime.enter();
        crate::logging::shutdown_signal()
    };
    runtime
        .block_on(airlock_proxy::run(
            config,
            Some(log),
            // Tests and scripts read this line to know the ports are open, and where
            // (a configured port 0 is the port the system picked).
            |bound| println!("airlock proxy listening: {bound}"),
            shutdown,
        ))
        .map_err(Failure::failed)
}

/// JSON logs on stderr with a level that `/logging` can change at run time.
fn init_logging() -> LogControl {
    let initial = std::env::var("AIRLOCK_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr),
        )
        .init();
    let reader = handle.clone();
    LogControl {
        get: Box::new(move || reader.with_current(|f| f.to_string()).unwrap_or_default()),
        set: Box::new(move |level| {
            let filter = EnvFilter::try_new(level).map_err(|e| LogLevelError::Invalid {
                level: level.to_owned(),
                source: e.into(),
            })?;
            handle
                .reload(filter)
                .map_err(|e| LogLevelError::Reload(e.into()))
        }),
    }
}
