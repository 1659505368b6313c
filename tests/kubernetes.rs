//! Kubernetes, offline: `airlock inject` on manifests of every workload kind, the
//! `airlock injector` webhook answering real AdmissionReviews over HTTPS, the deploy/
//! manifests, and the CA started the way deploy/ca.yaml starts it. Independent tools
//! judge the output: `kubernetes-validate --strict` (the API's own OpenAPI schemas),
//! PyYAML, python-json-patch, curl and openssl.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use airlock_config::{AppProbe, Config, IdentityConfig, PortProtocol, ProbeHeader, Upstream};
use airlock_testkit::*;

const WORKLOADS: &str = "tests/k8s/workloads.yaml";
/// The oldest release with native sidecars on by default that we support, and the newest.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.33.0", "1.37.0"];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `kubernetes-validate --strict` for every supported Kubernetes version.
fn validate_strict(files: &[PathBuf]) {
    for version in KUBERNETES_VERSIONS {
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(files)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubernetes-validate is missing ({e}); install it with `python3 -m pip install -r tests/tools/requirements.txt` (or run tests/setup.sh)"
                )
            });
        assert!(
            output.status.success(),
            "kubernetes-validate --strict -k {version} {files:?}:\n{}{}",
            stdout(&output),
            stderr(&output)
        );
    }
}

/// The documents of a YAML stream, cut at `---` lines.
fn documents(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            documents.push(String::new());
        }
        documents.last_mut().unwrap().push_str(line);
    }
    documents
}

fn inject(args: &[&str]) -> Command {
    let mut command = airlock();
    command.arg("inject").args(args);
    command
}

/// The inbound ports of the sidecar configuration injected into a workload `document`,
/// as the sidecar reads them.
fn injected_ports(document: &str) -> Vec<(u16, PortProtocol)> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), document).unwrap();
    let workload: serde_json::Value = serde_json::from_str(&ok(python("k8s_check.py")
        .arg("yaml-json")
        .arg(file.path())))
    .unwrap();
    let config =
        workload["spec"]["template"]["metadata"]["annotations"]["airlock.dev/sidecar-config"]
            .as_str()
            .expect("a sidecar configuration annotation");
    std::fs::write(file.path(), config).unwrap();
    let config = Config::load(file.path()).unwrap_or_else(|e| panic!("{e}\n{config}"));
    config
        .inbound
        .ports
        .iter()
        .map(|port| (port.port, port.protocol))
        .collect()
}

