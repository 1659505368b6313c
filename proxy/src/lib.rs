//! The airlock sidecar (`airlock proxy --config FILE`).
//!
//! Other crates use [`run`], [`config`], [`capture`] (for `airlock init-capture`),
//! [`detect`] and [`request_shape`] (both fuzzed); the rest is private. Flat modules, one
//! job each:
//! - [`config`]: the YAML file, validated before anything starts;
//! - `start`: binding every listener by its role, the addresses bound ([`Bound`]) and
//!   [`StartError`];
//! - `log_control`: the binary's handle on the log filter (`/logging`);
//! - `lifecycle`: SVID from the CA, renewal, bundle refresh, fail-closed on expiry;
//! - `pool`: pooled mTLS HTTP/2 connections to other sidecars, CONNECT streams on them;
//! - `outbound`: application connections (explicit or transparent) → CONNECT streams,
//!   or, on HTTP service ports, to `route`;
//! - `route`: caller-side HTTP: each request balanced (P2C, peak EWMA), timed and retried
//!   as a tower stack, sent as its own HTTP/2 request on the pool;
//! - `mesh_request`, `mesh_body`: the routed request's sidecar-only metadata, and the
//!   request bodies the pool sends;
//! - `inbound`: the mesh transport listener, streams to their ports, relay to the app;
//! - `authorize`: the one authorization path of tunnels and requests, and its re-checks;
//! - [`detect`]: HTTP or not, from a client's first bytes (`auto` ports);
//! - `l7`: HTTP/1.1 and HTTP/2 on inbound streams, authorized request by request;
//! - `access_log`: one masked JSON line per request and tunnel, to stdout or a rotated file;
//! - `tap`: the same records, live, to the operators streaming `GET /tap` (bounded, lossy);
//! - `tunnels`: live inbound tunnels, re-checked when policy or time changes;
//! - `relay`: bidirectional copy with idle timeout and cancellation;
//! - `reload`: the one polling loop of hot reloads (policy files, registry file);
//! - `discovery`: the subscription to `airlock control` (services, endpoints, policies),
//!   its cache file, and readiness until a first view;
//! - `listener`: every listener's accept loop, `airlock-listen`'s (connection cap,
//!   backoff, stop) fed the stop flag and counting refusals beyond the cap;
//! - [`capture`]: the iptables rules of transparent capture (`airlock init-capture`);
//! - `admin`, `metrics`: health, admin API, Prometheus metrics;
//! - `inspect`: what `/status` and `/policy/eval` answer about the live sidecar.

mod access_log;
mod admin;
mod authorize;
pub mod capture;
/// The configuration schema, shared with the injector and the demo.
pub use airlock_config as config;
pub mod detect;
mod discovery;
mod inbound;
mod inspect;
mod l7;
mod lifecycle;
mod listener;
mod log_control;
mod mesh_body;
mod mesh_request;
mod metrics;
mod outbound;
mod pool;
mod relay;
mod reload;
pub mod request_shape;
mod route;
mod start;
mod tap;
mod tls_failure;
mod tunnels;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use airlock_ca::client::CaClient;
use airlock_identity::{BundleStore, SvidStore, TrustBundle, tls};
use airlock_policy::PolicySet;
use airlock_policy::store::{PolicyStore, Reloaded};
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
pub use crate::access_log::AccessLogError;
use crate::config::{Config, PortProtocol, Services};
use crate::l7::HttpPort;
use crate::lifecycle::{Identity, unix_now};
pub use crate::log_control::{LogControl, LogLevelError, SetLogLevel};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::reload::Attempt;
pub use crate::start::{Bound, ListenerRole, StartError};
use crate::start::{bind, bound_addresses};
use crate::tunnels::Tunnels;

/// The largest HTTP/2 frame either side of the mesh transport accepts. Bigger than the
/// 16 KiB default, so bulk tunnels move in fewer frames (TLS still cuts 16 KiB records).
pub(crate) const MESH_MAX_FRAME_SIZE: u32 = 64 * 1024;

