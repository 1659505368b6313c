//! The controller against a real Kubernetes cluster, when `AIRLOCK_TEST_KUBECONFIG`
//! names one (kind, k3d or any test cluster you may write to); otherwise it says so and
//! does nothing. It needs `kubectl` and leaves nothing behind: it installs the CRD
//! (deploy/crds.yaml), works in a namespace of its own and deletes that namespace.
//!
//! The controller runs here, outside the cluster, with a local test CA for its SVID; the
//! cluster gives it what it watches. What is checked is the API wiring a fake cannot
//! prove: the real list/watch of the four kinds, RBAC-shaped writes of the policy status
//! through the status subresource, and Events the API server accepts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use airlock_testkit::*;
use serde_json::Value;

const KUBECONFIG: &str = "AIRLOCK_TEST_KUBECONFIG";

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    ok(Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args))
}

/// The test namespace, deleted (and waited for) on drop.
struct Namespace<'a> {
    name: String,
    kubeconfig: &'a Path,
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig)
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=true",
                "--timeout=60s",
            ])
            .status();
    }
}

fn apply(kubeconfig: &Path, dir: &Path, yaml: &str) {
    let file = dir.join("object.yaml");
    std::fs::write(&file, yaml).unwrap();
    kubectl(kubeconfig, &["apply", "-f", file.to_str().unwrap()]);
}

/// The policy `api` of `namespace` with `rules`.
fn policy(namespace: &str, rules: &str) -> String {
    format!(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: api, namespace: {namespace}}}\n\
         spec:\n  selector: {{identities: [spiffe://cluster.local/ns/{namespace}/sa/api]}}\n  action: ALLOW\n  rules: {rules}\n"
    )
}

#[test]
fn the_controller_follows_a_real_cluster() {
    let Ok(kubeconfig) = std::env::var(KUBECONFIG) else {
        println!(
            "SKIPPED the_controller_follows_a_real_cluster: set {KUBECONFIG} to a kubeconfig of a test cluster (with kubectl on PATH) to run it"
        );
        return;
    };
    let kubeconfig = Path::new(&kubeconfig);
    assert!(
        Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .is_ok(),
        "{KUBECONFIG} is set but kubectl is missing"
    );
    let ca = TestCa::init("cluster.local");
    let ca_server = CaServer::start(&ca);
    kubectl(
        kubeconfig,
        &[
            "apply",
            "-f",
            repo().join("deploy/crds.yaml").to_str().unwrap(),
        ],
    );
    kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "crd/authorizationpolicies.airlock.dev",
            "--timeout=60s",
        ],
    );
    let namespace = Namespace {
        name: format!("airlock-test-{}", std::process::id()),
        kubeconfig,
    };
    let ns = namespace.name.as_str();
    kubectl(kubeconfig, &["create", "namespace", ns]);
    apply(kubeconfig, ca.temp.path(), &policy(ns, "[{}]"));

    let controller = Controller::start_with(
        &ca,
        &ca_server.url,
        "kubernetes",
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let status = |kubeconfig: &Path| -> Value {
        let text = kubectl(
            kubeconfig,
            &["get", "authorizationpolicy", "api", "-n", ns, "-o", "json"],
        );
        serde_json::from_str::<Value>(&text).unwrap()["status"].clone()
    };
    wait_up_to(
        Duration::from_secs(60),
        "the policy accepted in its status",
        || {
            let status = status(kubeconfig);
            status["conditions"][0]["status"] == "True"
                && status["acceptedSpec"]["action"] == "ALLOW"
        },
    );

    // Without the validating webhook installed, an edit that passes the schema but not
    // the loader (a `when` key it does not know) gets in: the controller
    // reports it on the object and in an Event, and keeps the accepted version.
    apply(
        kubeconfig,
        ca.temp.path(),
        &policy(ns, "[{when: [{key: request.cookie, values: [x]}]}]"),
    );
    wait_up_to(Duration::from_secs(60), "the invalid edit reported", || {
        let status = status(kubeconfig);
        status["conditions"][0]["status"] == "False" && status["acceptedSpec"]["action"] == "ALLOW"
    });
    wait_up_to(Duration::from_secs(60), "an InvalidPolicy Event", || {
        kubectl(
            kubeconfig,
            &["get", "events.events.k8s.io", "-n", ns, "-o", "json"],
        )
        .contains("InvalidPolicy")
    });
    assert!(
        controller
            .metrics()
            .contains("airlock_control_invalid_objects 1")
    );
}