#[test]
fn inject_rewrites_every_workload_kind_and_nothing_else() {
    let input = std::fs::read_to_string(repo(WORKLOADS)).unwrap();
    let output = run(inject(&["-f", WORKLOADS, "-n", "apps"]).current_dir(repo(".")));
    assert!(output.status.success(), "{}", stderr(&output));
    let injected = stdout(&output);
    let report = stderr(&output);
    for line in [
        "injected Deployment shop/web as spiffe://cluster.local/ns/shop/sa/web",
        "injected StatefulSet apps/db as spiffe://cluster.local/ns/apps/sa/default",
        "injected CronJob finance/reconcile as spiffe://cluster.local/ns/finance/sa/reconcile",
        "skipped Pod apps/legacy-probe: annotated airlock.dev/inject: \"false\"",
        "skipped Pod kube-system/node-agent: hostNetwork",
    ] {
        assert!(report.contains(line), "{line:?} not in:\n{report}");
    }

    // Documents without pods, and skipped pods, come out byte for byte.
    let (before, after) = (documents(&input), documents(&injected));
    assert_eq!(before.len(), after.len());
    let kept: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] == after[i])
        .collect();
    assert_eq!(
        kept,
        [0, 1, 9, 10],
        "ConfigMap, Service and the two skipped pods"
    );
    assert!(after[0].contains("name: settings   # a comment that must survive"));

    // PyYAML reads every injected template; the checker holds each to the contract.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &injected).unwrap();
    let identities: serde_json::Value =
        serde_json::from_str(&ok(python("k8s_check.py").arg("pods").arg(file.path()))).unwrap();
    assert_eq!(identities.as_object().unwrap().len(), 7, "{identities}");
    assert_eq!(
        identities["DaemonSet ops/agent"],
        "spiffe://cluster.local/ns/ops/sa/agent"
    );
    // Read as kubectl reads YAML (PyYAML, YAML 1.1: plain 0400 is octal, quoted "on" a
    // string, merge keys applied), the output is the input plus airlock's additions.
    ok(python("k8s_check.py")
        .arg("same")
        .arg(repo(WORKLOADS))
        .arg(file.path()));
    // User fields keep their values and types ("false" stays a string).
    let deployment = after[2].as_str();
    assert!(
        deployment.contains("value: s3cr3t-do-not-log"),
        "{deployment}"
    );
    assert!(deployment.contains("value: \"false\""), "{deployment}");
    assert!(deployment.contains("defaultMode: 256"), "{deployment}");
    // A containerPort named `http` is served as HTTP (every request authorized), an
    // unnamed one is detected; the sidecar accepts the configuration as written.
    assert_eq!(injected_ports(deployment), [(8080, PortProtocol::Http)]);
    assert_eq!(injected_ports(&after[3]), [(5432, PortProtocol::Auto)]);

    validate_strict(&[file.path().to_owned()]);

    // Idempotent, from a file or from standard input.
    let mut again = inject(&["-f", "-", "-n", "apps"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    again
        .stdin
        .take()
        .unwrap()
        .write_all(injected.as_bytes())
        .unwrap();
    let again = again.wait_with_output().unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), injected, "injecting twice changes nothing");

    // The capture container's arguments, as injected, are ones `airlock init-capture`
    // accepts, exclusions included.
    std::fs::write(file.path(), deployment).unwrap();
    let deployment: serde_json::Value = serde_json::from_str(&ok(python("k8s_check.py")
        .arg("yaml-json")
        .arg(file.path())))
    .unwrap();
    let capture = &deployment["spec"]["template"]["spec"]["initContainers"][0];
    let args: Vec<&str> = capture["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let dry_run = ok(airlock().args(&args).arg("--dry-run"));
    for rule in [
        "--uid-owner 1337",
        "169.254.169.254/32",
        "--dport 5432",
        "--dport 9100",
    ] {
        assert!(dry_run.contains(rule), "{rule} not in:\n{dry_run}");
    }

    // The sidecar's arguments, as injected, accept the annotation's configuration (start-up
    // gets past it to the bundle, absent here) and refuse it once it has been edited.
    let template = &deployment["spec"]["template"];
    let scratch = tempfile::tempdir().unwrap();
    let config_file = scratch.path().join("config.yaml");
    let config = template["metadata"]["annotations"]["airlock.dev/sidecar-config"]
        .as_str()
        .unwrap();
    let config_path = config_file.to_str().unwrap();
    let sidecar_args: Vec<&str> = template["spec"]["initContainers"][1]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .map(|a| {
            if a == "/etc/airlock/config/config.yaml" {
                config_path
            } else {
                a
            }
        })
        .collect();
    std::fs::write(&config_file, config).unwrap();
    let error = fails_with(airlock().args(&sidecar_args), 1);
    assert!(error.contains("identity.ca_bundle"), "{error}");
    std::fs::write(
        &config_file,
        config.replace("default: deny", "default: allow-all"),
    )
    .unwrap();
    let error = fails_with(airlock().args(&sidecar_args), 2);
    assert!(error.contains("changed after it was pinned"), "{error}");
}

