//! `airlock proxy --config F` refuses bad configuration with one clear error, exit 2,
//! before binding anything.

use airlock_testkit::*;

fn refuses(yaml: &str, fragments: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(&config, yaml).unwrap();
    let err = fails_with(airlock().args(["proxy", "--config"]).arg(&config), 2);
    assert!(err.contains("sidecar.yaml"), "the file is named: {err}");
    for fragment in fragments {
        assert!(err.contains(fragment), "missing {fragment:?} in: {err}");
    }
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
}

const IDENTITY: &str = "identity:\n  trust_domain: td\n  ca_url: https://127.0.0.1:1\n  ca_bundle: b.pem\n  token_file: t\n";

#[test]
fn bad_configs_are_one_error_with_position_and_exit_2() {
    refuses(
        &format!("{IDENTITY}inbound:\n  listen: 127.0.0.1:1\n  portz: []\n"),
        &[":8:", "unknown field `portz`"],
    );
    refuses(
        &format!("{IDENTITY}inbound:\n  ports:\n  - {{port: 8080, protocol: udp}}\n"),
        &[":8:", "udp"],
    );
    refuses(
        &format!("{IDENTITY}limits:\n  idle_timeout: forever\n"),
        &["limits.idle_timeout", "\"forever\"", "expected a duration"],
    );
    refuses(
        &format!("{IDENTITY}policy:\n  default: permit\n"),
        &["permit", "allow-mesh"],
    );
    refuses(
        "identity:\n  trust_domain: TD\n  ca_url: x\n  ca_bundle: b\n  token_file: t\n",
        &[":2:", "lowercase"],
    );
    refuses(
        &format!("{IDENTITY}admin:\n  listen: 0.0.0.0:15000\n"),
        &["admin.listen", "loopback"],
    );
    refuses(
        &format!(
            "{IDENTITY}outbound:\n  upstreams:\n  - {{listen: 127.0.0.1:9001, service: payments, port: 8080}}\n"
        ),
        &["service \"payments\"", "not in the registry"],
    );
    refuses(
        &format!(
            "{IDENTITY}registry:\n  payments:\n    identity: spiffe://other/ns/a/sa/b\n    endpoints: [127.0.0.1:15008]\n"
        ),
        &["registry.payments.identity", "outside trust domain td"],
    );
    refuses(
        &format!("{IDENTITY}inbound:\n  ports:\n  - {{port: 80}}\n  - {{port: 80}}\n"),
        &["port 80 is listed twice"],
    );
    refuses(
        &format!("{IDENTITY}outbound:\n  http:\n    max_concurrent_requests: 0\n"),
        &["outbound.http.max_concurrent_requests must be at least 1"],
    );
    refuses(
        &format!("{IDENTITY}inbound:\n  ports:\n  - {{port: 80, http: {{max_headers: 0}}}}\n"),
        &["inbound.ports[80].http.max_headers must be at least 1"],
    );
}

#[test]
fn a_missing_bundle_is_a_failure_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(&config, IDENTITY).unwrap();
    let err = fails_with(airlock().args(["proxy", "--config"]).arg(&config), 1);
    assert!(
        err.contains("identity.ca_bundle") && err.contains("b.pem"),
        "{err}"
    );
}

#[test]
fn the_shipped_sidecar_examples_are_valid() {
    for name in ["payments", "checkout"] {
        let path = std::path::Path::new("examples/sidecars").join(format!("{name}.yaml"));
        let config = airlock_proxy::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.identity.trust_domain.as_str(), "demo.airlock");
    }
}

#[test]
fn registry_file_adds_services_and_its_errors_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.yaml");
    let registry = dir.path().join("registry.yaml");
    let load = |registry_text: Option<&str>, status: i32| {
        match registry_text {
            Some(text) => std::fs::write(&registry, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&registry);
            }
        }
        std::fs::write(
            &config,
            format!(
                "{IDENTITY}registry_file: registry.yaml\nregistry:\n  checkout:\n    identity: spiffe://td/ns/shop/sa/checkout\n    endpoints: [127.0.0.1:15008]\noutbound:\n  upstreams:\n  - {{listen: 127.0.0.1:9001, service: payments, port: 8080}}\n"
            ),
        )
        .unwrap();
        fails_with(airlock().args(["proxy", "--config"]).arg(&config), status)
    };
    let payments =
        "payments:\n  identity: spiffe://td/ns/pay/sa/payments\n  endpoints: [127.0.0.2:15008]\n";

    // The upstream's service comes from the registry file: the config is accepted, and
    // start-up goes on to the (missing) bundle.
    let err = load(Some(payments), 1);
    assert!(err.contains("identity.ca_bundle"), "{err}");
    // Without the file, the upstream's service is unknown.
    let err = load(None, 2);
    assert!(
        err.contains("service \"payments\"") && err.contains("not in the registry"),
        "{err}"
    );
    // Errors inside the registry file carry its name and position.
    let err = load(
        Some("payments:\n  identity: spiffe://td/ns/pay/sa/payments\n  endpoint: []\n"),
        2,
    );
    assert!(
        err.contains("registry.yaml:3:") && err.contains("endpoint"),
        "{err}"
    );
    // A service in both places is an error naming both files.
    let err = load(
        Some(&format!(
            "{payments}checkout:\n  identity: spiffe://td/ns/shop/sa/checkout\n  endpoints: [127.0.0.3:15008]\n"
        )),
        2,
    );
    assert!(
        err.contains("\"checkout\"")
            && err.contains("registry.yaml")
            && err.contains("sidecar.yaml"),
        "{err}"
    );
    // Entries of the file are checked like the config's own.
    let err = load(
        Some(
            "payments:\n  identity: spiffe://other/ns/pay/sa/payments\n  endpoints: [127.0.0.2:15008]\n",
        ),
        2,
    );
    assert!(err.contains("outside trust domain td"), "{err}");
}
