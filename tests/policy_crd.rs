//! deploy/crds.yaml's AuthorizationPolicy schema and the policy loader, kept in step:
//! the schema names exactly the fields the loader reads, at every level; every example
//! policy, as a custom resource, passes the schema (checked by Python `jsonschema`, not
//! by airlock); and what the schema can refuse, it refuses as the loader does.

use std::path::Path;

use airlock_testkit::*;
use serde_json::{Value, json};

const HEAD: &str = "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\n";

fn crd() -> Value {
    let text = ok(python("k8s_check.py")
        .arg("yaml-json")
        .arg(repo().join("deploy/crds.yaml")));
    serde_json::from_str(&text).unwrap()
}

/// The loader's list of the fields it reads where `spec_text` puts the unknown `zzz`.
fn loader_fields(spec_text: &str) -> Vec<String> {
    let document = format!("{HEAD}spec:\n{spec_text}");
    let errors = airlock_policy::load::parse_text(Path::new("p.yaml"), &document).unwrap_err();
    let message = errors[0].to_string();
    assert!(message.contains("unknown field `zzz`"), "{message}");
    let expected = message
        .split("expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("{message}"));
    let mut fields: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    fields.sort();
    fields
}

fn schema_fields(schema: &Value) -> Vec<String> {
    let mut fields: Vec<String> = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties in {schema}"))
        .keys()
        .cloned()
        .collect();
    fields.sort();
    fields
}

#[test]
fn the_schema_names_exactly_the_fields_the_loader_reads() {
    let crd = crd();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rule = &spec["properties"]["rules"]["items"];
    let from = &rule["properties"]["from"]["items"];
    let to = &rule["properties"]["to"]["items"];
    // (where, a spec with the unknown field `zzz` there, the schema of that place)
    let levels = [
        ("spec", "  zzz: 1\n  action: ALLOW\n", spec),
        (
            "selector",
            "  selector: {zzz: 1}\n  action: ALLOW\n",
            &spec["properties"]["selector"],
        ),
        ("rule", "  action: ALLOW\n  rules:\n  - zzz: 1\n", rule),
        (
            "from entry",
            "  action: ALLOW\n  rules:\n  - from: [{zzz: 1}]\n",
            from,
        ),
        (
            "source",
            "  action: ALLOW\n  rules:\n  - from: [{source: {zzz: 1}}]\n",
            &from["properties"]["source"],
        ),
        (
            "to entry",
            "  action: ALLOW\n  rules:\n  - to: [{zzz: 1}]\n",
            to,
        ),
        (
            "operation",
            "  action: ALLOW\n  rules:\n  - to: [{operation: {zzz: 1}}]\n",
            &to["properties"]["operation"],
        ),
        (
            "when",
            "  action: ALLOW\n  rules:\n  - when: [{key: source.ip, zzz: 1}]\n",
            &rule["properties"]["when"]["items"],
        ),
    ];
    for (place, spec_text, schema) in levels {
        assert_eq!(schema_fields(schema), loader_fields(spec_text), "{place}");
    }
}

/// `kind`/`metadata`/`spec` of each AuthorizationPolicy document in `file`, as objects.
fn objects_of(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    text.split("\n---")
        .filter(|document| document.contains("kind: AuthorizationPolicy"))
        .map(|document| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("doc.yaml");
            std::fs::write(&path, document.trim_start_matches("---")).unwrap();
            serde_json::from_str(&ok(python("k8s_check.py").arg("yaml-json").arg(&path))).unwrap()
        })
        .collect()
}

/// The schema's verdict on each object: `None` when valid, else the first error.
fn schema_verdicts(objects: &[Value]) -> Vec<Option<String>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.json");
    std::fs::write(&file, serde_json::to_string(objects).unwrap()).unwrap();
    let output = ok(python("crd_check.py")
        .arg(repo().join("deploy/crds.yaml"))
        .arg(&file));
    serde_json::from_str(output.trim()).unwrap()
}

