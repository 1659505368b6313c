//! `airlock inject` on any text: never panics, and injecting its own output again changes
//! nothing (idempotence).
#![no_main]

use airlock_inject::{InjectOptions, inject_manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let options = InjectOptions {
        image: "airlock:fuzz".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        ca_url: "https://ca:15012".into(),
        ca_audience: "airlock-ca".into(),
        proxy_uid: 1337,
        namespace: "default".into(),
        permissive: false,
        default_policy: Default::default(),
    };
    if let Ok(once) = inject_manifest(text, &options) {
        let twice = inject_manifest(&once.text, &options).expect("the injector reads its own output");
        assert_eq!(twice.text, once.text);
    }
});