/// State every task of the sidecar shares.
pub(crate) struct Shared {
    /// The validated configuration the sidecar started with; it never changes while it
    /// runs (only policies and the registry reload).
    pub config: Arc<Config>,
    /// This workload's SVID and the trust bundle, both kept fresh by `lifecycle`.
    pub identity: Arc<Identity>,
    /// Pooled mTLS connections to other sidecars, for outbound CONNECT streams.
    pub pool: Pool,
    /// Live inbound tunnels, re-checked on policy changes; drain waits for them.
    pub tunnels: Arc<Tunnels>,
    /// The sidecar's counters and gauges.
    pub metrics: Arc<Metrics>,
    /// The Prometheus registry holding [`Shared::metrics`], encoded by `GET /metrics`.
    pub registry: Registry,
    /// Where request and tunnel records go (or nowhere, when the access log is off).
    pub access_log: AccessLog,
    /// The live taps (`GET /tap`), which see every record the access log would write.
    pub tap: tap::Tap,
    /// What `/status` reports that nothing else keeps (listeners, last refused reload,
    /// registry age, recent denials).
    pub inspect: inspect::Inspect,
    /// The live registry: the config file's services and `registry_file`'s (the static
    /// half), and the controller's.
    services: ArcSwap<Services>,
    /// The two halves `services` is made of, changed only under this lock.
    registry_halves: std::sync::Mutex<RegistryHalves>,
    /// What the sidecar holds of the controller's view (unused without `discovery`).
    pub discovery: Arc<discovery::Discovery>,
    /// Per destination service port: the balancer and retry budget of routed requests
    /// (and of tunnels' endpoint choice), following the registry.
    pub routes: route::Routes,
    /// The HTTP (and `auto`) ports, by port number.
    pub http_ports: HashMap<u16, Arc<HttpPort>>,
    /// Turns true when draining starts: listeners stop accepting, HTTP connections close
    /// once their requests are done.
    stop: watch::Sender<bool>,
    policy: PolicyStore,
    draining: AtomicBool,
    shutdown: Notify,
    log: Option<LogControl>,
}

/// The static and the controller's registry entries.
#[derive(Default)]
struct RegistryHalves {
    from_files: Arc<Services>,
    discovered: Arc<Services>,
}

impl Shared {
    /// Replaces the static half of the registry (config file and `registry_file`).
    pub(crate) fn set_static(&self, services: Services) {
        let mut halves = self.registry_halves();
        halves.from_files = Arc::new(services);
        self.merge(&halves);
    }

    /// Replaces the controller's half of the registry.
    pub(crate) fn set_discovered(&self, services: Services) {
        let mut halves = self.registry_halves();
        halves.discovered = Arc::new(services);
        self.merge(&halves);
    }

    fn registry_halves(&self) -> std::sync::MutexGuard<'_, RegistryHalves> {
        self.registry_halves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes both halves live. A name in both keeps the static entry: what the operator
    /// wrote beside the sidecar wins over what a controller announces.
    fn merge(&self, halves: &RegistryHalves) {
        let mut services = (*halves.from_files).clone();
        for (name, service) in halves.discovered.iter() {
            if services.contains_key(name) {
                tracing::warn!(service = %name, "the controller announces a service the static registry also names; the static entry applies");
                continue;
            }
            services.insert(name.clone(), service.clone());
        }
        let services = Arc::new(services);
        self.services.store(services.clone());
        self.routes.update(&services);
        self.inspect.registry_loaded();
    }

    /// The live registry.
    pub(crate) fn services(&self) -> Arc<Services> {
        self.services.load_full()
    }

    /// True when request and tunnel records are wanted: the access log writes them or a
    /// tap streams (two relaxed loads). Without either, none is built or masked.
    pub(crate) fn recording(&self) -> bool {
        self.access_log.enabled() || self.tap.active()
    }

    /// Hands a finished record to the access log and to the taps.
    pub(crate) fn record(&self, record: &access_log::Record) {
        self.access_log.write(record);
        self.tap.publish(tap::Event::End, record);
    }

    /// The live policy set.
    pub(crate) fn policies(&self) -> Arc<PolicySet> {
        self.policy.current()
    }

    /// Changes whenever a policy reload swapped the set.
    pub(crate) fn policy_changes(&self) -> watch::Receiver<u64> {
        self.policy.subscribe()
    }

    /// Ready: holding a valid SVID, not draining, and (with a controller) holding a view.
    pub(crate) fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
            && self.identity.valid_svid(unix_now()).is_some()
            && (self.config.discovery.is_none() || self.discovery.is_synced())
    }

    /// True once draining started (`POST /drain`, `POST /shutdown` or the shutdown
    /// future): new inbound tunnels and HTTP requests get 503. It never turns false again.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining (`POST /drain`): `/ready` turns false and new inbound tunnels and
    /// HTTP requests are refused, while the listeners keep running and live tunnels go on.
    pub(crate) fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Follows the stop flag (true once draining started).
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Starts draining and makes [`run`] finish as if its shutdown future had completed
    /// (`POST /shutdown`).
    pub(crate) fn request_shutdown(&self) {
        self.start_drain();
        self.shutdown.notify_one();
    }

    /// The log filter in effect (`GET /logging`); `unknown` without a [`LogControl`].
    pub(crate) fn log_level(&self) -> String {
        self.log
            .as_ref()
            .map_or_else(|| "unknown".into(), |l| (l.get)())
    }

    /// Switches the log filter (`POST /logging`).
    ///
    /// # Errors
    /// [`LogLevelError::Unavailable`] without a [`LogControl`], otherwise whatever its
    /// `set` answers.
    pub(crate) fn set_log_level(&self, level: &str) -> Result<(), LogLevelError> {
        match &self.log {
            Some(control) => (control.set)(level),
            None => Err(LogLevelError::Unavailable),
        }
    }
}

