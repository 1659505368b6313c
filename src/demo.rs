//! `airlock demo`: a whole mesh on loopback, in one process. A CA in a temporary
//! directory; five workloads, each with its own sidecar on its own loopback address
//! (frontend → checkout → payments, a finance job holding a time-bound grant, and an
//! intruder that policy quarantines); the example policies from `examples/policies`.
//! Scripted calls go through the sidecars' upstream listeners; the table shows what each
//! decided and why, read back from the callee's access log.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_ca::CertificateAuthority;
use airlock_ca::keys::{KeyFileAccess, Passphrase};
use airlock_ca::server::{CaApi, serve};
use airlock_ca::tokens::TokenStore;
use airlock_config::{
    AccessLogConfig, AdminConfig, Config, FileSinkConfig, IdentityConfig, InboundConfig,
    InboundPort, Limits, OutboundConfig, PolicyConfig, PortProtocol, Service, Services, SinkKind,
    Upstream,
};
use airlock_identity::{SpiffeId, TrustDomain};
use airlock_policy::DefaultMode;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::Failure;
use airlock_testkit::http_app;

const TRUST_DOMAIN: &str = "demo.airlock";
/// The port every workload's app serves (as in the example policies).
const APP_PORT: u16 = 8080;

/// The example policies, built into the binary so the demo runs from anywhere.
const POLICIES: &[(&str, &str)] = &[
    (
        "payments.yaml",
        include_str!("../examples/policies/payments.yaml"),
    ),
    (
        "checkout.yaml",
        include_str!("../examples/policies/checkout.yaml"),
    ),
    (
        "mesh-guardrails.yaml",
        include_str!("../examples/policies/mesh-guardrails.yaml"),
    ),
];

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

/// The payments grant for `finance/reconcile` (examples/policies/payments.yaml).
const GRANT_OPENS: &str = "2026-12-01T00:00:00Z";
const GRANT_CLOSES: &str = "2027-01-15T00:00:00Z";
const GRANT_WINDOW: &str = "time-bound grant, 2026-12-01 to 2027-01-15";

struct Call {
    from: &'static str,
    to: &'static str,
    method: &'static str,
    path: &'static str,
    allowed: bool,
    /// What the call shows.
    why: &'static str,
}

fn calls(now: time::OffsetDateTime) -> Vec<Call> {
    let parse = |t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .expect("literal timestamp")
    };
    let grant_open = parse(GRANT_OPENS) <= now && now < parse(GRANT_CLOSES);
    let call = |from, to, method, path, allowed, why| Call {
        from,
        to,
        method,
        path,
        allowed,
        why,
    };
    vec![
        call("frontend", "checkout", "GET", "/cart", true, "L7 ALLOW"),
        call(
            "frontend",
            "checkout",
            "POST",
            "/checkout",
            true,
            "L7 ALLOW",
        ),
        call(
            "checkout",
            "payments",
            "POST",
            "/v1/charges",
            true,
            "L7 ALLOW",
        ),
        call(
            "checkout",
            "payments",
            "DELETE",
            "/v1/charges",
            false,
            "method not granted",
        ),
        call(
            "checkout",
            "payments",
            "POST",
            "/v1/charges/../../debug/pprof",
            false,
            "mesh-wide DENY, path normalized",
        ),
        call(
            "frontend",
            "payments",
            "GET",
            "/v1/status",
            true,
            "namespace ALLOW + dry-run DENY",
        ),
        call(
            "frontend",
            "payments",
            "POST",
            "/v1/charges",
            false,
            "only checkout may charge",
        ),
        call(
            "reconcile",
            "payments",
            "GET",
            "/v1/charges",
            grant_open,
            GRANT_WINDOW,
        ),
        call(
            "intruder",
            "payments",
            "GET",
            "/v1/status",
            false,
            "quarantined namespace",
        ),
        call(
            "intruder",
            "checkout",
            "GET",
            "/cart",
            false,
            "quarantined namespace",
        ),
    ]
}

/// What happened to one call.
struct Outcome {
    status: u16,
    reason: String,
    millis: f64,
}

