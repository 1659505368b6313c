//! The mutation as tables: annotations in, sidecar and configuration out (or one error
//! naming the field); the sidecar configuration it writes is one `airlock proxy` loads;
//! AdmissionReviews in every shape get an AdmissionReview back.

use airlock_config::{Config, PortProtocol};
use airlock_inject::{InjectOptions, Outcome, inject_object, inject_template, review};
use serde_json::{Value, json};

fn options() -> InjectOptions {
    InjectOptions {
        image: "registry.example/airlock:1".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        ca_url: "https://airlock-ca.airlock-system.svc:15012".into(),
        ca_audience: "airlock-ca".into(),
        proxy_uid: 1337,
        namespace: "default".into(),
        permissive: false,
        default_policy: airlock_policy::DefaultMode::Deny,
        controller: None,
    }
}

/// A pod template with one app container serving 8080 and 9090, and `annotations`.
fn template(annotations: Value) -> Value {
    json!({
        "metadata": {"labels": {"app": "web"}, "annotations": annotations},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "app",
                "image": "web:1",
                "ports": [
                    {"containerPort": 8080},
                    {"containerPort": 9090, "protocol": "TCP"},
                    {"containerPort": 5353, "protocol": "UDP"},
                ],
            }],
        },
    })
}

fn injected(mut template: Value) -> Result<Value, String> {
    match inject_template(&mut template, "shop", &options()).map_err(|e| e.to_string())? {
        Outcome::Injected(_) => Ok(template),
        Outcome::Skipped(reason) => Err(format!("skipped: {reason}")),
    }
}

