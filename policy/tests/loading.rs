//! Loading errors: each names file:line:column and the field, one per problem.

use std::path::{Path, PathBuf};

use airlock_policy::load::{Documents, LoadError, load, parse_file};

fn errors(yaml: &str) -> Vec<String> {
    errors_at("p.yaml", yaml)
}

/// The loader's errors for `yaml` read as file `file`.
fn errors_at(file: &str, yaml: &str) -> Vec<String> {
    let mut documents = Documents::default();
    let mut errors: Vec<LoadError> = Vec::new();
    parse_file(Path::new(file), yaml, &mut documents, &mut errors);
    errors.iter().map(ToString::to_string).collect()
}

const HEAD: &str = "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: pay}\nspec:\n  action: ALLOW\n  rules:\n";

#[test]
fn each_bad_value_is_reported_at_its_position() {
    let cases = [
        // (what, rules text, expected "line:col" and fragment)
        (
            "unknown field",
            "  - from: [{source: {principal: [x]}}]\n",
            "p.yaml:7:",
            "unknown field `principal`",
        ),
        (
            "bad SPIFFE ID",
            "  - from: [{source: {principals: [\"spiffe://TD/x\"]}}]\n",
            "p.yaml:7:",
            "lowercase",
        ),
        (
            "the trust domain's own ID as principal (X509-SVID §5.2: never a leaf's)",
            "  - from: [{source: {principals: [\"spiffe://td\"]}}]\n",
            "p.yaml:7:",
            "must have a path",
        ),
        (
            "the trust domain's own ID as notPrincipal",
            "  - from: [{source: {notPrincipals: [\"spiffe://td\"]}}]\n",
            "p.yaml:7:",
            "must have a path",
        ),
        (
            "not a SPIFFE ID",
            "  - from: [{source: {principals: [checkout]}}]\n",
            "p.yaml:7:",
            "must start with \"spiffe://\"",
        ),
        (
            "principal suffix pattern",
            "  - from: [{source: {principals: [\"*checkout\"]}}]\n",
            "p.yaml:7:",
            "principal",
        ),
        (
            "bad CIDR",
            "  - from: [{source: {ipBlocks: [10.0.0.0/33]}}]\n",
            "p.yaml:7:",
            "not an IP address or CIDR",
        ),
        (
            "CIDR with host bits",
            "  - from: [{source: {ipBlocks: [10.0.0.1/8]}}]\n",
            "p.yaml:7:",
            "did you mean 10.0.0.0/8",
        ),
        (
            "port zero",
            "  - to: [{operation: {ports: [0]}}]\n",
            "p.yaml:7:",
            "outside 1-65535",
        ),
        (
            "port too big",
            "  - to: [{operation: {ports: [70000]}}]\n",
            "p.yaml:7:",
            "outside 1-65535",
        ),
        (
            "bad method",
            "  - to: [{operation: {methods: [\"GE T\"]}}]\n",
            "p.yaml:7:",
            "not a valid HTTP method",
        ),
        (
            "path not normalized",
            "  - to: [{operation: {paths: [\"/a/../b\"]}}]\n",
            "p.yaml:7:",
            "not in normalized form",
        ),
        (
            "inner star",
            "  - to: [{operation: {paths: [\"/a/*/b\"]}}]\n",
            "p.yaml:7:",
            "'*' is allowed only",
        ),
        (
            "bad time",
            "  - expiresAt: \"next friday\"\n",
            "p.yaml:7:",
            "RFC 3339",
        ),
        (
            "window backwards",
            "  - notBefore: \"2027-01-02T00:00:00Z\"\n    expiresAt: \"2027-01-01T00:00:00Z\"\n",
            "p.yaml:",
            "notBefore must be earlier",
        ),
        (
            "unknown when key",
            "  - when: [{key: request.body, values: [x]}]\n",
            "p.yaml:7:",
            "unknown when key \"request.body\"",
        ),
        (
            "when without values",
            "  - when: [{key: source.ip}]\n",
            "p.yaml:7:",
            "needs values or notValues",
        ),
    ];
    for (what, rules, position, fragment) in cases {
        let errors = errors(&format!("{HEAD}{rules}"));
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert!(
            errors[0].starts_with(position) && errors[0].contains(fragment),
            "{what}: {}",
            errors[0]
        );
    }
}