/// Everything the demo started, for the table, the hints and the shutdown.
struct Mesh {
    ca_url: String,
    /// (caller, callee) → the caller's upstream listener.
    upstreams: Vec<(&'static str, &'static str, SocketAddr)>,
    health: Vec<(&'static str, SocketAddr)>,
    access_logs: Vec<(&'static str, PathBuf)>,
}

impl Mesh {
    fn upstream(&self, from: &str, to: &str) -> SocketAddr {
        self.upstreams
            .iter()
            .find(|(f, t, _)| *f == from && *t == to)
            .map(|(_, _, addr)| *addr)
            .expect("every scripted call has an upstream")
    }

    fn access_log(&self, name: &str) -> &Path {
        self.access_logs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.as_path())
            .expect("every workload has an access log")
    }
}

pub(crate) fn run(once: bool) -> Result<(), Failure> {
    let runtime = tokio::runtime::Runtime::new().map_err(Failure::failed)?;
    // Ctrl-C from here on stops the demo through the clean-up below, never half-way.
    let interrupted = {
        let _context = runtime.enter();
        crate::logging::shutdown_signal()
    };
    let temp = tempfile::tempdir().map_err(Failure::failed)?;
    let trust_domain = TrustDomain::parse(TRUST_DOMAIN).expect("valid literal");
    let ca_dir = temp.path().join("ca");
    let ca = init_ca(temp.path(), &ca_dir, &trust_domain)?;
    let policy_dir = temp.path().join("policies");
    std::fs::create_dir(&policy_dir).map_err(Failure::failed)?;
    for (name, text) in POLICIES {
        std::fs::write(policy_dir.join(name), text).map_err(Failure::failed)?;
    }

    runtime.block_on(async {
        let mut interrupted = std::pin::pin!(interrupted);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Failure::failed)?;
        let ca_url = format!(
            "https://{}",
            listener.local_addr().map_err(Failure::failed)?
        );
        let (stop_ca, ca_stopped) = tokio::sync::oneshot::channel::<()>();
        let ca_server = tokio::spawn(serve(
            CaApi::new(ca).map_err(Failure::failed)?,
            listener,
            async {
                let _ = ca_stopped.await;
            },
        ));

        let (stop, stopped) = watch::channel(false);
        let (mesh, sidecars) = start_sidecars(
            temp.path(),
            &ca_dir,
            &policy_dir,
            &trust_domain,
            ca_url,
            &stopped,
        )
        .await?;
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let script = async {
            if let Err(e) = wait_ready(&client, &mesh).await {
                eprintln!("the mesh did not come up: {e}");
                return false;
            }
            let script = calls(time::OffsetDateTime::now_utc());
            let mut outcomes = Vec::new();
            for (index, call) in script.iter().enumerate() {
                outcomes.push(send(&client, &mesh, call, index).await);
            }
            let all_ok = print_table(&mesh, &script, &outcomes);
            print_hints(&mesh);
            all_ok
        };
        let finished = tokio::select! {
            all_ok = script => Some(all_ok),
            () = &mut interrupted => None,
        };
        if finished == Some(true) && !once {
            println!("\nThe mesh keeps running; Ctrl-C stops it and removes everything.");
            interrupted.await;
        }
        let _ = stop.send(true);
        for sidecar in sidecars {
            let _ = tokio::time::timeout(Duration::from_secs(10), sidecar).await;
        }
        let _ = stop_ca.send(());
        let _ = ca_server.await;
        match finished {
            Some(true) => Ok(()),
            Some(false) => Err(Failure::failed(
                "some demo calls did not get their expected decision (see the table)",
            )),
            None => Err(Failure::failed("interrupted before every call was made")),
        }
    })
}

fn init_ca(
    temp: &Path,
    ca_dir: &Path,
    trust_domain: &TrustDomain,
) -> Result<CertificateAuthority, Failure> {
    let pass_file = temp.join("passphrase");
    std::fs::write(&pass_file, "demo-passphrase-not-for-production").map_err(Failure::failed)?;
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600))
        .map_err(Failure::failed)?;
    let passphrase = Passphrase::from_file_or_env(Some(&pass_file), KeyFileAccess::OwnerOnly)
        .map_err(Failure::failed)?;
    CertificateAuthority::init(ca_dir, trust_domain.clone(), &passphrase).map_err(Failure::failed)
}

