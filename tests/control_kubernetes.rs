//! The controller's Kubernetes source against a fake API server that speaks the real
//! wire format (testkit's `fake_kube`): list, then watch streams of JSON lines,
//! bookmarks, `410 Gone` and a re-list, and the policy status and Events the controller
//! writes back. The endpoints in the objects are real sidecars on loopback (their
//! "pod IPs" are 127.0.0.x, their mesh port 15008), so what the cluster says is what
//! carries the traffic.

use std::time::{Duration, Instant};

use airlock_config::{DiscoveryConfig, InboundPort, PortProtocol, Upstream};
use airlock_testkit::fake_kube::FakeKube;
use airlock_testkit::*;
use serde_json::{Value, json};

const NS: &str = "shop";
const PODS: [(&str, &str); 3] = [
    ("api-7d9f8-aaaaa", "127.0.0.121"),
    ("api-7d9f8-bbbbb", "127.0.0.122"),
    ("api-7d9f8-ccccc", "127.0.0.123"),
];
const PATIENCE: Duration = Duration::from_secs(20);

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api", "namespace": NS, "uid": "uid-svc-api"},
        "spec": {"selector": {"app": "api"}, "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "targetPort": 8080}],
                 "type": "ClusterIP"}})
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "api"},
                     "annotations": {"airlock.dev/identity": "spiffe://example.org/ns/shop/sa/api"}},
        "spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The api's EndpointSlice with the pods numbered `which`, all ready.
fn slice(which: &[usize]) -> Value {
    let endpoints: Vec<Value> = which
        .iter()
        .map(|&i| {
            let (name, ip) = PODS[i];
            json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false},
                   "targetRef": {"kind": "Pod", "name": name, "namespace": NS}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "api-x1", "namespace": NS, "labels": {"kubernetes.io/service-name": "api"}},
        "endpoints": endpoints, "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
}

fn policy(generation: i64, action: &str, principal: &str) -> Value {
    json!({"apiVersion": "airlock.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "api-callers", "namespace": NS, "generation": generation, "uid": "uid-ap"},
        "spec": {"selector": {"identities": ["spiffe://example.org/ns/shop/sa/api"]}, "action": action,
                 "rules": [{"from": [{"source": {"principals": [principal]}}]}]}})
}

/// `GET /` through `caller`'s upstream: (status, the app that answered).
fn call(caller: &Sidecar) -> (u16, String) {
    let url = format!("http://{}/", caller.upstream("api.shop", 8080));
    let (status, body) = http("GET", &url);
    let app = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["app"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, app)
}

/// Calls until ten answers in a row satisfy `good`; prints how long that took.
fn until(caller: &Sidecar, what: &str, good: impl Fn(u16, &str) -> bool) {
    let started = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 10 {
        let (status, app) = call(caller);
        in_a_row = if good(status, &app) { in_a_row + 1 } else { 0 };
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: not within {PATIENCE:?} (last: {status} from {app:?})\n{}",
            caller.log_text()
        );
    }
    println!("{what}: {:?}", started.elapsed());
}

