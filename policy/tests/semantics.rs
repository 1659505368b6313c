//! The policy semantics of DESIGN.md as tables: every case is named after what it proves.

use std::path::Path;

use airlock_identity::SpiffeId;
use airlock_policy::eval::{HttpRequest, RequestSpec};
use airlock_policy::http::ShapeError;
use airlock_policy::load::{Documents, parse_file};
use airlock_policy::{DefaultMode, PolicySet, Reason};

const NOW: i64 = 1_800_000_000; // 2027-01-15

fn set(yaml: &str) -> PolicySet {
    let mut documents = Documents::default();
    let mut errors = Vec::new();
    parse_file(Path::new("test.yaml"), yaml, &mut documents, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    PolicySet::new(documents.policies)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

const API: &str = "spiffe://td/ns/pay/sa/api";
const CHECKOUT: &str = "spiffe://td/ns/shop/sa/checkout";
const WEB: &str = "spiffe://td/ns/shop/sa/web";
const BATCH: &str = "spiffe://td/ns/jobs/sa/batch";

/// A request: `source` "" means a plaintext peer; `http` None means TCP.
fn req(source: &str, port: u16, http: Option<(&str, &str)>) -> RequestSpec {
    try_req(source, port, http).unwrap()
}

/// [`req`], or the 400 the proxy would answer for its shape.
fn try_req(source: &str, port: u16, http: Option<(&str, &str)>) -> Result<RequestSpec, ShapeError> {
    Ok(RequestSpec {
        target: id(API),
        port,
        source: (!source.is_empty()).then(|| id(source)),
        source_ip: Some("10.1.2.3".parse().unwrap()),
        http: http
            .map(|(method, path)| HttpRequest::from_raw(method, path, "payments.svc", vec![]))
            .transpose()?,
        now: NOW,
    })
}

fn decide(set: &PolicySet, spec: &RequestSpec, default: DefaultMode) -> (bool, String) {
    let decision = set.evaluate_spec(spec, default);
    (decision.allowed, decision.reason.to_string())
}

fn policy(name: &str, action: &str, extra: &str, rules: &str) -> String {
    format!(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: pay}}\nspec:\n  selector: {{identities: [{API}]}}\n  action: {action}\n{extra}  rules:\n{rules}---\n"
    )
}

#[test]
fn decision_order() {
    let allow_checkout = policy(
        "allow-checkout",
        "ALLOW",
        "",
        &format!("  - from: [{{source: {{principals: [{CHECKOUT}]}}}}]\n"),
    );
    let deny_port_9 = policy(
        "deny-9",
        "DENY",
        "",
        "  - to: [{operation: {ports: [9]}}]\n",
    );
    let both = set(&(allow_checkout.clone() + &deny_port_9));
    let only_allow = set(&allow_checkout);
    let none = set("# no policies\n");
    let cases: Vec<(&str, &PolicySet, RequestSpec, DefaultMode, bool, &str)> = vec![
        (
            "enforced DENY beats a matching ALLOW",
            &both,
            req(CHECKOUT, 9, None),
            DefaultMode::AllowAll,
            false,
            "DENY policy pay/deny-9 rule 0",
        ),
        (
            "matching ALLOW allows",
            &both,
            req(CHECKOUT, 8080, None),
            DefaultMode::Deny,
            true,
            "ALLOW policy pay/allow-checkout rule 0",
        ),
        (
            "ALLOW selects but does not match: deny, whatever the default",
            &only_allow,
            req(WEB, 8080, None),
            DefaultMode::AllowAll,
            false,
            "no ALLOW policy matched",
        ),
        (
            "no policy: default deny",
            &none,
            req(CHECKOUT, 8080, None),
            DefaultMode::Deny,
            false,
            "default deny",
        ),
        (
            "no policy: allow-mesh allows an authenticated peer",
            &none,
            req(CHECKOUT, 8080, None),
            DefaultMode::AllowMesh,
            true,
            "default allow-mesh",
        ),
        (
            "no policy: allow-mesh refuses a plaintext peer",
            &none,
            req("", 8080, None),
            DefaultMode::AllowMesh,
            false,
            "default allow-mesh",
        ),
        (
            "no policy: allow-all allows a plaintext peer",
            &none,
            req("", 8080, None),
            DefaultMode::AllowAll,
            true,
            "default allow-all",
        ),
        (
            "no policy: audit allows and says so",
            &none,
            req("", 8080, None),
            DefaultMode::Audit,
            true,
            "default audit",
        ),
    ];
    for (name, set, spec, default, allowed, reason) in cases {
        assert_eq!(
            decide(set, &spec, default),
            (allowed, reason.to_owned()),
            "{name}"
        );
    }
}