type SidecarTask = tokio::task::JoinHandle<Result<(), airlock_proxy::StartError>>;

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
async fn start_sidecars(
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
            ..Config::new(IdentityConfig::new(
                trust_domain.clone(),
                &ca_url,
                ca_dir.join("bundle.pem"),
                &token_file,
            ))
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
            let service = Service {
                identity: id(workload),
                endpoints: vec![bound.inbound],
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
        mesh.access_logs.push((workload.name, access_log));
    }
    Ok((mesh, tasks))
}

async fn wait_ready(
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

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    mesh: &Mesh,
    call: &Call,
    index: usize,
) -> Outcome {
    let request_id = format!("demo-{index}");
    let request = hyper::Request::builder()
        .method(call.method)
        .uri(format!(
            "http://{}{}",
            mesh.upstream(call.from, call.to),
            call.path
        ))
        .header(hyper::header::HOST, format!("{}:{APP_PORT}", call.to))
        .header("x-request-id", &request_id)
        .body(Empty::new())
        .expect("valid request");
    let started = Instant::now();
    let (status, deny_reason) = match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let reason = response
                .headers()
                .get("airlock-deny-reason")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = response.into_body().collect().await;
            (status, reason)
        }
        Err(e) => (0, Some(format!("no answer: {e}"))),
    };
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let logged = logged_reason(mesh.access_log(call.to), &request_id).await;
    Outcome {
        status,
        reason: logged.or(deny_reason).unwrap_or_default(),
        millis,
    }
}

/// The reason (and dry-run outcomes) the callee's sidecar logged for `request_id`.
async fn logged_reason(access_log: &Path, request_id: &str) -> Option<String> {
    for _ in 0..40 {
        let text = std::fs::read_to_string(access_log).unwrap_or_default();
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["request_id"] == request_id);
        if let Some(line) = line {
            let mut reason = line["reason"].as_str().unwrap_or_default().to_owned();
            for dry in line["dry_run"].as_array().into_iter().flatten() {
                let verdict = if dry["would_allow"] == true {
                    "allow"
                } else {
                    "deny"
                };
                reason.push_str(&format!(
                    "; dry-run {} would {verdict}",
                    dry["policy"].as_str().unwrap_or_default()
                ));
            }
            return Some(reason);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Prints the table; true when every call got its expected decision.
fn print_table(mesh: &Mesh, script: &[Call], outcomes: &[Outcome]) -> bool {
    println!(
        "airlock demo: a CA at {} and five workloads on loopback",
        mesh.ca_url
    );
    println!("trust domain {TRUST_DOMAIN}; policies: examples/policies\n");
    println!(
        "{:<22} {:<38} {:<8} {:<6} {:<7} {:>6}  {:<3} reason (from the callee's access log)",
        "caller → callee", "request", "expected", "status", "verdict", "ms", "ok",
    );
    let mut all_ok = true;
    for (call, outcome) in script.iter().zip(outcomes) {
        let verdict = match outcome.status {
            200 => "allow",
            403 => "deny",
            _ => "error",
        };
        let expected = if call.allowed { "allow" } else { "deny" };
        let ok = verdict == expected;
        all_ok &= ok;
        println!(
            "{:<22} {:<38} {:<8} {:<6} {:<7} {:>6.1}  {:<3} {} ({})",
            format!("{} → {}", call.from, call.to),
            format!("{} {}", call.method, call.path),
            expected,
            outcome.status,
            verdict,
            outcome.millis,
            if ok { "yes" } else { "NO" },
            outcome.reason,
            call.why,
        );
    }
    all_ok
}

fn print_hints(mesh: &Mesh) {
    println!("\nCall the mesh yourself (each upstream listener carries its workload's identity):");
    for (from, to, addr) in &mesh.upstreams {
        let path = if *to == "checkout" {
            "/cart"
        } else {
            "/v1/status"
        };
        println!("  as {from:<9} → {to:<8}  curl -si -H 'Host: {to}' http://{addr}{path}");
    }
    println!("Metrics:");
    for (name, health) in &mesh.health {
        println!("  {name:<9}  http://{health}/metrics");
    }
    println!("Access logs (JSON lines, secrets masked):");
    for (name, path) in &mesh.access_logs {
        println!("  {name:<9}  {}", path.display());
    }
}