#[test]
fn document_level_errors() {
    let e = errors(
        "apiVersion: airlock.dev/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: ALLOW}\n",
    );
    assert!(
        e[0].starts_with("p.yaml:1:") && e[0].contains("unsupported apiVersion"),
        "{e:?}"
    );
    let e = errors("apiVersion: airlock.dev/v1alpha1\nkind: NetworkPolicy\n");
    assert!(
        e[0].starts_with("p.yaml:2") && e[0].contains("unknown kind \"NetworkPolicy\""),
        "{e:?}"
    );
    let e = errors(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: MAYBE}\n",
    );
    assert!(e[0].contains("MAYBE"), "{e:?}");
    let e = errors("a: [unclosed\n");
    assert!(e[0].starts_with("p.yaml:"), "{e:?}");
}

#[test]
fn errors_in_later_documents_keep_absolute_lines_and_all_are_reported() {
    let text = format!(
        "{HEAD}  - {{}}\n---\n{HEAD}  - to: [{{operation: {{ports: [0]}}}}]\n---\n{HEAD}  - from: [{{source: {{ipBlocks: [nope]}}}}]\n"
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].starts_with("p.yaml:15:"), "{e:?}");
    assert!(e[1].starts_with("p.yaml:23:"), "{e:?}");
}

#[test]
fn duplicate_names_across_files_name_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let doc = format!("{HEAD}  - {{}}\n");
    std::fs::write(dir.path().join("a.yaml"), &doc).unwrap();
    std::fs::write(dir.path().join("b.yml"), format!("# comment\n\n{doc}")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let errors = load(&[dir.path().to_owned()]).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let message = errors[0].to_string();
    assert!(
        message.contains("b.yml:5")
            && message.contains("duplicate policy name pay/p")
            && message.contains("a.yaml:3"),
        "{message}"
    );
}

#[test]
fn missing_path_is_an_error() {
    let errors = load(&[PathBuf::from("/nonexistent/policies")]).unwrap_err();
    assert!(
        errors[0].to_string().starts_with("/nonexistent/policies:"),
        "{errors:?}"
    );
}

#[test]
fn blank_values_are_errors_not_missing_constraints() {
    let cases = [
        (
            "list with every item commented out",
            "  - from:\n    - source:\n        principals:\n        # - spiffe://td/ns/shop/sa/checkout\n",
            "is empty",
        ),
        ("blank rule item", "  -\n", "a blank rule"),
        (
            "empty source",
            "  - from: [{source: {}}]\n",
            "from[0].source sets no field",
        ),
        (
            "empty operation",
            "  - to: [{operation: {}}]\n",
            "to[0].operation sets no field",
        ),
        (
            "principal prefix inside a segment",
            "  - from: [{source: {principals: [\"spiffe://td/ns/shop*\"]}}]\n",
            "ending in '/'",
        ),
        (
            "host with a port",
            "  - to: [{operation: {hosts: [\"payments:8080\"]}}]\n",
            "without a port",
        ),
    ];
    for (what, rules, fragment) in cases {
        let e = errors(&format!("{HEAD}{rules}"));
        assert_eq!(e.len(), 1, "{what}: {e:?}");
        assert!(e[0].contains(fragment), "{what}: {}", e[0]);
    }
    let e = errors(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  selector: {identities: }\n  action: DENY\n  rules: [{}]\n",
    );
    assert!(
        e[0].starts_with("p.yaml:5:")
            && e[0].contains("spec.selector")
            && e[0].contains("is empty"),
        "{e:?}"
    );
    let e = errors(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: Bad_Name, namespace: a/b}\nspec: {action: DENY}\n",
    );
    assert!(e[0].contains("not a valid name"), "{e:?}");
}

#[test]
fn block_style_errors_point_at_the_bad_item() {
    let rules = "  - from:\n    - source:\n        principals:\n        - spiffe://td/ns/a/sa/one\n        - spiffe://td/ns/a/sa/two\n        - spiffe://td/ns/a//three\n";
    let e = errors(&format!("{HEAD}{rules}"));
    assert!(e[0].starts_with("p.yaml:12:"), "{e:?}");
    let rules = "  - to:\n    - operation:\n        ports:\n        - 80\n        - 0\n";
    let e = errors(&format!("{HEAD}{rules}"));
    assert!(e[0].starts_with("p.yaml:11:"), "{e:?}");
}