/// Completes once the stop flag is set.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the sidecar until `shutdown` completes (or `POST /shutdown`), then drains.
/// `on_listening` is called once every listener is bound, with their addresses.
pub async fn run(
    config: Config,
    log: Option<LogControl>,
    on_listening: impl FnOnce(&Bound),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let config = Arc::new(config);
    let trust_domain = config.identity.trust_domain.clone();
    let bundle = TrustBundle::load(trust_domain.clone(), &config.identity.ca_bundle)
        .map_err(StartError::CaBundle)?;
    let identity = Arc::new(Identity::new(
        SvidStore::new(tls::provider()),
        BundleStore::new(bundle),
    ));
    let client = CaClient::new(
        &config.identity.ca_url,
        identity.bundle.clone(),
        identity.store.clone(),
    )
    .map_err(StartError::CaUrl)?;
    let policy = PolicyStore::open(config.policy.paths.clone()).map_err(StartError::Policy)?;

    // Bind everything first: the ports exist at once, /ready says false until an SVID arrives.
    let inbound = bind(ListenerRole::InboundMesh, config.inbound.listen).await?;
    let plaintext = match config.inbound.permissive_listen {
        Some(addr) => Some(bind(ListenerRole::InboundPermissive, addr).await?),
        None => None,
    };
    let admin = bind(ListenerRole::Admin, config.admin.listen).await?;
    let health = bind(ListenerRole::Health, config.admin.health_listen).await?;
    let mut upstreams = Vec::new();
    for upstream in &config.outbound.upstreams {
        let role = ListenerRole::Upstream(upstream.service.clone());
        let listener = bind(role, upstream.listen).await?;
        upstreams.push((
            listener,
            outbound::Route::Service {
                name: upstream.service.clone(),
                port: upstream.port,
            },
        ));
    }
    if let Some(addr) = config.outbound.transparent {
        upstreams.push((
            bind(ListenerRole::TransparentOutbound, addr).await?,
            outbound::Route::OriginalDestination,
        ));
    }
    let bound = bound_addresses(&inbound, plaintext.as_ref(), &admin, &health, &upstreams)?;

    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let routes = route::Routes::new(&config.outbound.http);
    routes.metrics.register(&mut registry);
    let tap = tap::Tap::default();
    tap.register(&mut registry);
    let discovery = Arc::new(discovery::Discovery::default());
    if config.discovery.is_some() {
        registry.register_collector(Box::new(discovery.clone()));
    }
    let access_log = AccessLog::start(&config.access_log, metrics.access_log_dropped.clone())?;
    let limits = &config.limits;
    let http_ports = config
        .inbound
        .ports
        .iter()
        .filter(|p| p.protocol != PortProtocol::Tcp)
        .map(|p| (p.port, Arc::new(HttpPort::new(p, limits.connect_timeout))))
        .collect();
    let services = config.load_registry().map_err(StartError::Registry)?;
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        pool: Pool::new(
            identity.clone(),
            limits.pool_connections_per_endpoint,
            limits.pool_streams_per_connection,
            limits.connect_timeout,
            metrics.clone(),
        ),
        identity: identity.clone(),
        tunnels: Arc::new(Tunnels::default()),
        metrics: metrics.clone(),
        registry,
        access_log,
        tap,
        inspect: inspect::Inspect::new(),
        services: ArcSwap::from_pointee(services.clone()),
        registry_halves: std::sync::Mutex::new(RegistryHalves {
            from_files: Arc::new(services),
            discovered: Arc::default(),
        }),
        discovery: discovery.clone(),
        routes,
        http_ports,
        stop,
        policy,
        draining: AtomicBool::new(false),
        shutdown: Notify::new(),
        log,
        config: config.clone(),
    });

    let upkeep = airlock_ca::workload::Upkeep {
        token_file: config.identity.token_file.clone(),
        ttl: config.identity.svid_ttl,
        trust_domain,
        bundle_refresh: config.identity.bundle_refresh,
    };
    let mut background: Vec<_> =
        airlock_ca::workload::spawn_upkeep(&identity, client, upkeep, &metrics.workload).into();
    background.extend([
        tokio::spawn(reload_policies(shared.clone())),
        tokio::spawn(reload_registry(shared.clone())),
        tokio::spawn(authorize::watch_policy(shared.clone())),
    ]);
    if let Some(discovery) = config.discovery.clone() {
        // The cache first, so that the listeners start on the mesh this sidecar knew.
        if let Some(cache_file) = &discovery.cache_file {
            discovery::restore(&shared, cache_file);
        }
        background.push(tokio::spawn(discovery::follow(shared.clone(), discovery)));
    }

    let server_tls = tls::server_config(
        identity.store.clone(),
        identity.bundle.clone(),
        true,
        &[b"h2"],
    );
    let mut listeners = vec![
        tokio::spawn(inbound::serve(
            shared.clone(),
            inbound,
            TlsAcceptor::from(Arc::new(server_tls)),
            stopped.clone(),
        )),
        tokio::spawn(admin::serve(
            shared.clone(),
            admin,
            admin::Surface::Admin,
            stopped.clone(),
        )),
    ];
    if let Some(listener) = plaintext {
        listeners.push(tokio::spawn(inbound::serve_plaintext(
            shared.clone(),
            listener,
            stopped.clone(),
        )));
    }
    for (listener, route) in upstreams {
        listeners.push(tokio::spawn(outbound::serve(
            shared.clone(),
            listener,
            route,
            stopped.clone(),
        )));
    }
    // Health stays up while draining, so /ready can say "no": its stop flag is never set.
    let (_health_stop, health_stopped) = watch::channel(false);
    background.push(tokio::spawn(admin::serve(
        shared.clone(),
        health,
        admin::Surface::Health,
        health_stopped,
    )));

    tracing::info!(listeners = %bound, "airlock proxy listening");
    if let Some(file) = config.registry_file.as_deref().filter(|f| !f.exists()) {
        tracing::warn!(
            registry_file = %file.display(),
            services = shared.services().len(),
            "registry_file is missing; only the services of the config file are known"
        );
    }
    shared.inspect.listening(&bound);
    on_listening(&bound);

    tokio::select! {
        () = shutdown => {}
        () = shared.shutdown.notified() => {}
    }
    drain(&shared).await;
    for task in listeners.into_iter().chain(background) {
        task.abort();
    }
    Ok(())
}

