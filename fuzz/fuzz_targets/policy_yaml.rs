//! Policy loading: arbitrary YAML never panics; what loads compiles into a set that can
//! be linted and evaluated.
#![no_main]

use std::path::Path;

use airlock_identity::SpiffeId;
use airlock_policy::lint::{LintContext, lint};
use airlock_policy::load::{Documents, parse_file};
use airlock_policy::{DefaultMode, PolicySet, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let mut documents = Documents::default();
    let mut errors = Vec::new();
    parse_file(Path::new("fuzz.yaml"), text, &mut documents, &mut errors);
    for error in &errors {
        let _ = error.to_string();
    }
    let set = PolicySet::new(documents.policies);
    let _ = lint(&set, &LintContext::default());
    let target = SpiffeId::parse("spiffe://td/ns/pay/sa/api").unwrap();
    let source = SpiffeId::parse("spiffe://td/ns/shop/sa/web").unwrap();
    for source in [Some(&source), None] {
        let request = Request {
            target: &target,
            port: 8080,
            source,
            source_ip: Some("10.1.2.3".parse().unwrap()),
            http: None,
            now: 1_800_000_000,
        };
        let _ = set.evaluate(&request, DefaultMode::Deny);
    }
});