#[test]
fn policies_of_other_workloads_are_not_consulted() {
    let other = "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: batch-only, namespace: jobs}\nspec:\n  selector: {identities: [spiffe://td/ns/jobs/sa/batch]}\n  action: ALLOW\n  rules: [{}]\n";
    let set = set(other);
    assert_eq!(
        decide(&set, &req(CHECKOUT, 80, None), DefaultMode::Deny),
        (false, "default deny".into())
    );
    let mut for_batch = req(CHECKOUT, 80, None);
    for_batch.target = id(BATCH);
    assert!(decide(&set, &for_batch, DefaultMode::Deny).0);
}

#[test]
fn selectors() {
    let doc = |name: &str, selector: &str| {
        format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n{selector}  action: DENY\n  rules: [{{}}]\n---\n"
        )
    };
    let cases = [
        ("absent selector: whole mesh", "", true),
        (
            "namespace selector",
            "  selector: {namespaces: [pay]}\n",
            true,
        ),
        (
            "other namespace",
            "  selector: {namespaces: [shop]}\n",
            false,
        ),
        (
            "namespace pattern",
            "  selector: {namespaces: [\"p*\"]}\n",
            true,
        ),
        (
            "notNamespaces excludes",
            "  selector: {notNamespaces: [pay]}\n",
            false,
        ),
        (
            "identity selector",
            &format!("  selector: {{identities: [{API}]}}\n"),
            true,
        ),
        (
            "notIdentities excludes",
            &format!("  selector: {{notIdentities: [{API}]}}\n"),
            false,
        ),
        (
            "identities AND namespaces: both must hold",
            &format!("  selector: {{identities: [{API}], namespaces: [shop]}}\n"),
            false,
        ),
    ];
    for (name, selector, selected) in cases {
        let set = set(&doc("p", selector));
        let (allowed, _) = decide(&set, &req(CHECKOUT, 80, None), DefaultMode::AllowAll);
        assert_eq!(!allowed, selected, "{name}");
    }
}

#[test]
fn rules_absent_match_nothing_and_empty_rule_matches_everything() {
    let absent = set(&format!(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: a}}\nspec:\n  selector: {{identities: [{API}]}}\n  action: ALLOW\n"
    ));
    assert_eq!(
        decide(&absent, &req(CHECKOUT, 80, None), DefaultMode::AllowAll),
        (false, "no ALLOW policy matched".into())
    );
    let everything = set(&policy("all", "ALLOW", "", "  - {}\n"));
    assert!(
        decide(&everything, &req("", 80, None), DefaultMode::Deny).0,
        "even a plaintext peer"
    );
}

