//! The control plane end to end with the directory source: a real CA, a real
//! `airlock control`, three callee sidecars behind one service and two callers, all
//! subscribed to the controller; the mesh changes by editing the controller's files.
//!
//! How long a change takes to reach the sidecars is printed, not asserted (this shared
//! 2-core machine makes timing asserts flaky); the waits below are generous bounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airlock_config::{
    Config, DiscoveryConfig, IdentityConfig, InboundPort, PortProtocol, Upstream,
};
use airlock_testkit::*;

const API: &str = "spiffe://example.org/ns/shop/sa/api";
const WEB: &str = "spiffe://example.org/ns/shop/sa/web";
const BATCH: &str = "spiffe://example.org/ns/ops/sa/batch";
const APP_PORT: u16 = 8080;
/// Bounds on how long a change may take here; the measured time is printed.
const PATIENCE: Duration = Duration::from_secs(15);

struct Mesh {
    ca: TestCa,
    ca_server: CaServer,
    source: PathBuf,
    controller: Controller,
    callees: Vec<(Sidecar, SocketAddr)>,
    _apps: Vec<airlock_testkit::http_app::Seen>,
}

impl Mesh {
    fn start() -> Self {
        let ca = TestCa::init("example.org");
        let ca_server = CaServer::start(&ca);
        let source = ca.scratch("mesh");
        std::fs::create_dir_all(source.join("policies")).unwrap();
        let controller = Controller::start(&ca, &ca_server.url, &source);
        let mut mesh = Self {
            ca,
            ca_server,
            source,
            controller,
            callees: Vec::new(),
            _apps: Vec::new(),
        };
        for name in ["api-1", "api-2", "api-3"] {
            let (app, seen) = airlock_testkit::http_app::spawn(name);
            let mut config = mesh.config(name, API);
            config.inbound.ports.push(InboundPort {
                app: Some(app),
                ..InboundPort::new(APP_PORT, PortProtocol::Http)
            });
            let sidecar = Sidecar::start(&mesh.ca, name, &config);
            sidecar.wait_ready();
            let inbound = sidecar.inbound;
            mesh.callees.push((sidecar, inbound));
            mesh._apps.push(seen);
        }
        mesh
    }

    /// A sidecar configuration for `id` subscribed to the controller, with a cache file.
    fn config(&self, name: &str, id: &str) -> Config {
        let identity: IdentityConfig =
            self.ca
                .identity(&self.ca_server.url, name, id, &["--uses", "10"]);
        let mut config = sidecar_config(identity, "127.0.0.1");
        config.discovery = Some(DiscoveryConfig {
            url: self.controller.url(),
            identity: self.ca.id(CONTROLLER_PATH).parse().unwrap(),
            cache_file: Some(self.ca.scratch(&format!("{name}.discovery.pb"))),
        });
        config
    }

    /// A caller subscribed to the controller, with an upstream to `api`'s app port.
    fn caller(&self, name: &str, id: &str) -> (Sidecar, Config) {
        let mut config = self.config(name, id);
        config.outbound.upstreams = vec![Upstream {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            service: "api".into(),
            port: APP_PORT,
        }];
        let sidecar = Sidecar::start(&self.ca, name, &config);
        sidecar.wait_ready();
        (sidecar, config)
    }

    /// Writes the controller's registry: service `api` at the callees numbered `which`.
    fn registry(&self, which: &[usize]) {
        let endpoints: Vec<String> = which
            .iter()
            .map(|&i| self.callees[i].1.to_string())
            .collect();
        write(
            &self.source.join("registry.yaml"),
            &format!(
                "api:\n  identity: {API}\n  endpoints: [{}]\n  ports:\n  - {{port: {APP_PORT}, protocol: http}}\n",
                endpoints.join(", ")
            ),
        );
    }

    /// The api's policy: only `principal` may call it.
    fn allow_only(&self, principal: &str) {
        let rules = format!("  - from: [{{source: {{principals: [{principal}]}}}}]\n");
        write(
            &self.source.join("policies/api.yaml"),
            &policy("shop/api-callers", API, "ALLOW", Mode::Enforce, &rules),
        );
    }
}

