//! The injector settings both injection fuzz targets use.

use airlock_inject::InjectOptions;

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
    }
}