#[test]
fn overlapping_paths_read_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), format!("{HEAD}  - {{}}\n")).unwrap();
    let documents = load(&[dir.path().to_owned(), dir.path().join("a.yaml")]).unwrap();
    assert_eq!(documents.policies.len(), 1);
}

#[test]
fn an_empty_file_is_an_error_and_a_comment_only_one_means_no_policies() {
    for empty in ["", "\n", "  \n\t\n"] {
        let e = errors(empty);
        assert_eq!(e.len(), 1, "{empty:?}: {e:?}");
        assert!(
            e[0].starts_with("p.yaml: ") && e[0].contains("comment-only"),
            "{e:?}"
        );
    }
    assert!(errors("# no policies\n").is_empty());
    assert!(errors("---\n# none\n").is_empty());
}

/// What `kubectl get authorizationpolicies -n pay -o yaml` prints: a List of the
/// objects with the server's metadata and the controller's status.
const KUBECTL_LIST: &str = r#"apiVersion: v1
items:
- apiVersion: airlock.dev/v1alpha1
  kind: AuthorizationPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"airlock.dev/v1alpha1","kind":"AuthorizationPolicy"}
    creationTimestamp: "2026-12-01T11:00:00Z"
    generation: 2
    labels:
      team: payments
    name: payments-api
    namespace: pay
    resourceVersion: "40211"
    uid: 5d0c2f6e-8a51-4c2e-9a47-0f3b1e9c2a10
  spec:
    action: ALLOW
    rules:
    - from:
      - source:
          principals:
          - spiffe://cluster.local/ns/shop/sa/checkout
    selector:
      identities:
      - spiffe://cluster.local/ns/pay/sa/payments
  status:
    acceptedSpec:
      action: ALLOW
      rules:
      - {}
    conditions:
    - lastTransitionTime: "2026-12-01T11:00:01Z"
      message: ""
      observedGeneration: 2
      reason: Valid
      status: "True"
      type: Accepted
- apiVersion: airlock.dev/v1alpha1
  kind: AuthorizationPolicy
  metadata:
    name: no-debug
    namespace: pay
  spec:
    action: DENY
    rules:
    - to:
      - operation:
          paths: [/debug/*]
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn the_custom_resource_form_loads_as_the_file_form_does() {
    let mut documents = Documents::default();
    let mut errors: Vec<LoadError> = Vec::new();
    parse_file(
        Path::new("kubectl.yaml"),
        KUBECTL_LIST,
        &mut documents,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}");
    let ids: Vec<&str> = documents.policies.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["pay/payments-api", "pay/no-debug"]);
    assert_eq!(
        documents.policies[0].origin.line, 13,
        "the line of its name"
    );
    assert_eq!(documents.policies[1].origin.line, 42);

    // The controls: the server's fields are the only extra ones allowed, and a List
    // holds policies only.
    let misspelt = KUBECTL_LIST.replace("    generation: 2\n", "    generatoin: 2\n");
    assert!(
        errors_in(&misspelt)[0].contains("unknown field `generatoin`"),
        "{:?}",
        errors_in(&misspelt)
    );
    let other_kind = KUBECTL_LIST.replace(
        "  kind: AuthorizationPolicy\n  metadata:\n    name: no-debug",
        "  kind: PolicyTest\n  metadata:\n    name: no-debug",
    );
    assert!(
        errors_in(&other_kind)[0].contains("AuthorizationPolicy objects only"),
        "{:?}",
        errors_in(&other_kind)
    );
    let bad_spec = KUBECTL_LIST.replace("    action: DENY\n", "    action: REJECT\n");
    let bad = errors_in(&bad_spec);
    assert!(bad[0].starts_with("kubectl.yaml:45:"), "{bad:?}");
}

fn errors_in(yaml: &str) -> Vec<String> {
    errors_at("kubectl.yaml", yaml)
}