#[test]
fn rules_or_fields_and_values_or_not_forms_none_of() {
    let rules = format!(
        "  - from: [{{source: {{principals: [{CHECKOUT}, {WEB}]}}}}]\n    to: [{{operation: {{ports: [8080], methods: [POST, PUT], paths: [/v1/charges, \"/v1/refunds/*\"]}}}}]\n  - from: [{{source: {{namespaces: [jobs], notPrincipals: [{BATCH}]}}}}]\n"
    );
    let set = set(&policy("p", "ALLOW", "", &rules));
    let cases = [
        (
            "first principal, listed method and path",
            CHECKOUT,
            8080,
            Some(("POST", "/v1/charges")),
            true,
        ),
        (
            "second principal (values OR'd)",
            WEB,
            8080,
            Some(("PUT", "/v1/refunds/7")),
            true,
        ),
        (
            "right source, wrong port (from AND to)",
            CHECKOUT,
            9090,
            Some(("POST", "/v1/charges")),
            false,
        ),
        (
            "right source, wrong method",
            CHECKOUT,
            8080,
            Some(("GET", "/v1/charges")),
            false,
        ),
        (
            "right source, wrong path",
            CHECKOUT,
            8080,
            Some(("POST", "/v1/admin")),
            false,
        ),
        (
            "prefix path does not match its bare prefix",
            CHECKOUT,
            8080,
            Some(("POST", "/v1/refunds")),
            false,
        ),
        (
            "second rule (rules OR'd): namespace jobs, other principal",
            "spiffe://td/ns/jobs/sa/cron",
            80,
            None,
            true,
        ),
        (
            "second rule: notPrincipals excludes batch",
            BATCH,
            80,
            None,
            false,
        ),
    ];
    for (name, source, port, http, allowed) in cases {
        assert_eq!(
            decide(&set, &req(source, port, http), DefaultMode::Deny).0,
            allowed,
            "{name}"
        );
    }
}

#[test]
fn unauthenticated_peers_fail_closed_both_ways() {
    let cases = [
        // (name, action, source fields, plaintext peer matches the rule?)
        (
            "ALLOW principals never match a plaintext peer",
            "ALLOW",
            "principals: [\"*\"]".to_owned(),
            false,
        ),
        (
            "ALLOW notPrincipals never match a plaintext peer",
            "ALLOW",
            format!("notPrincipals: [{BATCH}]"),
            false,
        ),
        (
            "ALLOW notNamespaces never match a plaintext peer",
            "ALLOW",
            "notNamespaces: [jobs]".to_owned(),
            false,
        ),
        (
            "ALLOW on ipBlocks alone can match a plaintext peer",
            "ALLOW",
            "ipBlocks: [10.0.0.0/8]".to_owned(),
            true,
        ),
        (
            "DENY notPrincipals match a plaintext peer",
            "DENY",
            format!("notPrincipals: [{CHECKOUT}]"),
            true,
        ),
        (
            "DENY notNamespaces match a plaintext peer",
            "DENY",
            "notNamespaces: [shop]".to_owned(),
            true,
        ),
        (
            "DENY principals do not match a plaintext peer",
            "DENY",
            format!("principals: [{CHECKOUT}]"),
            false,
        ),
    ];
    for (name, action, source, matches) in cases {
        let set = set(&policy(
            "p",
            action,
            "",
            &format!("  - from: [{{source: {{{source}}}}}]\n"),
        ));
        let (allowed, reason) = decide(&set, &req("", 80, None), DefaultMode::AllowAll);
        let matched = reason.contains("rule 0");
        assert_eq!(matched, matches, "{name}: {reason}");
        assert_eq!(
            allowed,
            if action == "ALLOW" { matches } else { !matches },
            "{name}"
        );
    }
}

#[test]
fn http_conditions_on_tcp_ports() {
    let allow = set(&policy(
        "a",
        "ALLOW",
        "",
        "  - to: [{operation: {paths: [/public]}}]\n",
    ));
    assert!(
        !decide(&allow, &req(CHECKOUT, 5432, None), DefaultMode::AllowAll).0,
        "ALLOW with paths never matches TCP"
    );
    assert!(
        decide(
            &allow,
            &req(CHECKOUT, 80, Some(("GET", "/public"))),
            DefaultMode::Deny
        )
        .0
    );

    let deny = set(&policy(
        "d",
        "DENY",
        "",
        "  - to: [{operation: {ports: [5432], methods: [DELETE]}}]\n",
    ));
    assert_eq!(
        decide(&deny, &req(CHECKOUT, 5432, None), DefaultMode::AllowAll),
        (false, "DENY policy pay/d rule 0".into()),
        "DENY matches on its L4 part"
    );
    assert!(
        decide(
            &deny,
            &req(CHECKOUT, 5432, Some(("GET", "/"))),
            DefaultMode::AllowAll
        )
        .0,
        "on HTTP the method must match"
    );
    assert!(
        decide(&deny, &req(CHECKOUT, 6379, None), DefaultMode::AllowAll).0,
        "L4 part still has to match"
    );

    let header_deny = set(&policy(
        "h",
        "DENY",
        "",
        "  - when: [{key: \"request.headers[x-debug]\", values: [\"1\"]}]\n",
    ));
    assert!(
        !decide(
            &header_deny,
            &req(CHECKOUT, 5432, None),
            DefaultMode::AllowAll
        )
        .0,
        "header DENY on TCP: L4 part only"
    );
}