#[test]
fn example_policies_pass_the_schema_and_what_it_can_refuse_it_refuses() {
    let mut examples = Vec::new();
    for entry in std::fs::read_dir(repo().join("examples/policies")).unwrap() {
        examples.extend(objects_of(&entry.unwrap().path()));
    }
    assert!(examples.len() >= 3, "{examples:?}");
    for (object, verdict) in examples.iter().zip(schema_verdicts(&examples)) {
        assert_eq!(verdict, None, "{object}");
    }

    let base = json!({"apiVersion": "airlock.dev/v1alpha1", "kind": "AuthorizationPolicy",
                      "metadata": {"name": "p", "namespace": "shop"}});
    let with = |spec: Value| {
        let mut object = base.clone();
        object["spec"] = spec;
        object
    };
    // Specs the loader refuses; each must fail the schema too.
    let invalid = [
        json!({"action": "PERMIT"}),
        json!({"action": "ALLOW", "mode": "audit"}),
        json!({"rules": [{}]}),
        json!({"action": "ALLOW", "acton": "DENY"}),
        json!({"action": "ALLOW", "selector": {"identities": []}}),
        json!({"action": "ALLOW", "selector": {"identities": ["checkout"]}}),
        json!({"action": "ALLOW", "rules": [{"from": [{"source": {}}]}]}),
        json!({"action": "ALLOW", "rules": [{"from": [{}]}]}),
        json!({"action": "ALLOW", "rules": [{"from": [{"source": {"principals": ["checkout"]}}]}]}),
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": [0]}}]}]}),
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": [70000]}}]}]}),
        json!({"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": []}}]}]}),
        json!({"action": "ALLOW", "rules": [{"when": [{"values": ["x"]}]}]}),
    ];
    let objects: Vec<Value> = invalid.iter().cloned().map(with).collect();
    for (object, verdict) in objects.iter().zip(schema_verdicts(&objects)) {
        let document = airlock_policy::load::resource_document("shop", "p", &object["spec"]);
        assert!(
            airlock_policy::load::parse_text(Path::new("p.yaml"), &document).is_err(),
            "the loader refuses {object}"
        );
        assert!(verdict.is_some(), "the schema lets through {object}");
    }
    // The control: a valid spec passes both.
    let valid = with(json!({"action": "ALLOW", "mode": "dry-run",
        "selector": {"namespaces": ["shop"]},
        "rules": [{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/shop/sa/web"], "notIpBlocks": ["10.0.0.0/8"]}}],
                   "to": [{"operation": {"ports": [8080], "methods": ["GET"], "paths": ["/v1/*"]}}],
                   "when": [{"key": "request.headers[x-tenant]", "values": ["acme"]}],
                   "expiresAt": "2027-01-01T00:00:00Z"}]}));
    assert_eq!(schema_verdicts(std::slice::from_ref(&valid)), [None]);
    let document = airlock_policy::load::resource_document("shop", "p", &valid["spec"]);
    airlock_policy::load::parse_text(Path::new("p.yaml"), &document).unwrap();
}

#[test]
fn kubectl_apply_of_an_invalid_policy_is_refused_by_the_webhook_with_the_loaders_message() {
    let dir = tempfile::tempdir().unwrap();
    let injector = Injector::start(dir.path());
    let review = |operation: &str, spec: Value| {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-policy",
                "kind": {"group": "airlock.dev", "version": "v1alpha1", "kind": "AuthorizationPolicy"},
                "resource": {"group": "airlock.dev", "version": "v1alpha1", "resource": "authorizationpolicies"},
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "alice"},
                "object": {"apiVersion": "airlock.dev/v1alpha1", "kind": "AuthorizationPolicy",
                           "metadata": {"name": "api", "namespace": "shop", "generation": 1}, "spec": spec},
                "dryRun": false,
            }
        });
        let file = dir.path().join("review.json");
        std::fs::write(&file, body.to_string()).unwrap();
        let (status, answer) = injector.review_at("/validate-policy", &file);
        assert_eq!(status, 200, "{answer}");
        answer["response"].clone()
    };
    let refused = review(
        "CREATE",
        json!({"action": "ALLOW", "rules": [{"when": [{"key": "request.cookie", "values": ["x"]}]}]}),
    );
    assert_eq!(refused["allowed"], false, "{refused}");
    let message = refused["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("airlock: AuthorizationPolicy shop/api:")
            && message.contains("request.cookie"),
        "{message}"
    );
    // The control: a valid spec is allowed.
    let allowed = review(
        "UPDATE",
        json!({"action": "ALLOW", "rules": [{"when": [{"key": "source.ip", "values": ["10.0.0.0/8"]}]}]}),
    );
    assert_eq!(allowed["allowed"], true, "{allowed}");
}
