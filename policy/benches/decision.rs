//! Decision latency for TCP connections and HTTP requests with 1, 100 and 10,000
//! policies spread over 1,000 workloads, plus path normalization on its own.
//!
//! `cargo bench -p airlock-policy --bench decision`; README.md reports the medians.

// criterion_group! defines a public function that cannot carry a doc comment.
#![allow(missing_docs)]

use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;

use airlock_identity::SpiffeId;
use airlock_policy::eval::HttpRequest;
use airlock_policy::http::{PathOptions, normalize_path};
use airlock_policy::load::{Documents, parse_file};
use airlock_policy::{DefaultMode, PolicySet, Request};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const WORKLOADS: usize = 1_000;
const NOW: i64 = 1_800_000_000;

fn workload(index: usize) -> String {
    format!("spiffe://bench.local/ns/ns{}/sa/svc{index}", index % 50)
}

/// `count` ALLOW policies, round-robin over the workloads, each with an L4 rule and an
/// L7 rule, plus one mesh-wide DENY so every decision also walks an unindexed policy.
fn policies(count: usize) -> PolicySet {
    let mut yaml = String::new();
    for i in 0..count {
        let target = workload(i % WORKLOADS);
        let caller = workload((i + 1) % WORKLOADS);
        write!(
            yaml,
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: bench}}\nspec:\n  selector: {{identities: [{target}]}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [{caller}]}}}}]\n    to: [{{operation: {{ports: [5432]}}}}]\n  - from: [{{source: {{principals: [{caller}], namespaces: [ns1]}}}}]\n    to: [{{operation: {{ports: [8080], methods: [GET, POST], paths: [/v1/orders, \"/v1/items/*\"]}}}}]\n---\n"
        )
        .unwrap();
    }
    yaml.push_str(
        "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: guard, namespace: bench}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [quarantine]}}]\n",
    );
    let mut documents = Documents::default();
    let mut errors = Vec::new();
    parse_file(Path::new("bench.yaml"), &yaml, &mut documents, &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    PolicySet::new(documents.policies)
}

fn decisions(c: &mut Criterion) {
    let target = SpiffeId::parse(&workload(0)).unwrap();
    let caller = SpiffeId::parse(&workload(1)).unwrap();
    let post = HttpRequest {
        method: "POST".into(),
        path: "/v1/items/42".into(),
        host: "orders.bench".into(),
        headers: vec![
            ("user-agent".into(), "bench".into()),
            ("x-request-id".into(), "42".into()),
        ],
        ..HttpRequest::default()
    };
    let mut group = c.benchmark_group("decision");
    for count in [1, 100, 10_000] {
        let set = policies(count);
        let tcp = Request {
            target: &target,
            port: 5432,
            source: Some(&caller),
            source_ip: Some("10.0.0.1".parse().unwrap()),
            http: None,
            now: NOW,
        };
        let http = Request {
            port: 8080,
            http: Some(&post),
            ..tcp
        };
        assert!(set.evaluate(&tcp, DefaultMode::Deny).allowed);
        assert!(set.evaluate(&http, DefaultMode::Deny).allowed);
        group.bench_with_input(BenchmarkId::new("tcp", count), &tcp, |b, request| {
            b.iter(|| set.evaluate(black_box(request), DefaultMode::Deny))
        });
        group.bench_with_input(BenchmarkId::new("http", count), &http, |b, request| {
            b.iter(|| set.evaluate(black_box(request), DefaultMode::Deny))
        });
    }
    group.finish();

    c.bench_function("normalize_path", |b| {
        b.iter(|| {
            normalize_path(
                black_box("/v1//items/./42/../43?x=1"),
                PathOptions::default(),
            )
        })
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