#[test]
fn time_bound_grants() {
    let grant = set(&policy(
        "holiday",
        "ALLOW",
        "",
        &format!(
            "  - from: [{{source: {{principals: [{CHECKOUT}]}}}}]\n    notBefore: \"2027-01-01T00:00:00Z\"\n    expiresAt: \"2027-02-01T00:00:00Z\"\n"
        ),
    ));
    let at = |now: i64| {
        let mut spec = req(CHECKOUT, 80, None);
        spec.now = now;
        decide(&grant, &spec, DefaultMode::Deny).0
    };
    let start = 1_798_761_600; // 2027-01-01T00:00:00Z
    let end = 1_801_440_000; // 2027-02-01T00:00:00Z
    assert!(!at(start - 1), "before notBefore");
    assert!(at(start), "at notBefore");
    assert!(at(end - 1), "just before expiresAt");
    assert!(!at(end), "at expiresAt");
    assert_eq!(grant.next_grant_change(start - 10), Some(start));
    assert_eq!(grant.next_grant_change(start), Some(end));
    assert_eq!(grant.next_grant_change(end), None);
}

#[test]
fn paths_hosts_and_headers_are_matched_in_canonical_form() {
    let deny_admin = policy(
        "no-admin",
        "DENY",
        "",
        "  - to: [{operation: {paths: [\"/admin/*\", /admin]}}]\n",
    );
    let allow_all = policy("all", "ALLOW", "", "  - {}\n");
    let set = set(&(deny_admin + &allow_all));
    for tricky in [
        "/admin",
        "//admin/",
        "/public/../admin/x",
        "/%61dmin/x",
        "/public/..;x/admin",
        "/public\\..\\admin",
        "/./admin?x=1",
    ] {
        let (allowed, reason) = decide(
            &set,
            &req(CHECKOUT, 80, Some(("GET", tricky))),
            DefaultMode::Deny,
        );
        assert!(!allowed, "{tricky} reached admin: {reason}");
    }
    assert!(
        try_req(CHECKOUT, 80, Some(("GET", "/admin%2Fx"))).is_err(),
        "encoded slash refused"
    );
    assert!(
        try_req(CHECKOUT, 80, Some(("G T", "/"))).is_err(),
        "non-token method refused"
    );

    let hosts = self::set(&policy(
        "h",
        "ALLOW",
        "",
        "  - to: [{operation: {hosts: [\"Payments.SVC\", \"*.internal\"]}}]\n",
    ));
    let with_host = |host: &str| {
        let mut spec = req(CHECKOUT, 80, None);
        spec.http = Some(HttpRequest::from_raw("GET", "/", host, vec![]).unwrap());
        decide(&hosts, &spec, DefaultMode::Deny).0
    };
    assert!(
        with_host("PAYMENTS.svc:8080"),
        "case-insensitive, port stripped"
    );
    assert!(with_host("db.Internal"));
    assert!(!with_host("payments.svc.evil"));

    let tenant = self::set(&policy(
        "t",
        "ALLOW",
        "",
        "  - when: [{key: \"request.headers[X-Tenant]\", values: [\"acme,beta\"]}]\n",
    ));
    let with_headers = |headers: &[(&str, &str)]| {
        let mut spec = req(CHECKOUT, 80, Some(("GET", "/")));
        spec.http.as_mut().unwrap().headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        decide(&tenant, &spec, DefaultMode::Deny).0
    };
    assert!(
        with_headers(&[("x-tenant", "acme"), ("X-TENANT", "beta")]),
        "repeated headers match comma-joined"
    );
    assert!(!with_headers(&[("x-tenant", "acme")]));
    assert!(!with_headers(&[]), "absent header matches no value");
}