/// Stops accepting, then waits for live inbound tunnels up to the drain deadline.
async fn drain(shared: &Shared) {
    shared.start_drain();
    let _ = shared.stop.send(true);
    let mut live = shared.tunnels.watch_count();
    let deadline = shared.config.limits.drain_timeout;
    tracing::info!(
        live_tunnels = *live.borrow(),
        deadline_s = deadline.as_secs(),
        "draining"
    );
    let finished = tokio::time::timeout(deadline, live.wait_for(|count| *count == 0))
        .await
        .is_ok();
    if !finished {
        tracing::warn!(
            live_tunnels = *live.borrow(),
            "drain deadline reached; closing the rest"
        );
    }
}

/// Follows `registry_file` ([`reload`]). Only a missing file means "no services from
/// the file"; a file that cannot be read (permissions, not UTF-8) is a refused reload,
/// not an empty registry.
async fn reload_registry(shared: Arc<Shared>) {
    let Some(file) = shared.config.registry_file.clone() else {
        return;
    };
    let read = move || match std::fs::read_to_string(&file) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", file.display())),
    };
    let mut seen = read().ok().flatten();
    let counters = reload::Counters {
        swaps: shared.metrics.registry_reloads.clone(),
        refusals: shared.metrics.registry_reload_errors.clone(),
    };
    let interval = shared.config.policy.reload_interval;
    reload::poll("registry", interval, counters, move || {
        let text = match read() {
            Ok(text) if text == seen => return Attempt::Unchanged,
            Ok(text) => text,
            Err(message) => return Attempt::Refused(message),
        };
        match shared.config.registry_with(text.as_deref()) {
            Ok(services) => {
                let size = format!("{} services", services.len());
                shared.set_static(services);
                seen = text;
                Attempt::Swapped(size)
            }
            Err(message) => Attempt::Refused(message),
        }
    })
    .await;
}

/// Follows the policy files ([`reload`]).
async fn reload_policies(shared: Arc<Shared>) {
    let counters = reload::Counters {
        swaps: shared.metrics.policy_reloads.clone(),
        refusals: shared.metrics.policy_reload_errors.clone(),
    };
    let interval = shared.config.policy.reload_interval;
    reload::poll("policy", interval, counters, move || {
        let attempt = match shared.policy.reload() {
            Ok(Reloaded::Swapped) => {
                Attempt::Swapped(format!("{} policies", shared.policies().len()))
            }
            Ok(Reloaded::Unchanged) => Attempt::Unchanged,
            Err(errors) => Attempt::Refused(airlock_policy::load::joined(&errors)),
        };
        let refused = match &attempt {
            Attempt::Refused(message) => Some(message.as_str()),
            _ => None,
        };
        shared.inspect.policy_reload(refused);
        attempt
    })
    .await;
}
