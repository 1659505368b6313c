//! The demo's workloads and their sidecars: who calls whom, each sidecar's typed
//! configuration, started in-process with its listeners on port 0, callees first.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_ca::tokens::TokenStore;
use airlock_config::routes::{ServicePort, ServiceProtocol};
use airlock_config::{
    AccessLogConfig, AdminConfig, Config, FileSinkConfig, IdentityConfig, InboundConfig,
    InboundPort, Limits, OutboundConfig, PolicyConfig, PortProtocol, Service, Services, SinkKind,
    Upstream,
};
use airlock_identity::{SpiffeId, TrustDomain};
use airlock_policy::DefaultMode;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::watch;

use crate::Failure;
use airlock_testkit::http_app;

/// The mesh's trust domain.
pub(super) const TRUST_DOMAIN: &str = "demo.airlock";
/// The port every workload's app serves (as in the example policies).
pub(super) const APP_PORT: u16 = 8080;
/// The workload whose SVID lives so briefly that the demo can show it renewed.
pub(super) const ROTATING: &str = "payments";
/// Its SVID lifetime: renewed at 40–60 % of it, so within the demo's first quarter minute.
pub(super) const ROTATING_TTL: Duration = Duration::from_secs(20);

struct Workload {
    name: &'static str,
    namespace: &'static str,
    /// Its own loopback address, so addresses in the access log tell workloads apart.
    ip: &'static str,
    /// Whether it runs an app that others call.
    serves: bool,
    /// The services it has upstream listeners for.
    calls: &'static [&'static str],
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "frontend",
        namespace: "shop",
        ip: "127.0.0.11",
        serves: true,
        calls: &["checkout", "payments"],
    },
    Workload {
        name: "checkout",
        namespace: "shop",
        ip: "127.0.0.12",
        serves: true,
        calls: &["payments"],
    },
    Workload {
        name: "payments",
        namespace: "pay",
        ip: "127.0.0.13",
        serves: true,
        calls: &[],
    },
    Workload {
        name: "reconcile",
        namespace: "finance",
        ip: "127.0.0.14",
        serves: false,
        calls: &["payments"],
    },
    Workload {
        name: "intruder",
        namespace: "sandbox",
        ip: "127.0.0.15",
        serves: false,
        calls: &["checkout", "payments"],
    },
];

/// Everything the demo started, for the table, the hints and the shutdown.
pub(super) struct Mesh {
    pub(super) ca_url: String,
    /// (caller, callee) → the caller's upstream listener.
    pub(super) upstreams: Vec<(&'static str, &'static str, SocketAddr)>,
    pub(super) health: Vec<(&'static str, SocketAddr)>,
    /// Each sidecar's loopback admin API (`airlock proxy status --admin`).
    pub(super) admin: Vec<(&'static str, SocketAddr)>,
    pub(super) access_logs: Vec<(&'static str, PathBuf)>,
}

impl Mesh {
    pub(super) fn upstream(&self, from: &str, to: &str) -> SocketAddr {
        self.upstreams
            .iter()
            .find(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, addr)| *addr)
            .expect("every scripted call has an upstream")
    }

    pub(super) fn admin(&self, name: &str) -> SocketAddr {
        self.admin
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, addr)| *addr)
            .expect("every workload has an admin listener")
    }

    pub(super) fn access_log(&self, name: &str) -> &Path {
        self.access_logs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.as_path())
            .expect("every workload has an access log")
    }
}

pub(super) type SidecarTask = tokio::task::JoinHandle<Result<(), airlock_proxy::StartError>>;

/// The workloads, each after the services it calls: a caller's registry then names the
/// addresses its callees' sidecars actually bound.
fn callees_first() -> Vec<&'static Workload> {
    let mut ordered: Vec<&'static Workload> = Vec::new();
    while ordered.len() < WORKLOADS.len() {
        let next = WORKLOADS
            .iter()
            .filter(|w| !ordered.iter().any(|o| o.name == w.name))
            .find(|w| {
                w.calls
                    .iter()
                    .all(|callee| ordered.iter().any(|o| o.name == *callee))
            })
            .expect("the demo's calls form no cycle");
        ordered.push(next);
    }
    ordered
}