#[test]
fn inject_refuses_bad_input_with_one_error_and_no_output() {
    let pod = |annotations: &str, spec: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\n  annotations: {{{annotations}}}\nspec:\n  {spec}\n  containers: [{{name: app, image: app}}]\n"
        )
    };
    let cases = [
        (
            pod("", "securityContext: {runAsUser: 1337}"),
            "Pod shop/p: spec.securityContext.runAsUser is 1337",
        ),
        (
            pod("airlock.dev/mode: open", "serviceAccountName: p"),
            "metadata.annotations.airlock.dev/mode: \"open\"",
        ),
        (
            pod(
                "airlock.dev/inbound-ports: \"15008\"",
                "serviceAccountName: p",
            ),
            "app port 15008",
        ),
        (
            "kind: Deployment\nmetadata: {name: d}\nspec: {}\n".to_owned(),
            "Deployment default/d: spec.template is missing",
        ),
        (
            "kind: Service\n---\nkind: Pod\nmetadata: {name: [}\n".to_owned(),
            "document at line 2: line 4 column",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in cases {
        let file = dir.path().join("in.yaml");
        std::fs::write(&file, &text).unwrap();
        let output = run(inject(&["-f"]).arg(&file));
        assert_eq!(output.status.code(), Some(1), "{text}");
        let error = stderr(&output);
        assert!(
            error.contains("in.yaml") && error.contains(expected),
            "{expected:?} not in {error:?}"
        );
        assert_eq!(error.lines().count(), 1, "{error}");
        assert!(output.stdout.is_empty(), "nothing is written on error");
    }
    let error = fails_with(&mut inject(&["-f", WORKLOADS, "-n", "a/b"]), 1);
    assert!(
        error.contains("namespace \"a/b\" is not a Kubernetes namespace name"),
        "{error}"
    );
    let error = fails_with(&mut inject(&["-f", "/nonexistent/pods.yaml"]), 1);
    assert!(error.contains("/nonexistent/pods.yaml"), "{error}");
    let error = fails_with(
        &mut inject(&["-f", WORKLOADS, "--ca-url", "http://ca:15012"]),
        2,
    );
    assert!(error.contains("--ca-url"), "{error}");
}

/// Sends `pod_yaml` to the webhook as a CREATE review, applies the answer's patch with
/// python-json-patch, checks that the result is what `airlock inject` writes and that it
/// is valid, and returns it.
fn webhook_matches_cli(
    injector: &Injector,
    dir: &Path,
    uid: &str,
    pod_yaml: &str,
) -> serde_json::Value {
    let pod_file = dir.join("pod.yaml");
    std::fs::write(&pod_file, pod_yaml).unwrap();
    let pod: serde_json::Value =
        serde_json::from_str(&ok(python("k8s_check.py").arg("yaml-json").arg(&pod_file))).unwrap();
    let review_file = dir.join("review.json");
    std::fs::write(
        &review_file,
        admission_review(uid, "Pod", "CREATE", pod.clone()),
    )
    .unwrap();
    let (status, answer) = injector.review(&review_file);
    assert_eq!(status, 200, "{answer}");
    let response = &answer["response"];
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");

    let answer_file = dir.join("answer.json");
    std::fs::write(&answer_file, answer.to_string()).unwrap();
    let object_file = dir.join("object.json");
    std::fs::write(&object_file, pod.to_string()).unwrap();
    let patched: serde_json::Value = serde_json::from_str(&ok(python("k8s_check.py")
        .arg("patch")
        .arg(&answer_file)
        .arg(&object_file)))
    .unwrap();
    let cli_file = dir.join("cli.yaml");
    std::fs::write(&cli_file, ok(inject(&["-n", "shop", "-f"]).arg(&pod_file))).unwrap();
    let from_cli: serde_json::Value =
        serde_json::from_str(&ok(python("k8s_check.py").arg("yaml-json").arg(&cli_file))).unwrap();
    assert_eq!(patched, from_cli, "webhook and CLI make the same pod");
    let patched_file = dir.join("patched.yaml");
    std::fs::write(&patched_file, patched.to_string()).unwrap();
    ok(python("k8s_check.py").arg("pods").arg(&patched_file));
    validate_strict(&[patched_file]);
    patched
}

fn admission_review(uid: &str, kind: &str, operation: &str, object: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": format!("{}s", kind.to_lowercase())},
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "dryRun": false,
        }
    })
    .to_string()
}

