//! `airlock control`: the stateless controller. It reads the mesh from one source (the
//! Kubernetes API through kube-rs, or a watched directory), builds the
//! mesh view ([`view`]), and pushes every subscribed sidecar its cut of it over gRPC on
//! mTLS ([`serve`]), with its own SVID from the airlock CA. It keeps no state of its own:
//! several replicas reading the same source serve the same versions.
//!
//! Flat modules, one job each:
//! - [`view`]: the mesh view, its per-subscriber cut and the difference between two cuts
//!   (pure, table-tested);
//! - [`dir`]: the directory source (`registry.yaml` and policy files), each file's last
//!   valid content kept;
//! - [`kube_model`]: Services, EndpointSlices, Pods and AuthorizationPolicy objects to
//!   the mesh view (pure, table-tested on objects as kubectl prints them);
//! - [`kube_slim`]: what the reflector stores keep of each object;
//! - `kube_source`: the watchers and reflectors feeding it, and the policies' status;
//! - `serve`: the gRPC `Discovery` service, the subscriber named by its certificate;
//! - `health`: `/live`, `/ready`, `/metrics`;
//! - `metrics`: what the controller counts.

pub mod dir;
mod health;
pub mod kube_model;
pub mod kube_slim;
mod kube_source;
mod kube_status;
mod metrics;
mod publish;
mod serve;
pub mod view;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_ca::client::CaClient;
use airlock_ca::workload::{Identity, Upkeep};
use airlock_identity::{BundleStore, SvidStore, TrustBundle, TrustDomain, tls};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use serve::Limits;

use crate::dir::DirSource;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::view::MeshView;

/// Where the controller reads the mesh from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The Kubernetes API (`--source kubernetes`), through the in-cluster service
    /// account or `KUBECONFIG`.
    Kubernetes,
    /// A directory of the files airlock reads today (`--source dir:PATH`).
    Dir(PathBuf),
}

impl std::str::FromStr for Source {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "kubernetes" => Ok(Self::Kubernetes),
            Some(("dir", path)) if !path.is_empty() => Ok(Self::Dir(PathBuf::from(path))),
            _ => Err(format!(
                "{text:?} is not a source; use kubernetes or dir:PATH"
            )),
        }
    }
}

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the mesh comes from.
    pub source: Source,
    /// The gRPC (mTLS) listener.
    pub listen: SocketAddr,
    /// `/live`, `/ready`, `/metrics` (plaintext).
    pub health_listen: SocketAddr,
    /// The mesh's trust domain (the controller's SVID and every registry identity).
    pub trust_domain: TrustDomain,
    /// The CA's URL (`https://host:port`).
    pub ca_url: String,
    /// The roots the CA's certificate must chain to.
    pub ca_bundle: PathBuf,
    /// A join token or service-account JWT for the first SVID.
    pub token_file: PathBuf,
    /// How often the directory source looks for changes.
    pub poll_interval: Duration,
    /// How often the trust bundle and its deny list are fetched from the CA; a
    /// subscriber whose SVID lands on the deny list is disconnected then.
    pub bundle_refresh: Duration,
    /// Connection limits of the gRPC listener.
    pub limits: Limits,
}

/// The addresses the controller bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The gRPC listener.
    pub grpc: SocketAddr,
    /// The health listener.
    pub health: SocketAddr,
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grpc {} health {}", self.grpc, self.health)
    }
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--ca-bundle` could not be read.
    #[error("--ca-bundle: {0}")]
    CaBundle(String),
    /// `--ca-url` is not a URL the client can use.
    #[error("--ca-url: {0}")]
    CaUrl(String),
    /// No Kubernetes client could be made (no in-cluster account, no usable KUBECONFIG).
    #[error("--source kubernetes: {0}")]
    Kubernetes(String),
    /// A listener could not be bound.
    #[error("{flag} {addr}: {source}")]
    Bind {
        /// The flag that named the address.
        flag: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Runs the controller until `shutdown` completes. `on_listening` is called once both
/// listeners are bound.
pub async fn run(
    options: Options,
    on_listening: impl FnOnce(&Bound),
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let bundle = TrustBundle::load(options.trust_domain.clone(), &options.ca_bundle)
        .map_err(|e| StartError::CaBundle(e.to_string()))?;
    let identity = Arc::new(Identity::new(
        SvidStore::new(tls::provider()),
        BundleStore::new(bundle),
    ));
    let client = CaClient::new(
        &options.ca_url,
        identity.bundle.clone(),
        identity.store.clone(),
    )
    .map_err(|e| StartError::CaUrl(e.to_string()))?;
    let bind = |flag, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { flag, addr, source })
    };
    let grpc = bind("--listen", options.listen).await?;
    let health_listener = bind("--health-listen", options.health_listen).await?;
    let bound = Bound {
        grpc: grpc.local_addr().expect("a bound socket has an address"),
        health: health_listener
            .local_addr()
            .expect("a bound socket has an address"),
    };

    let metrics = Arc::new(Metrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let upkeep = Upkeep {
        token_file: options.token_file.clone(),
        ttl: None,
        trust_domain: options.trust_domain.clone(),
        bundle_refresh: options.bundle_refresh,
    };
    let mut tasks: Vec<_> =
        airlock_ca::workload::spawn_upkeep(&identity, client, upkeep, &metrics.workload).into();
    let health = Arc::new(Health {
        identity: identity.clone(),
        registry,
        has_view: false.into(),
    });
    let (views, views_rx) = watch::channel(Arc::new(MeshView::default()));
    let (stop, stopped) = watch::channel(false);
    let publisher = Publisher::new(views, health.clone(), metrics.clone());
    match options.source {
        Source::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| StartError::Kubernetes(e.to_string()))?;
            tasks.push(tokio::spawn(kube_source::follow(
                client,
                options.trust_domain.clone(),
                airlock_config::ports::MESH,
                publisher,
            )));
        }
        Source::Dir(root) => tasks.push(tokio::spawn(follow_dir(
            DirSource::new(root, options.trust_domain.clone()),
            options.poll_interval,
            publisher,
        ))),
    }
    let service = serve::DiscoveryService {
        views: views_rx,
        metrics: metrics.clone(),
    };
    tasks.push(tokio::spawn(serve::serve(
        grpc,
        identity,
        service,
        options.limits,
        stopped.clone(),
    )));
    tasks.push(tokio::spawn(health::serve(
        health_listener,
        health,
        stopped,
    )));
    tracing::info!(listeners = %bound, "airlock control listening");
    on_listening(&bound);
    shutdown.await;
    let _ = stop.send(true);
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// Looks at the directory every `interval` and publishes each new view.
async fn follow_dir(mut source: DirSource, interval: Duration, mut publisher: Publisher) {
    loop {
        let (returned, look) = tokio::task::spawn_blocking(move || {
            let look = source.look();
            (source, look)
        })
        .await
        .expect("the directory reader does not panic");
        source = returned;
        if let Some(look) = look {
            publisher.report(look.problems);
            if let Some(view) = look.view {
                publisher.publish(view);
            }
        }
        tokio::time::sleep(interval).await;
    }
}