/// Writes each workload's config and token, starts its app and its sidecar (listeners on
/// port 0), and waits for each sidecar's bound addresses before starting its callers.
pub(super) async fn start_sidecars(
    temp: &Path,
    ca_dir: &Path,
    policy_dir: &Path,
    trust_domain: &TrustDomain,
    ca_url: String,
    stopped: &watch::Receiver<bool>,
) -> Result<(Mesh, Vec<SidecarTask>), Failure> {
    let id = |w: &Workload| {
        SpiffeId::for_service_account(trust_domain, w.namespace, w.name).expect("valid literal")
    };
    let any_port = |ip: &str| SocketAddr::new(ip.parse().expect("literal address"), 0);
    let mut registry = Services::new();
    let tokens = TokenStore::new(ca_dir);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut mesh = Mesh {
        ca_url: ca_url.clone(),
        upstreams: Vec::new(),
        health: Vec::new(),
        admin: Vec::new(),
        access_logs: Vec::new(),
    };
    let mut tasks = Vec::new();
    for workload in callees_first() {
        let token = tokens
            .create(&id(workload), Duration::from_secs(600), 1, now)
            .map_err(Failure::failed)?
            .token;
        let token_file = temp.join(format!("{}.token", workload.name));
        std::fs::write(&token_file, token).map_err(Failure::failed)?;
        let ports = if workload.serves {
            let (app, _) = http_app::spawn(workload.name);
            vec![InboundPort {
                app: Some(app),
                ..InboundPort::new(APP_PORT, PortProtocol::Http)
            }]
        } else {
            Vec::new()
        };
        let upstreams = workload
            .calls
            .iter()
            .map(|callee| Upstream {
                listen: any_port("127.0.0.1"),
                service: (*callee).to_owned(),
                port: APP_PORT,
            })
            .collect();
        let access_log = temp.join(format!("{}.access.log", workload.name));
        let config = Config {
            inbound: InboundConfig {
                listen: any_port(workload.ip),
                ports,
                ..InboundConfig::default()
            },
            outbound: OutboundConfig {
                upstreams,
                ..OutboundConfig::default()
            },
            registry: registry.clone(),
            policy: PolicyConfig {
                paths: vec![policy_dir.to_owned()],
                default: DefaultMode::Deny,
                ..PolicyConfig::default()
            },
            admin: AdminConfig {
                listen: any_port(workload.ip),
                health_listen: any_port(workload.ip),
                ..AdminConfig::default()
            },
            limits: Limits {
                drain_timeout: Duration::from_secs(2),
                ..Limits::default()
            },
            access_log: AccessLogConfig {
                sink: SinkKind::File,
                file: Some(FileSinkConfig::new(&access_log)),
                ..AccessLogConfig::default()
            },
            ..Config::new(IdentityConfig {
                // The demo revokes an identity live: each sidecar hears of it within a second.
                bundle_refresh: Duration::from_secs(1),
                svid_ttl: (workload.name == ROTATING).then_some(ROTATING_TTL),
                ..IdentityConfig::new(
                    trust_domain.clone(),
                    &ca_url,
                    ca_dir.join("bundle.pem"),
                    &token_file,
                )
            })
        };
        let config_file = temp.join(format!("{}.yaml", workload.name));
        std::fs::write(&config_file, config.to_yaml()).map_err(Failure::failed)?;
        let config = Config::load(&config_file).map_err(Failure::failed)?;
        let mut stop = stopped.clone();
        let (listening, bound) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(airlock_proxy::run(
            config,
            None,
            move |bound: &airlock_proxy::Bound| {
                let _ = listening.send(bound.clone());
            },
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
        let Ok(bound) = bound.await else {
            // The sidecar ended before it listened: its error says why.
            let ended = task.await.map_err(Failure::failed)?;
            return Err(Failure::failed(format!(
                "the {} sidecar did not start: {}",
                workload.name,
                ended.err().map_or_else(String::new, |e| e.to_string())
            )));
        };
        tasks.push(task);
        if workload.serves {
            // The app port is HTTP: callers route each request on its own.
            let service = Service {
                ports: vec![ServicePort::new(APP_PORT, ServiceProtocol::Http)],
                ..Service::new(id(workload), vec![bound.inbound])
            };
            registry.insert(workload.name.to_owned(), service);
        }
        for (callee, _, listen) in &bound.upstreams {
            let callee = WORKLOADS
                .iter()
                .find(|w| w.name == callee)
                .expect("an upstream names a workload")
                .name;
            mesh.upstreams.push((workload.name, callee, *listen));
        }
        mesh.health.push((workload.name, bound.health));
        mesh.admin.push((workload.name, bound.admin));
        mesh.access_logs.push((workload.name, access_log));
    }
    Ok((mesh, tasks))
}

pub(super) async fn wait_ready(
    client: &Client<HttpConnector, Empty<Bytes>>,
    mesh: &Mesh,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, health) in &mesh.health {
        loop {
            let uri = format!("http://{health}/ready").parse().expect("valid URI");
            if let Ok(response) = client.get(uri).await
                && response.status() == 200
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the {name} sidecar never became ready"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