#[test]
fn the_webhook_answers_admission_reviews_like_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let injector = Injector::start(dir.path());
    let certs = &injector.certs;
    let verify = ok(Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(certs.join("ca.crt"))
        .arg(certs.join("tls.crt")));
    assert!(verify.contains(": OK"), "{verify}");
    assert_eq!(
        std::fs::metadata(certs.join("tls.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(injector.curl("/healthz", &[]).0, 200);
    assert_eq!(injector.curl("/elsewhere", &[]).0, 404);
    assert_eq!(injector.curl("/inject", &[]).0, 405);

    // Pods as the ReplicaSet controller creates them (namespace in the request only):
    // a bare one, one with init containers and volumes of its own (the patch replaces
    // arrays), and one injected already (reinvocation: nothing to change).
    let bare = "apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: web-7d4b9-\n  labels: {app: web}\n  annotations: {airlock.dev/inbound-ports: \"8080/http\"}\nspec:\n  serviceAccountName: web\n  containers:\n  - name: app\n    image: web:1.2\n    ports: [{containerPort: 8080}]\n    env: [{name: DB_PASSWORD, value: s3cr3t-do-not-log}]\n";
    let with_init = "apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: db-\n  annotations: {}\nspec:\n  initContainers: [{name: migrate, image: db:2, args: [migrate]}]\n  volumes: [{name: data, emptyDir: {}}]\n  containers: [{name: db, image: db:2, ports: [{containerPort: 5432}]}]\n";
    let review_file = dir.path().join("review.json");
    let mut pod = serde_json::Value::Null;
    for (index, pod_yaml) in [bare, with_init].into_iter().enumerate() {
        pod = webhook_matches_cli(&injector, dir.path(), &format!("u-{index}"), pod_yaml);
        let injected = pod.clone();
        std::fs::write(
            &review_file,
            admission_review("u-again", "Pod", "CREATE", injected),
        )
        .unwrap();
        let (status, answer) = injector.review(&review_file);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert!(
            answer["response"].get("patch").is_none(),
            "reinvocation changes nothing: {answer}"
        );
    }

    // Kinds without pods, other operations, opted-out and host-network pods: unchanged.
    // (review, a warning expected)
    let unchanged = [
        (
            admission_review(
                "u-svc",
                "Service",
                "CREATE",
                serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}}),
            ),
            false,
        ),
        (
            admission_review("u-upd", "Pod", "UPDATE", pod.clone()),
            false,
        ),
        (
            admission_review("u-del", "Pod", "DELETE", serde_json::Value::Null),
            false,
        ),
        (
            admission_review(
                "u-out",
                "Pod",
                "CREATE",
                serde_json::json!({"kind": "Pod", "metadata": {"name": "p", "annotations": {"airlock.dev/inject": "false"}}, "spec": {"containers": []}}),
            ),
            true,
        ),
        (
            admission_review(
                "u-host",
                "Pod",
                "CREATE",
                serde_json::json!({"kind": "Pod", "metadata": {"name": "h"}, "spec": {"hostNetwork": true, "containers": []}}),
            ),
            true,
        ),
    ];
    for (body, warned) in unchanged {
        std::fs::write(&review_file, &body).unwrap();
        let (status, answer) = injector.review(&review_file);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        assert!(answer["response"].get("patch").is_none(), "{answer}");
        let warnings = answer["response"]["warnings"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(warnings > 0, warned, "{answer}");
    }

    // A pod whose app would slip past capture is refused, with the reason.
    let mut sneaky = pod.clone();
    sneaky["spec"]["securityContext"] = serde_json::json!({"runAsUser": 1337});
    std::fs::write(
        &review_file,
        admission_review("u-uid", "Pod", "CREATE", sneaky),
    )
    .unwrap();
    let (status, answer) = injector.review(&review_file);
    assert_eq!(status, 200);
    assert_eq!(answer["response"]["allowed"], false, "{answer}");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("runAsUser is 1337"), "{message}");

    // Malformed reviews: an AdmissionReview error, and the server stays up.
    for body in [
        "not json",
        "{}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"kind\":{\"kind\":\"Pod\"}}}",
    ] {
        std::fs::write(&review_file, body).unwrap();
        let (status, answer) = injector.review(&review_file);
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["kind"], "AdmissionReview", "{body}");
        assert_eq!(answer["response"]["allowed"], false, "{body}");
        assert_eq!(answer["response"]["status"]["code"], 400, "{body}");
    }
    std::fs::write(&review_file, vec![b' '; 5 * 1024 * 1024]).unwrap();
    let data = format!("@{}", review_file.display());
    assert_eq!(injector.curl("/inject", &["--data-binary", &data]).0, 413);
    assert_eq!(injector.curl("/healthz", &[]).0, 200);

    // Pod specs may carry secrets: the log says what was done, never what was in them.
    let log = std::fs::read_to_string(&injector.log).unwrap();
    assert!(
        log.contains("u-0") && log.contains("admission review"),
        "{log}"
    );
    assert!(
        !log.contains("s3cr3t"),
        "the log shows the pod's env: {log}"
    );

    // A renewed certificate (same CA: the caBundle stays valid) is served without a
    // restart.
    let ca_before = std::fs::read(certs.join("ca.crt")).unwrap();
    let serial_before = injector.served_serial();
    ok(Command::new(repo("deploy/webhook-cert.sh")).arg(certs));
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), ca_before);
    let renewed = ok(Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(certs.join("tls.crt")));
    assert_ne!(renewed.trim(), serial_before);
    wait_up_to(Duration::from_secs(30), "the renewed certificate", || {
        injector.served_serial() == renewed.trim()
    });
    assert_eq!(injector.curl("/healthz", &[]).0, 200);

    // SIGTERM: the injector drains and exits 0.
    let mut injector = injector;
    ok(Command::new("kill").args(["-TERM", &injector.child.id().to_string()]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = injector.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the injector did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn the_webhook_refuses_to_start_without_a_usable_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    ok(Command::new(repo("deploy/webhook-cert.sh")).arg(&certs));
    let other = dir.path().join("other");
    ok(Command::new(repo("deploy/webhook-cert.sh")).arg(&other));
    let cases = [
        (
            dir.path().join("missing.crt"),
            certs.join("tls.key"),
            "--cert",
        ),
        (certs.join("tls.key"), certs.join("tls.key"), "--cert"),
        (certs.join("tls.crt"), other.join("tls.key"), "--cert/--key"),
    ];
    for (cert, key, named) in cases {
        let output = run(airlock()
            .args(["injector", "--listen", "127.0.0.1:0", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key));
        assert_eq!(output.status.code(), Some(1), "{cert:?} {key:?}");
        assert!(output.stdout.is_empty(), "it never announced itself");
        assert!(stderr(&output).contains(named), "{}", stderr(&output));
    }
}

#[test]
fn the_deploy_manifests_are_valid_and_consistent() {
    let manifests: Vec<PathBuf> = [
        "ca.yaml",
        "crds.yaml",
        "control.yaml",
        "injector.yaml",
        "mesh-namespace.yaml",
    ]
    .iter()
    .map(|name| repo("deploy").join(name))
    .collect();
    validate_strict(&manifests);

    // The namespace's policies pass `airlock policy check`; its registry loads.
    let dir = tempfile::tempdir().unwrap();
    let mesh = repo("deploy/mesh-namespace.yaml");
    let data = |name: &str, key: &str| {
        ok(python("k8s_check.py")
            .arg("data")
            .arg(&mesh)
            .arg(name)
            .arg(key))
    };
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("checkout.yaml"),
        data("airlock-policies", "checkout.yaml"),
    )
    .unwrap();
    ok(airlock().args(["policy", "check"]).arg(&policies));
    std::fs::write(
        dir.path().join("registry.yaml"),
        data("airlock-registry", "registry.yaml"),
    )
    .unwrap();
    sidecar_loads_registry(dir.path(), "checkout.shop");

    // The injector's flags match the CA's settings.
    let injector = std::fs::read_to_string(repo("deploy/injector.yaml")).unwrap();
    let ca_settings = data_of(&repo("deploy/ca.yaml"), "airlock-ca-config", "ca.yaml");
    for (flag, value) in [
        ("--trust-domain", "cluster.local"),
        ("--ca-audience", "airlock-ca"),
    ] {
        assert!(
            injector.contains(&format!("- {flag}\n        - {value}\n")),
            "{flag}"
        );
    }
    // The sidecars pin the controller that deploy/control.yaml runs: its namespace and
    // service account make the identity the injector gives them, and its Service the URL.
    let control = std::fs::read_to_string(repo("deploy/control.yaml")).unwrap();
    for (flag, value) in [
        (
            "--controller-url",
            "https://airlock-control.airlock-system.svc:15010",
        ),
        (
            "--controller-identity",
            "spiffe://cluster.local/ns/airlock-system/sa/airlock-control",
        ),
    ] {
        assert!(
            injector.contains(&format!("- {flag}\n        - {value}\n")),
            "{flag}"
        );
    }
    for (flag, value) in [
        ("--trust-domain", "cluster.local"),
        ("--listen", "0.0.0.0:15010"),
        ("--ca-url", "https://airlock-ca.airlock-system.svc:15012"),
    ] {
        assert!(
            control.contains(&format!("- {flag}\n        - {value}\n")),
            "{flag}"
        );
    }
    assert!(control.contains("  name: airlock-control\n  namespace: airlock-system\n"));
    assert!(ca_settings.contains("trust_domain: cluster.local"));
    assert!(ca_settings.contains("audience: airlock-ca"));
    assert!(ca_settings.contains("- airlock-ca.airlock-system.svc\n"));
}

fn data_of(file: &Path, name: &str, key: &str) -> String {
    ok(python("k8s_check.py")
        .arg("data")
        .arg(file)
        .arg(name)
        .arg(key))
}

/// deploy/ca.yaml runs `ca serve` as UID 65532 from a read-only projected directory, and
/// a passphrase Secret, whose files the kubelet makes mode 0440, group 65532. Built here
/// the same way, the CA starts only with --allow-group-readable-keys, and then issues an
/// SVID to a pod's service-account token.
#[test]
fn the_ca_serves_from_a_kubelet_style_secret_volume() {
    const TEST: &str = "the_ca_serves_from_a_kubelet_style_secret_volume";
    let ready = prerequisite(
        TEST,
        "root (to run the CA as UID 65532)",
        is_root(),
        "sudo cargo test",
    ) && prerequisite(
        TEST,
        "`setpriv`",
        has_program("setpriv"),
        "apt-get install util-linux",
    );
    if !ready {
        return;
    }
    let ca = TestCa::init("cluster.local");
    ok(python("k8s_jwt.py").arg("keygen").arg(&ca.dir));
    let volume = ca.scratch("etc-airlock-ca");
    std::fs::create_dir(&volume).unwrap();
    for name in ["issuing.key", "issuing.pem", "root.pem", "bundle.pem"] {
        std::fs::copy(ca.path(name), volume.join(name)).unwrap();
    }
    std::fs::copy(ca.path("jwks.json"), volume.join("cluster-jwks.json")).unwrap();
    let settings = data_of(&repo("deploy/ca.yaml"), "airlock-ca-config", "ca.yaml").replace(
        "https://kubernetes.default.svc.cluster.local",
        "https://kubernetes.default.svc",
    );
    std::fs::write(volume.join("ca.yaml"), settings).unwrap();
    let passphrase = ca.scratch("etc-airlock-ca-passphrase");
    std::fs::create_dir(&passphrase).unwrap();
    std::fs::write(passphrase.join("passphrase"), PASSPHRASE).unwrap();
    let group = "65532";
    for dir in [&volume, &passphrase] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            ok(Command::new("chown")
                .arg(format!("root:{group}"))
                .arg(&path));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        }
        ok(Command::new("chown").arg(format!("root:{group}")).arg(dir));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o550)).unwrap();
    }
    // UID 65532 must reach the volume directory.
    std::fs::set_permissions(ca.temp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let serve = |extra: &[&str]| {
        let mut command = Command::new("setpriv");
        command
            .args([
                &format!("--reuid={group}"),
                &format!("--regid={group}"),
                "--clear-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_airlock"))
            .args(["ca", "serve", "--listen", "127.0.0.1:0", "--dir"])
            .arg(&volume)
            .arg("--passphrase-file")
            .arg(passphrase.join("passphrase"))
            .args(extra)
            .env_remove("AIRLOCK_CA_PASSPHRASE");
        command
    };
    let refused = run(&mut serve(&[]));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--allow-group-readable-keys"),
        "{}",
        stderr(&refused)
    );

    let log = ca.scratch("serve.log");
    let (child, line) = spawn_announcing(
        &mut serve(&["--allow-group-readable-keys"]),
        std::fs::File::create(&log).unwrap(),
    );
    let _server = ServerGuard(child);
    let url = announced_url(&line, &log);

    let (_, csr) = openssl_csr(ca.temp.path(), "web", &[]);
    let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": "https://kubernetes.default.svc", "aud": ["airlock-ca"],
        "sub": "system:serviceaccount:shop:web", "iat": now, "nbf": now - 5, "exp": now + 600,
        "kubernetes.io": {"namespace": "shop", "serviceaccount": {"name": "web", "uid": "1"}, "pod": {"name": "web-1", "uid": "2"}},
    });
    let token = ok(python("k8s_jwt.py")
        .arg("sign")
        .arg(&ca.dir)
        .arg(claims.to_string()));
    let output = run(Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca.path("bundle.pem"))
        .args(["-H", "content-type: application/json", "-H"])
        .arg(format!("authorization: Bearer {}", token.trim()))
        .arg("--data-binary")
        .arg(svid_request(&csr, None))
        .arg(format!("{url}/v1/svid")));
    let answer: serde_json::Value = serde_json::from_str(&stdout(&output))
        .unwrap_or_else(|e| panic!("{e}: {} {}", stdout(&output), stderr(&output)));
    assert_eq!(
        answer["spiffe_id"], "spiffe://cluster.local/ns/shop/sa/web",
        "{answer}"
    );
}