#[test]
fn deny_rules_cover_every_spelling_an_app_may_act_on() {
    let deny = policy(
        "no-debug",
        "DENY",
        "",
        "  - to: [{operation: {paths: [/admin]}}]\n  - when: [{key: \"request.headers[x-debug]\", values: [\"true\"]}]\n",
    );
    let allow = policy(
        "exact",
        "ALLOW",
        "",
        "  - to: [{operation: {paths: [/admin, /public/*]}}]\n    when: [{key: \"request.headers[x-debug]\", notValues: [\"true\"]}]\n",
    );
    let deny_set = set(&(deny + &policy("all", "ALLOW", "", "  - {}\n")));
    let allow_set = set(&allow);
    let spec = |path: &str, headers: &[(&str, &str)]| {
        let mut spec = req(CHECKOUT, 80, Some(("GET", path)));
        spec.http.as_mut().unwrap().headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        spec
    };
    type Headers<'a> = &'a [(&'a str, &'a str)];
    // (set, path, headers, allowed, why)
    let cases: &[(&PolicySet, &str, Headers, bool, &str)] = &[
        (&deny_set, "/admin", &[], false, "exact"),
        (&deny_set, "/admin/", &[], false, "DENY: trailing slash"),
        (
            &deny_set,
            "/admin//",
            &[],
            false,
            "DENY: merged, then trimmed",
        ),
        (&deny_set, "/admins", &[], true, "another path"),
        (
            &deny_set,
            "/",
            &[],
            true,
            "the root is not trimmed to nothing",
        ),
        (
            &deny_set,
            "/x",
            &[("x-debug", "true")],
            false,
            "single value",
        ),
        (
            &deny_set,
            "/x",
            &[("x-debug", "true"), ("x-debug", "true")],
            false,
            "DENY: repeated header, any occurrence",
        ),
        (
            &deny_set,
            "/x",
            &[("x-debug", "no"), ("X-Debug", "true")],
            false,
            "DENY: the last occurrence",
        ),
        (&deny_set, "/x", &[("x-debug", "no")], true, "other value"),
        (
            &deny_set,
            "/x",
            &[("x_debug", "true")],
            false,
            "DENY: the underscore spelling CGI maps to the same key",
        ),
        (
            &deny_set,
            "/x",
            &[("X_DEBUG", "no"), ("x-debug", "true")],
            false,
            "DENY: both spellings at once",
        ),
        (&allow_set, "/admin", &[], true, "ALLOW: exact"),
        (
            &allow_set,
            "/admin/",
            &[],
            false,
            "ALLOW: trailing slash is another path",
        ),
        (
            &allow_set,
            "/public/a",
            &[("x-debug", "no"), ("x-debug", "true")],
            true,
            "ALLOW: joined value is neither",
        ),
    ];
    for (set, path, headers, allowed, why) in cases {
        let (got, reason) = decide(set, &spec(path, headers), DefaultMode::Deny);
        assert_eq!(got, *allowed, "{why}: {path} {headers:?} → {reason}");
    }
}