/// The sidecar configuration the injector wrote, loaded as `airlock proxy` loads it.
fn sidecar_config(template: &Value) -> Config {
    let text = template["metadata"]["annotations"]["airlock.dev/sidecar-config"]
        .as_str()
        .expect("the sidecar config annotation");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// An inbound port: number, protocol, permissive.
type PortSummary = (u16, PortProtocol, bool);

fn ports(config: &Config) -> Vec<PortSummary> {
    config
        .inbound
        .ports
        .iter()
        .map(|p| (p.port, p.protocol, p.permissive))
        .collect()
}

#[test]
fn annotations_steer_the_sidecar_configuration() {
    use PortProtocol::{Auto, Http, Tcp};
    let cases: Vec<(Value, Vec<PortSummary>)> = vec![
        (json!({}), vec![(8080, Auto, false), (9090, Auto, false)]),
        (
            json!({"airlock.dev/inbound-ports": "8080/http, 7000/tcp"}),
            vec![(8080, Http, false), (7000, Tcp, false)],
        ),
        (
            json!({"airlock.dev/exclude-inbound-ports": "9090"}),
            vec![(8080, Auto, false)],
        ),
        (
            json!({"airlock.dev/mode": "permissive"}),
            vec![(8080, Auto, true), (9090, Auto, true)],
        ),
        (
            json!({"airlock.dev/inject": "true"}),
            vec![(8080, Auto, false), (9090, Auto, false)],
        ),
    ];
    for (annotations, expected) in cases {
        let pod = injected(template(annotations.clone())).unwrap();
        let config = sidecar_config(&pod);
        assert_eq!(ports(&config), expected, "{annotations}");
        let permissive = expected.iter().any(|p| p.2);
        assert_eq!(config.inbound.permissive_listen.is_some(), permissive);
        assert_eq!(
            config.identity.token_file.to_str(),
            Some("/var/run/secrets/airlock/token")
        );
        assert_eq!(
            config.registry_file.as_deref().and_then(|p| p.to_str()),
            Some("/etc/airlock/registry/registry.yaml")
        );
    }

    // Without the annotation, each containerPort's name gives its protocol; only ports
    // that nothing names are detected.
    let mut named = template(json!({}));
    named["spec"]["containers"][0]["ports"] = json!([
        {"containerPort": 8080, "name": "http-api"},
        {"containerPort": 50051, "name": "grpc"},
        {"containerPort": 6379, "name": "redis"},
        {"containerPort": 8443, "name": "https"},
        {"containerPort": 9000, "name": "web"},
        {"containerPort": 9100},
    ]);
    let config = sidecar_config(&injected(named).unwrap());
    assert_eq!(
        ports(&config),
        vec![
            (8080, Http, false),
            (50051, Http, false),
            (6379, Tcp, false),
            (8443, Tcp, false),
            (9000, Auto, false),
            (9100, Auto, false),
        ]
    );

    let pod = injected(template(json!({
        "airlock.dev/default-policy": "audit",
        "airlock.dev/egress": "203.0.113.0/24:443, 198.51.100.7/32",
    })))
    .unwrap();
    let config = sidecar_config(&pod);
    assert_eq!(config.policy.default.to_string(), "audit");
    for (destination, allowed) in [
        ("203.0.113.9:443", true),
        ("203.0.113.9:80", false),
        ("198.51.100.7:25", true),
        ("192.0.2.1:443", false),
    ] {
        assert_eq!(
            config.outbound.egress_allows(destination.parse().unwrap()),
            allowed,
            "{destination}"
        );
    }
}

#[test]
fn capture_exclusions_reach_the_init_container() {
    let pod = injected(template(json!({
        "airlock.dev/exclude-inbound-ports": "9090",
        "airlock.dev/exclude-outbound-ports": "5432, 6379",
        "airlock.dev/exclude-outbound-cidrs": "169.254.169.254/32",
    })))
    .unwrap();
    assert_eq!(
        pod["spec"]["initContainers"][0]["args"],
        json!([
            "init-capture",
            "--proxy-uid",
            "1337",
            "--inbound-exclude-ports",
            "9090",
            "--outbound-exclude-ports",
            "5432,6379",
            "--outbound-exclude-cidrs",
            "169.254.169.254/32"
        ])
    );
}

#[test]
fn bad_annotations_and_unsafe_pods_are_one_error_naming_the_field() {
    let with = |annotations: Value| template(annotations);
    let with_spec = |key: &str, value: Value| {
        let mut pod = template(json!({}));
        pod["spec"][key] = value;
        pod
    };
    let mut app_as_proxy = template(json!({}));
    app_as_proxy["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 1337});
    let mut reserved_port = template(json!({}));
    reserved_port["spec"]["containers"][0]["ports"] = json!([{"containerPort": 15008}]);
    let mut reserved_declared = reserved_port.clone();
    reserved_declared["metadata"]["annotations"] = json!({"airlock.dev/inbound-ports": "8080"});
    let with_context = |context: Value| {
        let mut pod = template(json!({}));
        pod["spec"]["containers"][0]["securityContext"] = context;
        pod
    };
    let cases = [
        (
            with(json!({"airlock.dev/inject": "yes"})),
            "airlock.dev/inject: \"yes\"",
        ),
        (
            with(json!({"airlock.dev/mode": "open"})),
            "airlock.dev/mode: \"open\"",
        ),
        (
            with(json!({"airlock.dev/default-policy": "permit"})),
            "airlock.dev/default-policy",
        ),
        (
            with(json!({"airlock.dev/inbound-ports": "80/udp"})),
            "protocol \"udp\"",
        ),
        (
            with(json!({"airlock.dev/inbound-ports": "http"})),
            "\"http\" is not a port number",
        ),
        (
            with(json!({"airlock.dev/inbound-ports": "15020"})),
            "app port 15020",
        ),
        (
            with(json!({"airlock.dev/exclude-outbound-cidrs": "10.0.0.0"})),
            "not an IPv4 CIDR",
        ),
        (
            with(json!({"airlock.dev/egress": "example.com:443"})),
            "not IPV4-CIDR or IPV4-CIDR:PORT",
        ),
        (
            with(json!({"airlock.dev/egress": "2001:db8::/32"})),
            "not IPV4-CIDR or IPV4-CIDR:PORT",
        ),
        (
            with(json!({"airlock.dev/exclude-outbound-cidrs": "0.0.0.0/4"})),
            "wider than a /8",
        ),
        (
            with_context(json!({"privileged": true})),
            "spec.containers[app].securityContext: privileged: true",
        ),
        (
            with_context(json!({"capabilities": {"add": ["NET_RAW", "net_admin"]}})),
            "capability net_admin",
        ),
        (
            with_context(json!({"capabilities": {"add": ["CAP_SYS_ADMIN"]}})),
            "capability CAP_SYS_ADMIN",
        ),
        (
            reserved_declared,
            "spec.containers[app].ports: containerPort 15008",
        ),
        (
            with(json!({"airlock.dev/egress": "10.0.0.0/8:0"})),
            "\"0\" is not a port number",
        ),
        (
            with(json!({"airlock.dev/inject": false})),
            "values are strings",
        ),
        (
            with_spec("securityContext", json!({"runAsUser": 1337})),
            "spec.securityContext.runAsUser",
        ),
        (
            app_as_proxy,
            "spec.containers[app].securityContext.runAsUser is 1337",
        ),
        (
            reserved_port,
            "spec.containers[app].ports: containerPort 15008",
        ),
        (
            with_spec(
                "containers",
                json!([{"name": "airlock-proxy", "image": "x"}]),
            ),
            "\"airlock-proxy\" is reserved",
        ),
        (
            with_spec(
                "initContainers",
                json!([{"name": "airlock-init", "image": "x"}]),
            ),
            "\"airlock-init\" is reserved",
        ),
        (
            with_spec(
                "volumes",
                json!([{"name": "airlock-token", "emptyDir": {}}]),
            ),
            "\"airlock-token\" is reserved",
        ),
        (
            with_spec("serviceAccountName", json!("..")),
            "spec.serviceAccountName: \"..\" is not a Kubernetes service account name",
        ),
    ];
    for (pod, expected) in cases {
        let before = pod.clone();
        let mut after = pod.clone();
        let Err(error) = inject_template(&mut after, "shop", &options()) else {
            panic!("accepted, though {expected:?} was expected");
        };
        let error = error.to_string();
        assert!(error.contains(expected), "{expected:?} not in {error:?}");
        assert_eq!(after, before, "a refused pod is left as it was");
    }
}

#[test]
fn skipped_pods_are_left_exactly_as_they_were() {
    let opted_out = template(json!({"airlock.dev/inject": "false"}));
    let mut host_network = template(json!({}));
    host_network["spec"]["hostNetwork"] = json!(true);
    let mirror = template(json!({"kubernetes.io/config.mirror": "5b2c"}));
    for pod in [opted_out, host_network, mirror] {
        let mut after = pod.clone();
        let outcome = inject_template(&mut after, "shop", &options()).unwrap();
        assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
        assert_eq!(after, pod);
    }
}

#[test]
fn injection_is_idempotent_and_replaces_an_older_injection() {
    let once = injected(template(json!({}))).unwrap();
    let twice = injected(once.clone()).unwrap();
    assert_eq!(once, twice);

    // An older injection with another image and mode is replaced, not doubled.
    let mut older = once.clone();
    older["spec"]["initContainers"][1]["image"] = json!("airlock:0.0.1");
    older["metadata"]["annotations"]["airlock.dev/sidecar-config"] = json!("stale");
    assert_eq!(injected(older).unwrap(), once);

    let init = once["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["airlock-init", "airlock-proxy"]);
    assert_eq!(once["spec"]["volumes"].as_array().unwrap().len(), 6);
    assert_eq!(
        once["metadata"]["annotations"]["airlock.dev/identity"],
        json!("spiffe://cluster.local/ns/shop/sa/web")
    );
}

#[test]
fn every_workload_kind_is_found_and_namespaces_come_from_the_object() {
    let pod_template = template(json!({}));
    let cases = [
        (
            json!({"kind": "Pod", "metadata": {"name": "p", "namespace": "a"}, "spec": pod_template["spec"]}),
            "/spec",
            "a",
        ),
        (
            json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": pod_template}}),
            "/spec/template/spec",
            "default",
        ),
        (
            json!({"kind": "StatefulSet", "metadata": {"name": "s", "namespace": "b"}, "spec": {"template": pod_template}}),
            "/spec/template/spec",
            "b",
        ),
        (
            json!({"kind": "DaemonSet", "metadata": {"name": "d"}, "spec": {"template": pod_template}}),
            "/spec/template/spec",
            "default",
        ),
        (
            json!({"kind": "ReplicaSet", "metadata": {"name": "r"}, "spec": {"template": pod_template}}),
            "/spec/template/spec",
            "default",
        ),
        (
            json!({"kind": "Job", "metadata": {"name": "j"}, "spec": {"template": pod_template}}),
            "/spec/template/spec",
            "default",
        ),
        (
            json!({"kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": pod_template}}}}),
            "/spec/jobTemplate/spec/template/spec",
            "default",
        ),
    ];
    for (mut object, spec_pointer, namespace) in cases {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let reports = inject_object(&mut object, &kind, "default", &options()).unwrap();
        assert_eq!(reports.len(), 1, "{kind}");
        assert_eq!(
            reports[0].outcome,
            Outcome::Injected(
                format!("spiffe://cluster.local/ns/{namespace}/sa/web")
                    .parse()
                    .unwrap()
            ),
            "{kind}"
        );
        let spec = object.pointer(spec_pointer).unwrap();
        assert_eq!(spec["initContainers"][1]["name"], "airlock-proxy", "{kind}");
    }

    let mut list = json!({"kind": "List", "items": [
        {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": pod_template}},
        {"kind": "Service", "metadata": {"name": "s"}, "spec": {}},
    ]});
    let reports = inject_object(&mut list, "List", "default", &options()).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        list["items"][1],
        json!({"kind": "Service", "metadata": {"name": "s"}, "spec": {}})
    );

    let mut broken = json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {}});
    let error = inject_object(&mut broken, "Deployment", "default", &options()).unwrap_err();
    assert_eq!(
        error.to_string(),
        "Deployment default/d: spec.template is missing"
    );
}

