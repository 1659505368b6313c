//! `airlock control`: the controller that pushes the mesh view to subscribed sidecars.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use airlock_control::{Limits, Options, Source};
use airlock_identity::TrustDomain;
use clap::Args;

use crate::Failure;

#[derive(Debug, Args)]
#[command(
    after_help = "Example (a directory holding registry.yaml and policy files):\n  \
    airlock control --source dir:/etc/airlock/mesh --trust-domain cluster.local \\\n    \
    --ca-url https://airlock-ca:15012 --ca-bundle /etc/airlock/ca/bundle.pem \\\n    \
    --token-file /var/run/secrets/tokens/airlock-ca"
)]
pub(crate) struct ControlArgs {
    /// Where the mesh comes from: `kubernetes` (Services, EndpointSlices, Pods and
    /// AuthorizationPolicy objects, through the in-cluster account or KUBECONFIG), or
    /// `dir:PATH` (registry.yaml and policy files, watched).
    #[arg(long, value_name = "SOURCE")]
    source: Source,
    /// The gRPC listener (mTLS; sidecars subscribe here).
    #[arg(long, default_value = "0.0.0.0:15010")]
    listen: SocketAddr,
    /// The plaintext health listener: /live, /ready, /metrics.
    #[arg(long, default_value = "0.0.0.0:15011")]
    health_listen: SocketAddr,
    /// The mesh's trust domain.
    #[arg(long)]
    trust_domain: TrustDomain,
    /// The CA's URL, where the controller gets its own SVID.
    #[arg(long)]
    ca_url: String,
    /// The roots the CA's certificate must chain to (PEM).
    #[arg(long)]
    ca_bundle: PathBuf,
    /// A join token or Kubernetes service-account JWT for the first SVID, re-read at
    /// every use.
    #[arg(long)]
    token_file: PathBuf,
    /// How often a directory source is looked at.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// How often the trust bundle and its deny list are fetched from the CA (a revoked
    /// subscriber is disconnected at the next fetch).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    bundle_refresh: Duration,
    /// Subscriber connections served at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
}

pub(crate) fn run(args: ControlArgs) -> Result<(), Failure> {
    if let Source::Dir(path) = &args.source
        && !path.is_dir()
    {
        return Err(Failure::usage(format!(
            "--source dir:{}: not a directory",
            path.display()
        )));
    }
    if args.max_connections == 0 {
        return Err(Failure::usage("--max-connections must be at least 1"));
    }
    crate::logging::init_json();
    let options = Options {
        source: args.source,
        listen: args.listen,
        health_listen: args.health_listen,
        trust_domain: args.trust_domain,
        ca_url: args.ca_url,
        ca_bundle: args.ca_bundle,
        token_file: args.token_file,
        poll_interval: args.poll_interval,
        bundle_refresh: args.bundle_refresh,
        limits: Limits {
            max_connections: args.max_connections,
            ..Limits::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Failure::failed)?;
    let shutdown = {
        let _context = runtime.enter();
        crate::logging::shutdown_signal()
    };
    runtime
        .block_on(airlock_control::run(
            options,
            // Tests and scripts read this line to learn the ports.
            |bound| println!("airlock control listening: {bound}"),
            shutdown,
        ))
        .map_err(Failure::failed)
}