fn until_reaches(caller: &Sidecar, what: &str, app: &str) {
    let started = Instant::now();
    while call(caller).1 != app {
        assert!(started.elapsed() < PATIENCE, "{what}: {app} never answered");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("{what}: {:?}", started.elapsed());
}

#[test]
fn a_cluster_watched_through_the_api_drives_the_mesh() {
    let web = "spiffe://example.org/ns/shop/sa/web";
    // The first version says its mode, which a later valid edit drops.
    let mut first = policy(1, "ALLOW", web);
    first["spec"]["mode"] = json!("enforce");
    let fake = FakeKube::start(&[
        service(),
        pod(PODS[0].0, PODS[0].1),
        pod(PODS[1].0, PODS[1].1),
        slice(&[0, 1]),
        first,
    ]);
    let ca = TestCa::init("example.org");
    let ca_server = CaServer::start(&ca);
    let kubeconfig = ca.scratch("kubeconfig");
    fake.kubeconfig(&kubeconfig);
    let controller = Controller::start_with(
        &ca,
        &ca_server.url,
        "kubernetes",
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let discovery = DiscoveryConfig {
        url: controller.url(),
        identity: ca.id(CONTROLLER_PATH).parse().unwrap(),
        cache_file: None,
    };
    // The pods' sidecars, on their "pod IPs".
    let mut callees = Vec::new();
    for (name, ip) in PODS {
        let (app, _) = airlock_testkit::http_app::spawn(name);
        let identity = ca.identity(
            &ca_server.url,
            name,
            "spiffe://example.org/ns/shop/sa/api",
            &["--uses", "5"],
        );
        let mut config = sidecar_config(identity, ip);
        config.inbound.listen = format!("{ip}:15008").parse().unwrap();
        config.inbound.ports.push(InboundPort {
            app: Some(app),
            ..InboundPort::new(8080, PortProtocol::Http)
        });
        config.discovery = Some(discovery.clone());
        let sidecar = Sidecar::start(&ca, name, &config);
        sidecar.wait_ready();
        callees.push(sidecar);
    }
    let identity = ca.identity(&ca_server.url, "web", web, &["--uses", "5"]);
    let mut config = sidecar_config(identity, "127.0.0.1");
    config.discovery = Some(discovery);
    config.outbound.upstreams = vec![Upstream {
        listen: "127.0.0.1:0".parse().unwrap(),
        service: "api.shop".into(),
        port: 8080,
    }];
    let caller = Sidecar::start(&ca, "web", &config);
    caller.wait_ready();

    // The listed objects: two pods answer, allowed by the policy object.
    until_reaches(&caller, "the first pod answers", PODS[0].0);
    until_reaches(&caller, "the second pod answers", PODS[1].0);
    let lists = |fake: &FakeKube| {
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=true"))
            .count()
    };
    assert_eq!(lists(&fake), 1, "{:#?}", fake.requests());
    // The controller accepted the policy into its status.
    wait_up_to(PATIENCE, "the policy's status says Accepted", || {
        fake.object("AuthorizationPolicy", "shop/api-callers")
            .is_some_and(|p| {
                p["status"]["conditions"][0]["status"] == "True"
                    && p["status"]["acceptedSpec"]["action"] == "ALLOW"
            })
    });

    // A pod added by a watch event (the pod, then its slice) takes traffic.
    fake.apply(pod(PODS[2].0, PODS[2].1));
    fake.apply(slice(&[0, 1, 2]));
    until_reaches(&caller, "a pod added by a watch event answers", PODS[2].0);

    // A bookmark, then the watches end (as at the server's timeout): the reflectors
    // watch again from the bookmark's version, without listing again.
    fake.bookmark();
    let bookmark = fake
        .object("Pod", "shop/api-7d9f8-ccccc")
        .map(|p| {
            p["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    fake.end_watches();
    wait_up_to(PATIENCE, "a watch resumed at the bookmark", || {
        fake.requests().iter().any(|r| {
            r.starts_with("GET /api/v1/services?")
                && r.contains("watch=true")
                && r.contains(&format!("resourceVersion={}", bookmark + 1))
        })
    });
    assert_eq!(
        lists(&fake),
        1,
        "a bookmark spares a list: {:#?}",
        fake.requests()
    );

    // Compaction: the next watch gets 410 Gone, the reflectors list again, and a change
    // made meanwhile arrives with the list.
    fake.expire();
    fake.apply(slice(&[1, 2]));
    until(
        &caller,
        "the first pod removed across a 410 re-list",
        |status, app| status == 200 && app != PODS[0].0,
    );
    wait_up_to(PATIENCE, "the services were listed again", || {
        lists(&fake) >= 2
    });

    // An invalid edit of the policy: reported on the object and in an Event; the
    // version accepted before keeps applying.
    fake.apply(policy(2, "PERMIT", web));
    wait_up_to(
        PATIENCE,
        "the invalid policy reported in its status",
        || {
            fake.object("AuthorizationPolicy", "shop/api-callers")
                .is_some_and(|p| {
                    let condition = &p["status"]["conditions"][0];
                    condition["status"] == "False"
                        && condition["observedGeneration"] == 2
                        && condition["message"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("PERMIT")
                })
        },
    );
    wait_up_to(PATIENCE, "an Event names the invalid policy", || {
        fake.events().iter().any(|e| {
            e["reason"] == "InvalidPolicy"
                && e["regarding"]["name"] == "api-callers"
                && e["note"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("AuthorizationPolicy shop/api-callers")
        })
    });
    assert_eq!(call(&caller).0, 200, "the accepted version still applies");

    // A valid edit that allows someone else: web is refused.
    fake.apply(policy(3, "ALLOW", "spiffe://example.org/ns/shop/sa/other"));
    until(&caller, "a policy edit refuses web", |status, _| {
        status == 403
    });
    // Its acceptedSpec is that spec exactly: the mode the first version named is gone
    // (a merge of the spec alone would have kept it).
    wait_up_to(PATIENCE, "acceptedSpec is the new spec", || {
        fake.object("AuthorizationPolicy", "shop/api-callers")
            .is_some_and(|p| p["status"]["acceptedSpec"] == p["spec"])
    });
    // The policy object deleted: nothing selects the api, the default (deny) decides.
    fake.apply(policy(4, "ALLOW", web));
    until(&caller, "web allowed again", |status, _| status == 200);
    fake.delete("AuthorizationPolicy", "shop/api-callers");
    until(
        &caller,
        "the deleted policy leaves the default deciding",
        |status, _| status == 403,
    );
    drop(callees);
}