/// Writes through a temporary file and a rename, as an operator's tools should.
fn write(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// `GET /` through `caller`'s upstream: (status, the app that answered).
fn call(caller: &Sidecar) -> (u16, String) {
    call_path(caller, "/")
}

fn call_path(caller: &Sidecar, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", caller.upstream("api", APP_PORT));
    let (status, body) = http("GET", &url);
    let app = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["app"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, app)
}

/// Calls until `done` holds for an answer, returning how long that took.
fn until(caller: &Sidecar, what: &str, mut done: impl FnMut(u16, &str) -> bool) -> Duration {
    let started = Instant::now();
    loop {
        let (status, app) = call(caller);
        if done(status, &app) {
            let took = started.elapsed();
            println!("{what}: {took:?}");
            return took;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?} (last answer {status} from {app:?})\n{}",
            caller.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls until ten answers in a row come from `apps` only, returning how long that took.
fn until_only(caller: &Sidecar, what: &str, apps: &[&str]) -> Duration {
    let mut in_a_row = 0;
    until(caller, what, |status, app| {
        in_a_row = if status == 200 && apps.contains(&app) {
            in_a_row + 1
        } else {
            0
        };
        in_a_row == 10
    })
}

/// The apps that answered `count` calls, all of which must succeed.
fn answering(caller: &Sidecar, count: usize) -> std::collections::BTreeSet<String> {
    (0..count)
        .map(|_| {
            let (status, app) = call(caller);
            assert_eq!(status, 200, "{app}");
            app
        })
        .collect()
}

fn status(sidecar: &Sidecar) -> serde_json::Value {
    let (code, body) = sidecar.admin("GET", "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_controller_moves_traffic_and_policy_and_an_outage_keeps_the_last_view() {
    let mut mesh = Mesh::start();
    mesh.registry(&[0, 1]);
    mesh.allow_only(WEB);
    let (web, web_config) = mesh.caller("web", WEB);
    let (batch, _) = mesh.caller("batch", BATCH);

    // The first view: api-1 and api-2 answer web; batch is refused by the callees' policy.
    until(&web, "web reaches api", |status, _| status == 200);
    until(&web, "api-1 answers", |_, app| app == "api-1");
    until(&web, "api-2 answers", |_, app| app == "api-2");
    let reached = answering(&web, 30);
    assert!(
        reached.iter().all(|app| app == "api-1" || app == "api-2"),
        "{reached:?}"
    );
    until(&batch, "batch is refused", |status, _| status == 403);

    // Only the policies that select a subscriber reach it: the callees hold the api's,
    // the callers none (the callers' /status, from their own SVID's subscription).
    assert_eq!(status(&mesh.callees[0].0)["policy"]["policies"], 1);
    assert_eq!(status(&web)["policy"]["policies"], 0);
    assert_eq!(status(&batch)["controller"]["policies"], 0);
    assert_eq!(status(&web)["controller"]["services"], 1);

    // An added endpoint takes traffic.
    mesh.registry(&[0, 1, 2]);
    until(&web, "an added endpoint takes traffic", |_, app| {
        app == "api-3"
    });

    // A removed endpoint takes no new traffic, and what it was serving finishes: with
    // api-1 alone, a slow request goes there; api-1 leaves while it runs.
    mesh.registry(&[0]);
    until_only(&web, "down to api-1", &["api-1"]);
    let slow_caller = web.upstream("api", APP_PORT);
    let slow = std::thread::spawn(move || http("GET", &format!("http://{slow_caller}/slow")));
    std::thread::sleep(Duration::from_millis(500));
    mesh.registry(&[1, 2]);
    until_only(&web, "api-1 removed", &["api-2", "api-3"]);
    let (slow_status, slow_body) = slow.join().unwrap();
    assert_eq!(slow_status, 200, "the live request finished: {slow_body}");
    assert!(slow_body.contains("api-1"), "{slow_body}");
    let reached = answering(&web, 30);
    assert!(!reached.contains("api-1"), "{reached:?}");

    // A policy change is enforced by the callees: batch in, web out.
    mesh.allow_only(BATCH);
    until(
        &batch,
        "batch allowed after the policy change",
        |status, _| status == 200,
    );
    until(&web, "web refused after the policy change", |status, _| {
        status == 403
    });
    mesh.allow_only(WEB);
    until(&web, "web allowed again", |status, _| status == 200);

    // An invalid policy edit is refused by the controller; the last valid one applies.
    write(
        &mesh.source.join("policies/api.yaml"),
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: api-callers, namespace: shop}\nspec:\n  action: PERMIT\n",
    );
    wait_up_to(PATIENCE, "the controller reports the invalid file", || {
        mesh.controller.log_text().contains("api.yaml:5:")
    });
    assert_eq!(call(&web).0, 200, "the last valid policy still applies");
    assert!(
        metric(
            &mesh.controller.metrics(),
            "airlock_control_invalid_objects"
        ) >= 1.0
    );
    mesh.allow_only(WEB);

    // The controller goes away: traffic goes on, on the last view.
    let version = status(&web)["controller"]["version"].clone();
    mesh.controller.stop();
    let still = answering(&web, 10);
    assert!(
        still.iter().all(|app| app == "api-2" || app == "api-3"),
        "{still:?}"
    );
    wait_up_to(PATIENCE, "web notices the outage", || {
        status(&web)["controller"]["connected"] == false
    });

    // A sidecar restarted during the outage comes back from its cache, ready, and serves.
    drop(web);
    let web = Sidecar::start(&mesh.ca, "web", &web_config);
    web.wait_ready();
    assert_eq!(status(&web)["controller"]["version"], version);
    assert!(
        web.log_text()
            .contains("restored the mesh view from the discovery cache")
    );
    let again = answering(&web, 10);
    assert!(
        again.iter().all(|app| app == "api-2" || app == "api-3"),
        "{again:?}"
    );

    // The control case: without a cache, a sidecar restarted during the outage is not
    // ready.
    let mut uncached = web_config.clone();
    uncached.discovery.as_mut().unwrap().cache_file = Some(mesh.ca.scratch("none.pb"));
    let cold = Sidecar::start(&mesh.ca, "cold", &uncached);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(http("GET", &format!("http://{}/ready", cold.health)).0, 503);

    // The controller comes back: both subscribe again.
    mesh.controller.restart();
    cold.wait_ready();
    wait_up_to(PATIENCE, "web subscribes again", || {
        status(&web)["controller"]["connected"] == true
    });
    assert!(metric(&web.metrics(), "airlock_discovery_reconnects_total") >= 1.0);
    let metrics = web.metrics();
    assert!(
        metrics.contains("airlock_discovery_snapshot_age_seconds ")
            && metrics.contains(&format!(
                "airlock_discovery_version_info{{version=\"{}\"}} 1",
                version.as_str().unwrap()
            )),
        "{metrics}"
    );
    assert!(
        mesh.controller
            .metrics()
            .contains("airlock_control_subscribers")
    );
    drop(batch);
}

#[test]
fn a_revoked_subscriber_is_cut_off_and_refused_until_the_entry_is_lifted() {
    let mesh = Mesh::start();
    mesh.registry(&[0]);
    let web = Sidecar::start(&mesh.ca, "web", &mesh.config("web", WEB));
    web.wait_ready();
    let subscribers = || metric(&mesh.controller.metrics(), "airlock_control_subscribers");
    wait_up_to(PATIENCE, "three callees and web subscribed", || {
        status(&web)["controller"]["connected"] == true && subscribers() == 4.0
    });

    let revoke = |extra: &[&str]| {
        ok(airlock()
            .args(["ca", "revoke", "--dir"])
            .arg(&mesh.ca.dir)
            .args(["--spiffe-id", WEB])
            .args(extra))
    };
    revoke(&[]);
    wait_up_to(
        PATIENCE,
        "the controller cuts the revoked subscriber",
        || status(&web)["controller"]["connected"] == false && subscribers() == 3.0,
    );
    assert!(
        mesh.controller
            .log_text()
            .contains("subscriber's SVID revoked"),
        "{}",
        mesh.controller.log_text()
    );
    // While the entry stands, every reconnection is refused at the handshake: sampled
    // over a few seconds of the sidecar's retries, it is never subscribed again.
    let reconnects = || metric(&web.metrics(), "airlock_discovery_reconnects_total");
    let before = reconnects();
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        assert_eq!(status(&web)["controller"]["connected"], false);
        assert_eq!(subscribers(), 3.0);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(reconnects() > before, "it kept trying");
    assert!(
        web.log_text().contains("controller unreachable"),
        "{}",
        web.log_text()
    );

    // The control: lifted, it subscribes again.
    revoke(&["--lift"]);
    wait_up_to(PATIENCE, "web subscribes again after the lift", || {
        status(&web)["controller"]["connected"] == true && subscribers() == 4.0
    });
}
