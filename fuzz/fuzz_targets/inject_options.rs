//! The injector settings both injection fuzz targets use.

use airlock_inject::{Controller, InjectOptions};

pub fn inject_options() -> InjectOptions {
    InjectOptions {
        image: "airlock:fuzz".into(),
        trust_domain: "cluster.local".parse().unwrap(),
        ca_url: "https://ca:15012".into(),
        ca_audience: "airlock-ca".into(),
        proxy_uid: 1337,
        namespace: "default".into(),
        permissive: false,
        default_policy: Default::default(),
        // With a controller: the discovery section and its volume are injected too.
        controller: Some(Controller {
            url: "https://control:15010".into(),
            identity: "spiffe://cluster.local/ns/airlock-system/sa/airlock-control"
                .parse()
                .unwrap(),
        }),
    }
}