/// A process killed when dropped.
struct ServerGuard(std::process::Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The injector points the kubelet's probes of captured app ports at the sidecar's
/// `/app-health/<name>`; the sidecar runs them against the app over loopback.
#[test]
fn the_sidecar_runs_the_apps_probes_for_the_kubelet() {
    let ca = TestCa::init("cluster.local");
    let server = CaServer::start(&ca);
    let app_port = free_port("127.0.0.1");
    let closed_port = free_port("127.0.0.1");
    let _app = ServerGuard(
        Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import http.server, time\n\
                     probes = 0\n\
                     class H(http.server.BaseHTTPRequestHandler):\n\
                     \x20   def do_GET(self):\n\
                     \x20       global probes\n\
                     \x20       if self.path == '/count':\n\
                     \x20           self.send_response(200); self.end_headers(); self.wfile.write(str(probes).encode()); return\n\
                     \x20       if self.path == '/slow': time.sleep(5)\n\
                     \x20       ok = self.path == '/healthz' and self.headers.get('X-Probe') == 'probe-secret-7'\n\
                     \x20       if ok: probes += 1\n\
                     \x20       self.send_response(200 if ok else 500); self.end_headers()\n\
                     \x20   def log_message(self, *a): pass\n\
                     http.server.ThreadingHTTPServer(('127.0.0.1', {app_port}), H).serve_forever()\n"
                ),
            ])
            .spawn()
            .unwrap(),
    );
    wait_for("the app to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", app_port)).is_ok()
    });
    let identity = ca.identity(&server.url, "web", &ca.id("/ns/shop/sa/web"), &[]);
    let mut config = sidecar_config(identity, "127.0.0.61");
    let probe = |port: u16, path: Option<&str>| AppProbe {
        port,
        path: path.map(str::to_owned),
        headers: Vec::new(),
        timeout: Duration::from_secs(1),
    };
    config.admin.app_probes = [
        (
            "app/readiness",
            AppProbe {
                headers: vec![ProbeHeader {
                    name: "X-Probe".into(),
                    value: "probe-secret-7".into(),
                }],
                ..probe(app_port, Some("/healthz"))
            },
        ),
        ("app/liveness", probe(app_port, None)),
        ("app/startup", probe(app_port, Some("/healthz"))),
        ("app/closed", probe(closed_port, None)),
        ("app/slow", probe(app_port, Some("/slow"))),
    ]
    .into_iter()
    .map(|(name, probe)| (name.to_owned(), probe))
    .collect();
    let sidecar = Sidecar::start(&ca, "web", &config);
    let probe = |name: &str| {
        http(
            "GET",
            &format!("http://{}/app-health/{name}", sidecar.health),
        )
    };
    assert_eq!(probe("app/readiness").0, 200, "HTTP probe with its header");
    assert_eq!(probe("app/liveness").0, 200, "TCP probe");
    let (status, body) = probe("app/startup");
    assert_eq!(status, 503, "without the header the app answers 500");
    assert!(body.contains("500"), "{body}");
    let (status, body) = probe("app/closed");
    assert_eq!(status, 503);
    assert!(body.contains("connecting"), "{body}");
    let (status, body) = probe("app/slow");
    assert_eq!(status, 503);
    assert!(body.contains("did not answer"), "{body}");
    assert_eq!(probe("app/unknown").0, 404);

    // Whoever reaches the pod can ask, but the app sees each probe at most once a second.
    let count = || {
        http("GET", &format!("http://127.0.0.1:{app_port}/count"))
            .1
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    let before = count();
    let started = std::time::Instant::now();
    for _ in 0..30 {
        assert_eq!(probe("app/readiness").0, 200);
    }
    let seconds = started.elapsed().as_secs() as u32;
    let ran = count() - before;
    assert!(
        ran <= seconds + 2,
        "{ran} probe runs in {seconds}s for 30 asks"
    );

    let (status, dump) = sidecar.admin("GET", "/config_dump");
    assert_eq!(status, 200);
    assert!(dump.contains("X-Probe"), "{dump}");
    assert!(
        !dump.contains("probe-secret-7"),
        "probe header values stay out: {dump}"
    );
}