fn admission(request: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    }))
    .unwrap()
}

#[test]
fn every_review_gets_an_admission_review_back() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template(json!({}))["spec"]});
    let pod_kind = json!({"group": "", "version": "v1", "kind": "Pod"});
    let request = |kind: Value, operation: &str, object: Value| {
        admission(
            json!({"uid": "u-1", "kind": kind, "operation": operation, "namespace": "shop", "object": object}),
        )
    };
    // (body, HTTP status, allowed, patched)
    let cases: Vec<(Vec<u8>, u16, bool, bool)> = vec![
        (request(pod_kind.clone(), "CREATE", pod.clone()), 200, true, true),
        (request(pod_kind.clone(), "UPDATE", pod.clone()), 200, true, false),
        (request(pod_kind.clone(), "DELETE", Value::Null), 200, true, false),
        (
            request(json!({"group": "", "version": "v1", "kind": "Service"}), "CREATE", json!({"kind": "Service", "spec": {}})),
            200,
            true,
            false,
        ),
        (request(pod_kind.clone(), "CREATE", Value::Null), 200, false, false),
        (
            request(pod_kind.clone(), "CREATE", json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"securityContext": {"runAsUser": 1337}, "containers": []}})),
            200,
            false,
            false,
        ),
        (b"not json".to_vec(), 400, false, false),
        (b"{}".to_vec(), 400, false, false),
        (b"[1, 2]".to_vec(), 400, false, false),
        (admission(json!({"kind": pod_kind, "operation": "CREATE"})), 400, false, false),
        (admission(json!({"uid": "u-1", "operation": "CREATE"})), 400, false, false),
        (
            serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}})).unwrap(),
            400,
            false,
            false,
        ),
    ];
    for (body, status, allowed, patched) in cases {
        let text = String::from_utf8_lossy(&body).into_owned();
        let (got_status, answer) = review(&body, &options());
        assert_eq!(got_status, status, "{text}");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{text}");
        assert_eq!(answer["kind"], "AdmissionReview", "{text}");
        let response = &answer["response"];
        assert_eq!(response["allowed"], allowed, "{text}: {answer}");
        assert_eq!(response.get("patch").is_some(), patched, "{text}: {answer}");
        if status == 200 {
            assert_eq!(response["uid"], "u-1", "{text}");
        }
        if !allowed {
            assert!(
                response["status"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{text}: {answer}"
            );
        }
    }
}