#[test]
fn when_conditions() {
    let cases = [
        (
            "source.ip inside",
            "{key: source.ip, values: [10.1.0.0/16]}",
            CHECKOUT,
            true,
        ),
        (
            "source.ip outside",
            "{key: source.ip, values: [192.168.0.0/16]}",
            CHECKOUT,
            false,
        ),
        (
            "source.principal prefix",
            "{key: source.principal, values: [\"spiffe://td/ns/shop/*\"]}",
            WEB,
            true,
        ),
        (
            "source.namespace notValues",
            "{key: source.namespace, notValues: [shop]}",
            WEB,
            false,
        ),
        (
            "destination.port",
            "{key: destination.port, values: [\"80\"]}",
            WEB,
            true,
        ),
        (
            "ALLOW source.principal never matches plaintext",
            "{key: source.principal, notValues: [\"spiffe://td/x\"]}",
            "",
            false,
        ),
    ];
    for (name, condition, source, allowed) in cases {
        let set = set(&policy(
            "w",
            "ALLOW",
            "",
            &format!("  - when: [{condition}]\n"),
        ));
        assert_eq!(
            decide(&set, &req(source, 80, None), DefaultMode::Deny).0,
            allowed,
            "{name}"
        );
    }
}

#[test]
fn dry_run_is_reported_never_enforced() {
    let dry_deny = policy("dry-deny", "DENY", "  mode: dry-run\n", "  - {}\n");
    let dry_allow = policy(
        "dry-allow",
        "ALLOW",
        "  mode: dry-run\n",
        &format!("  - from: [{{source: {{principals: [{WEB}]}}}}]\n"),
    );
    let set = set(&(dry_deny + &dry_allow));
    let decision = set.evaluate_spec(&req(CHECKOUT, 80, None), DefaultMode::AllowAll);
    assert!(decision.allowed, "dry-run DENY did not deny");
    assert_eq!(
        decision.reason,
        Reason::Default(DefaultMode::AllowAll),
        "nor did a dry-run ALLOW make the workload allow-list"
    );
    let outcomes: Vec<(String, bool, Option<usize>)> = decision
        .dry_run
        .iter()
        .map(|d| (d.policy.to_string(), d.would_allow, d.rule))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("pay/dry-allow".into(), false, None),
            ("pay/dry-deny".into(), false, Some(0))
        ]
    );
}

#[test]
fn ipv4_mapped_peers_match_ipv4_blocks() {
    let set = set(&policy(
        "d",
        "DENY",
        "",
        "  - from: [{source: {ipBlocks: [10.0.0.0/8]}}]\n",
    ));
    let mut spec = req(CHECKOUT, 80, None);
    spec.source_ip = Some("::ffff:10.1.2.3".parse().unwrap());
    assert!(
        !decide(&set, &spec, DefaultMode::AllowAll).0,
        "a mapped 10.x peer is still in 10.0.0.0/8"
    );
}

#[test]
fn deny_rules_match_methods_in_any_case_allow_rules_exactly() {
    let deny = set(&policy(
        "no-dav",
        "DENY",
        "",
        "  - to: [{operation: {methods: [PROPFIND]}}]\n",
    ));
    let allow = set(&policy(
        "dav",
        "ALLOW",
        "",
        "  - to: [{operation: {methods: [PROPFIND]}}]\n",
    ));
    let except = set(&policy(
        "all-but-dav",
        "DENY",
        "",
        "  - to: [{operation: {notMethods: [PROPFIND]}}]\n",
    ));
    let cases = [
        (&deny, "PROPFIND", false, "DENY: as written"),
        (
            &deny,
            "propfind",
            false,
            "DENY: another case, which some servers route the same",
        ),
        (&deny, "MKCOL", true, "DENY: another method"),
        (&allow, "PROPFIND", true, "ALLOW: as written"),
        (&allow, "propfind", false, "ALLOW: exact only"),
        (
            &except,
            "PROPFIND",
            true,
            "DENY notMethods: exempts what it names",
        ),
        (
            &except,
            "propfind",
            false,
            "DENY notMethods: and nothing more",
        ),
    ];
    for (set, method, allowed, why) in cases {
        let (got, reason) = decide(
            set,
            &req(CHECKOUT, 8080, Some((method, "/x"))),
            DefaultMode::AllowAll,
        );
        assert_eq!(got, allowed, "{why}: {reason}");
    }
    // A header condition may name any field, also one spelled like a method.
    set(&policy(
        "by-header",
        "DENY",
        "",
        "  - when: [{key: \"request.headers[get]\", values: [\"1\"]}]\n",
    ));
}