/// `airlock registry` turns `kubectl get services,pods -A -o json` into the sidecars'
/// registry: Services whose pods carry the sidecar, pinned to the pods' one service
/// account, at the ClusterIP (or, headless, the pods' IPs) on the mesh port.
#[test]
fn the_registry_is_built_from_services_and_their_meshed_pods() {
    let pod = |namespace: &str, name: &str, app: &str, account: &str, ip: &str, meshed: bool| {
        let mut pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": app, "tier": "x"}},
            "spec": {"serviceAccountName": account, "containers": [{"name": "app", "image": "app"}]},
            "status": {"podIP": ip},
        });
        if meshed {
            pod["metadata"]["annotations"] = serde_json::json!({
                "airlock.dev/identity": format!("spiffe://cluster.local/ns/{namespace}/sa/{account}")
            });
        }
        pod
    };
    let service = |namespace: &str, name: &str, selector: serde_json::Value, cluster_ip: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "clusterIP": cluster_ip, "ports": [
                {"name": "http", "port": 8080, "targetPort": 8080},
                {"name": "airlock-mesh", "port": 15008, "targetPort": 15008},
            ]},
        })
    };
    let mut remapped = service(
        "shop",
        "remapped",
        serde_json::json!({"app": "web"}),
        "10.96.0.15",
    );
    remapped["spec"]["ports"][0] = serde_json::json!({"port": 80, "targetPort": 8080});
    let mut no_mesh_port = service(
        "shop",
        "plain",
        serde_json::json!({"app": "web"}),
        "10.96.0.16",
    );
    no_mesh_port["spec"]["ports"] = serde_json::json!([{"port": 8080}]);
    // IPv6, and a mesh port whose targetPort is implied.
    let mut ipv6 = service("shop", "v6", serde_json::json!({"app": "db"}), "fd00::1");
    ipv6["spec"]["ports"] = serde_json::json!([{"port": 8080}, {"port": 15008}]);
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        pod("shop", "web-1", "web", "web", "10.244.1.5", true),
        pod("shop", "web-2", "web", "web", "10.244.1.6", true),
        pod("shop", "db-0", "db", "db", "10.244.2.7", true),
        pod("shop", "legacy-1", "legacy", "legacy", "10.244.2.8", false),
        pod("shop", "mixed-a", "mixed", "a", "10.244.2.9", true),
        pod("shop", "mixed-b", "mixed", "b", "10.244.2.10", true),
        pod("pay", "api-1", "web", "api", "10.244.3.3", true),
        service("shop", "web", serde_json::json!({"app": "web"}), "10.96.0.10"),
        service("shop", "db", serde_json::json!({"app": "db"}), "None"),
        service("shop", "legacy", serde_json::json!({"app": "legacy"}), "10.96.0.11"),
        service("shop", "mixed", serde_json::json!({"app": "mixed"}), "10.96.0.12"),
        service("shop", "external", serde_json::json!({}), "10.96.0.13"),
        service("shop", "ghost", serde_json::json!({"app": "ghost"}), "10.96.0.14"),
        service("pay", "api", serde_json::json!({"app": "web", "tier": "x"}), "10.96.0.20"),
        remapped,
        no_mesh_port,
        ipv6,
    ]});
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cluster.json");
    std::fs::write(&input, list.to_string()).unwrap();
    let output = run(airlock().args(["registry", "-f"]).arg(&input));
    assert!(output.status.success(), "{}", stderr(&output));
    let registry = dir.path().join("registry.yaml");
    std::fs::write(&registry, stdout(&output)).unwrap();
    let read: serde_json::Value =
        serde_json::from_str(&ok(python("k8s_check.py").arg("yaml-json").arg(&registry))).unwrap();
    assert_eq!(
        read,
        serde_json::json!({
            // The port named `http` is routed per request by callers.
            "api.pay": {"identity": "spiffe://cluster.local/ns/pay/sa/api", "endpoints": ["10.96.0.20:15008"], "ports": [{"port": 8080, "protocol": "http"}]},
            "db.shop": {"identity": "spiffe://cluster.local/ns/shop/sa/db", "endpoints": ["10.244.2.7:15008"], "ports": [{"port": 8080, "protocol": "http"}]},
            "web.shop": {"identity": "spiffe://cluster.local/ns/shop/sa/web", "endpoints": ["10.96.0.10:15008"], "ports": [{"port": 8080, "protocol": "http"}]},
            "v6.shop": {"identity": "spiffe://cluster.local/ns/shop/sa/db", "endpoints": ["[fd00::1]:15008"]},
        })
    );
    // The same cluster as YAML (`-o yaml`) gives the same registry.
    let as_yaml = dir.path().join("cluster.yaml");
    ok(Command::new("python3")
        .args(["-c", "import json, sys, yaml; yaml.safe_dump(json.load(open(sys.argv[1])), open(sys.argv[2], 'w'))"])
        .arg(&input)
        .arg(&as_yaml));
    assert_eq!(
        ok(airlock().args(["registry", "-f"]).arg(&as_yaml)),
        stdout(&output)
    );
    // Input that holds no cluster state is an error, never an empty registry.
    for bad in [
        "",
        "hello",
        "[]",
        "{\"kind\": \"Status\"}",
        "{\"kind\": \"List\"",
    ] {
        std::fs::write(&as_yaml, bad).unwrap();
        let refused = run(airlock().args(["registry", "-f"]).arg(&as_yaml));
        assert_eq!(
            refused.status.code(),
            Some(1),
            "{bad:?}: {}",
            stdout(&refused)
        );
        assert!(refused.stdout.is_empty(), "{bad:?}");
        assert!(
            stderr(&refused).contains("cluster.yaml"),
            "{bad:?}: {}",
            stderr(&refused)
        );
    }
    let report = stderr(&output);
    for line in [
        "skipped Service shop/legacy: pod legacy-1 has no airlock sidecar",
        "skipped Service shop/mixed: its pods run as several service accounts (a, b)",
        "skipped Service shop/external: no selector",
        "skipped Service shop/ghost: it selects no pod",
        "skipped Service shop/remapped: port 80 has another targetPort",
        "skipped Service shop/plain: it does not expose the mesh port (15008",
    ] {
        assert!(report.contains(line), "{line:?} not in:\n{report}");
    }

    sidecar_loads_registry(dir.path(), "web.shop");
}

/// `airlock proxy` accepts `dir/registry.yaml` as its registry_file, with an upstream to
/// `service` (which must be in it): start-up gets past the config and stops at the
/// missing bundle.
fn sidecar_loads_registry(dir: &Path, service: &str) {
    let mut sidecar = Config::new(IdentityConfig::new(
        "cluster.local".parse().unwrap(),
        "https://127.0.0.1:1",
        "bundle.pem",
        "token",
    ));
    sidecar.registry_file = Some("registry.yaml".into());
    sidecar.outbound.upstreams.push(Upstream {
        listen: "127.0.0.1:9001".parse().unwrap(),
        service: service.to_owned(),
        port: 8080,
    });
    let config = dir.join("sidecar.yaml");
    std::fs::write(&config, sidecar.to_yaml()).unwrap();
    let error = fails_with(airlock().args(["proxy", "--config"]).arg(&config), 1);
    assert!(error.contains("identity.ca_bundle"), "{error}");
}