#[test]
fn reviews_with_too_many_values_are_refused_before_parsing() {
    let values = vec!["0"; airlock_inject::MAX_JSON_VALUES + 1].join(",");
    let body = format!(
        "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{{\"uid\":\"u\",\"object\":[{values}]}}}}"
    );
    let (status, answer) = review(body.as_bytes(), &options());
    assert_eq!(status, 400);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("more than 50000 JSON values"), "{message}");
    // Commas inside strings are not values.
    let text = ",".repeat(airlock_inject::MAX_JSON_VALUES * 2);
    let body = format!(
        "{{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{{\"uid\":\"u\",\"kind\":{{\"kind\":\"ConfigMap\"}},\"operation\":\"CREATE\",\"object\":{{\"data\":{{\"x\":\"{text}\"}}}}}}}}"
    );
    let (status, answer) = review(body.as_bytes(), &options());
    assert_eq!(status, 200, "{}", answer["response"]);
}

#[test]
fn the_sidecar_refuses_a_configuration_changed_after_admission() {
    let pod = injected(template(json!({}))).unwrap();
    let args = &pod["spec"]["initContainers"][1]["args"];
    let pinned = args[4].as_str().unwrap();
    assert_eq!(args[3], "--config-sha256");
    let text = pod["metadata"]["annotations"]["airlock.dev/sidecar-config"]
        .as_str()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    Config::load_pinned(&path, Some(pinned)).unwrap();
    std::fs::write(&path, text.replace("default: deny", "default: allow-all")).unwrap();
    let error = Config::load_pinned(&path, Some(pinned)).unwrap_err();
    assert!(error.contains("changed after it was pinned"), "{error}");
}

