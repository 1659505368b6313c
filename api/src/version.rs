//! The version of a mesh view: a content hash, so that every controller replica that
//! sees the same sources names the same view the same way, and a sidecar that already
//! holds a version needs nothing resent.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::proto::{Policy, Service};

/// The hex SHA-256 of `services` and `policies`, each sorted by its key first, so that
/// the order a source listed them in does not matter.
pub fn view_version<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    policies: impl IntoIterator<Item = &'a Policy>,
) -> String {
    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut policies: Vec<&Policy> = policies.into_iter().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut hasher = Sha256::new();
    // Length-prefixed messages, and a marker between the two lists, so that no two
    // different views share an encoding.
    for service in services {
        hasher.update(service.encode_length_delimited_to_vec());
    }
    hasher.update(b"\0policies\0");
    for policy in policies {
        hasher.update(policy.encode_length_delimited_to_vec());
    }
    airlock_identity::hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, identity: &str) -> Service {
        Service {
            name: name.into(),
            identity: identity.into(),
            ..Service::default()
        }
    }

    #[test]
    fn the_version_ignores_order_and_follows_content() {
        let a = service("a", "spiffe://td/ns/x/sa/a");
        let b = service("b", "spiffe://td/ns/x/sa/b");
        let one = view_version([&a, &b], []);
        assert_eq!(one, view_version([&b, &a], []), "order does not matter");
        assert_eq!(one.len(), 64);
        let changed = service("b", "spiffe://td/ns/x/sa/c");
        assert_ne!(one, view_version([&a, &changed], []), "content does");
        let policy = Policy {
            namespace: "x".into(),
            name: "p".into(),
            source: "f.yaml".into(),
            document: "kind: AuthorizationPolicy".into(),
        };
        assert_ne!(one, view_version([&a, &b], [&policy]));
    }
}