#[test]
fn probes_of_captured_ports_go_through_the_sidecar() {
    let mut pod = template(json!({"airlock.dev/exclude-inbound-ports": "9090"}));
    let container = &mut pod["spec"]["containers"][0];
    container["ports"][0]["name"] = json!("http");
    container["readinessProbe"] = json!({
        "httpGet": {"path": "/healthz", "port": "http", "httpHeaders": [{"name": "X-Probe", "value": "yes"}]},
        "periodSeconds": 5,
        "timeoutSeconds": 3,
    });
    container["livenessProbe"] = json!({"tcpSocket": {"port": 8080}, "failureThreshold": 4});
    container["startupProbe"] = json!({"httpGet": {"path": "/up", "port": 9090}});
    let untouched = [
        json!({"httpGet": {"path": "/", "port": 8080, "scheme": "HTTPS"}}),
        json!({"exec": {"command": ["true"]}}),
        json!({"grpc": {"port": 8080}}),
        json!({"httpGet": {"path": "/", "port": 8080, "host": "10.0.0.1"}}),
    ];
    let original = pod.clone();
    let injected_pod = injected(pod).unwrap();
    let app = &injected_pod["spec"]["containers"][0];
    assert_eq!(
        app["readinessProbe"],
        json!({"httpGet": {"path": "/app-health/app/readiness", "port": 15020}, "periodSeconds": 5, "timeoutSeconds": 3})
    );
    assert_eq!(
        app["livenessProbe"],
        json!({"failureThreshold": 4, "httpGet": {"path": "/app-health/app/liveness", "port": 15020}})
    );
    assert_eq!(
        app["startupProbe"], original["spec"]["containers"][0]["startupProbe"],
        "excluded port"
    );

    let config = sidecar_config(&injected_pod);
    let readiness = &config.admin.app_probes["app/readiness"];
    assert_eq!(
        (readiness.port, readiness.path.as_deref()),
        (8080, Some("/healthz"))
    );
    assert_eq!(
        (
            readiness.headers[0].name.as_str(),
            readiness.headers[0].value.as_str()
        ),
        ("X-Probe", "yes")
    );
    assert_eq!(readiness.timeout, std::time::Duration::from_secs(3));
    let liveness = &config.admin.app_probes["app/liveness"];
    assert_eq!((liveness.port, liveness.path.as_deref()), (8080, None));
    assert_eq!(config.admin.app_probes.len(), 2);

    // Re-injection restores the originals first: the result does not change.
    assert_eq!(injected(injected_pod.clone()).unwrap(), injected_pod);

    for probe in untouched {
        let mut pod = template(json!({}));
        pod["spec"]["containers"][0]["readinessProbe"] = probe.clone();
        let injected_pod = injected(pod).unwrap();
        assert_eq!(
            injected_pod["spec"]["containers"][0]["readinessProbe"],
            probe
        );
        assert!(sidecar_config(&injected_pod).admin.app_probes.is_empty());
    }

    let mut unknown_port = template(json!({}));
    unknown_port["spec"]["containers"][0]["livenessProbe"] = json!({"tcpSocket": {"port": "grpc"}});
    let error = injected(unknown_port).unwrap_err();
    assert!(
        error.contains("spec.containers[app].livenessProbe: the port"),
        "{error}"
    );
}

#[test]
fn reinjection_keeps_later_probe_edits_and_follows_renames() {
    let mut pod = template(json!({}));
    pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "healthz", "port": 8080}, "periodSeconds": 5});
    pod["spec"]["containers"][0]["livenessProbe"] = json!({"tcpSocket": {"port": 8080}});
    let once = injected(pod).unwrap();
    let config = sidecar_config(&once);
    assert_eq!(
        config.admin.app_probes["app/readiness"].path.as_deref(),
        Some("/healthz"),
        "the kubelet's leading slash"
    );

    // Edited after injection: a new period, and an exec probe instead of the TCP one.
    let mut edited = once.clone();
    edited["spec"]["containers"][0]["readinessProbe"]["periodSeconds"] = json!(30);
    edited["spec"]["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["true"]}});
    let again = injected(edited).unwrap();
    let app = &again["spec"]["containers"][0];
    assert_eq!(app["readinessProbe"]["periodSeconds"], 30);
    assert_eq!(app["livenessProbe"], json!({"exec": {"command": ["true"]}}));
    assert!(
        sidecar_config(&again)
            .admin
            .app_probes
            .contains_key("app/readiness")
    );
    assert!(
        !sidecar_config(&again)
            .admin
            .app_probes
            .contains_key("app/liveness")
    );

    // Renamed: the probes are found by the name in their path, and move with it.
    let mut renamed = once.clone();
    renamed["spec"]["containers"][0]["name"] = json!("web");
    let again = injected(renamed).unwrap();
    assert_eq!(
        again["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/app-health/web/readiness"
    );
    assert_eq!(
        sidecar_config(&again).admin.app_probes["web/readiness"].port,
        8080
    );

    // A probe that points at the sidecar with no record of the original is refused.
    let mut orphan = once.clone();
    orphan["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .shift_remove("airlock.dev/app-probes");
    let error = injected(orphan).unwrap_err();
    assert!(error.contains("holds no original"), "{error}");
}

#[test]
fn probe_paths_are_requested_as_the_kubelet_would_and_native_sidecars_count() {
    let mut pod = template(json!({}));
    pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/start up", "port": 8080}});
    pod["spec"]["initContainers"] = json!([
        {"name": "cache", "image": "cache:1", "restartPolicy": "Always",
         "startupProbe": {"tcpSocket": {"port": 6379}}},
        {"name": "migrate", "image": "db:1"},
    ]);
    let injected_pod = injected(pod).unwrap();
    let probes = sidecar_config(&injected_pod).admin.app_probes;
    assert_eq!(probes["app/readiness"].path.as_deref(), Some("/start%20up"));
    assert_eq!(probes["cache/startup"].port, 6379);
    assert_eq!(
        injected_pod["spec"]["initContainers"][2]["startupProbe"]["httpGet"]["path"],
        "/app-health/cache/startup"
    );

    let mut bad_header = template(json!({}));
    bad_header["spec"]["containers"][0]["readinessProbe"] = json!({"httpGet": {
        "path": "/", "port": 8080, "httpHeaders": [{"name": "bad name", "value": "x"}]}});
    let error = injected(bad_header).unwrap_err();
    assert!(
        error.contains("readinessProbe.httpGet.httpHeaders"),
        "{error}"
    );
}

#[test]
fn with_a_controller_the_sidecar_subscribes_and_caches_in_an_empty_dir() {
    let mut with_controller = options();
    with_controller.controller = Some(airlock_inject::Controller {
        url: "https://airlock-control.airlock-system.svc:15010".into(),
        identity: "spiffe://cluster.local/ns/airlock-system/sa/airlock-control"
            .parse()
            .unwrap(),
    });
    let mut pod = template(json!({}));
    inject_template(&mut pod, "shop", &with_controller).unwrap();
    let config = sidecar_config(&pod);
    let discovery = config.discovery.expect("the discovery section");
    assert_eq!(
        discovery.url,
        "https://airlock-control.airlock-system.svc:15010"
    );
    assert_eq!(
        discovery.cache_file.unwrap().to_str(),
        Some("/var/run/airlock/discovery/view.pb")
    );
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "airlock-discovery")
        .expect("the cache's volume");
    assert!(volume["emptyDir"].is_object(), "{volume}");
    let sidecar = &pod["spec"]["initContainers"][1];
    assert_eq!(sidecar["name"], "airlock-proxy");
    assert!(
        sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "airlock-discovery"
                && m["mountPath"] == "/var/run/airlock/discovery"
                && m.get("readOnly").is_none()),
        "{sidecar}"
    );
    // The control: without a controller, neither the section nor the volume.
    let plain = injected(template(json!({}))).unwrap();
    assert!(sidecar_config(&plain).discovery.is_none());
    assert!(!plain.to_string().contains("airlock-discovery"));
}

#[test]
fn policy_reviews_refuse_what_the_loader_refuses_with_its_message() {
    let kind =
        json!({"group": "airlock.dev", "version": "v1alpha1", "kind": "AuthorizationPolicy"});
    let object = |spec: Value| {
        json!({"apiVersion": "airlock.dev/v1alpha1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "api", "namespace": "shop", "uid": "x", "generation": 3}, "spec": spec})
    };
    let request = |operation: &str, object: Value| {
        admission(
            json!({"uid": "u-2", "kind": kind, "operation": operation, "namespace": "shop", "object": object}),
        )
    };
    let good = json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/shop/sa/web"]}}]}]});
    let bad_action = json!({"action": "PERMIT", "rules": [{}]});
    let bad_principal = json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["spiffe://Cluster.local/x"]}}]}]});
    let unknown_field = json!({"action": "ALLOW", "rulez": [{}]});
    // (request, allowed, words of the refusal)
    let cases = [
        (request("CREATE", object(good.clone())), true, ""),
        (request("UPDATE", object(good)), true, ""),
        (
            request("CREATE", object(bad_action)),
            false,
            "AuthorizationPolicy shop/api:7:11: spec.action: unknown variant `PERMIT`",
        ),
        (request("UPDATE", object(bad_principal)), false, "lowercase"),
        (
            request("CREATE", object(unknown_field)),
            false,
            "unknown field `rulez`",
        ),
        (request("DELETE", Value::Null), true, ""),
    ];
    for (body, allowed, words) in cases {
        let (status, answer) = airlock_inject::review_policy(&body);
        assert_eq!(status, 200);
        let response = &answer["response"];
        assert_eq!(response["uid"], "u-2");
        assert_eq!(response["allowed"], allowed, "{answer}");
        if !allowed {
            let message = response["status"]["message"].as_str().unwrap();
            assert!(
                message.starts_with("airlock: ") && message.contains(words),
                "{message}"
            );
            assert_eq!(response["status"]["code"], 422);
        }
    }
}
