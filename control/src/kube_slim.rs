//! What the reflector stores keep of each object: only the fields
//! [`crate::kube_model::translate`] reads. A real Pod is several KB of spec and status;
//! the mesh needs its service account, its containers' named ports and one annotation,
//! and the stores hold every Pod of the cluster.

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicObject;

/// Drops what the translation never reads, before an object is kept in a store.
pub trait Slim {
    /// Keeps only the fields the translation reads.
    fn slim(&mut self);
}

fn slim_meta(meta: &mut ObjectMeta, keep: &[&str]) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.retain(|key, _| keep.contains(&key.as_str()));
    }
}

impl Slim for Pod {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, &[airlock_inject::annotation::IDENTITY]);
        self.metadata.labels = None;
        self.status = None;
        if let Some(spec) = &mut self.spec {
            *spec = PodSpec {
                service_account_name: spec.service_account_name.take(),
                containers: std::mem::take(&mut spec.containers)
                    .into_iter()
                    .map(|container| Container {
                        name: container.name,
                        ports: container.ports,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
        }
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, &[]);
        self.status = None;
    }
}

impl Slim for EndpointSlice {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, &[]);
        for endpoint in &mut self.endpoints {
            endpoint.hints = None;
            endpoint.deprecated_topology = None;
        }
    }
}

impl Slim for DynamicObject {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata, &[]);
        self.metadata.labels = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use airlock_identity::TrustDomain;

    use super::*;
    use crate::kube_model::tests::cluster;
    use crate::kube_model::{Translation, translate};

    #[test]
    fn slim_objects_translate_as_whole_ones_do() {
        let td = TrustDomain::parse("cluster.local").unwrap();
        let whole = cluster(&["cluster.json", "policies.json"]);
        let mut slim = whole.clone();
        fn slim_all<K: Slim + Clone>(objects: &mut [Arc<K>]) {
            for object in objects {
                Arc::make_mut(object).slim();
            }
        }
        slim_all(&mut slim.services);
        slim_all(&mut slim.slices);
        slim_all(&mut slim.pods);
        slim_all(&mut slim.policies);
        let (a, b) = (translate(&whole, &td, 15008), translate(&slim, &td, 15008));
        assert_eq!(a.services, b.services);
        assert_eq!(a.problems, b.problems);
        let keys = |t: &Translation| -> Vec<(String, bool, Option<String>)> {
            t.policies
                .iter()
                .map(|p| {
                    (
                        p.key.clone(),
                        p.accepted_stale,
                        p.applied.as_ref().map(|v| v.wire.document.clone()),
                    )
                })
                .collect()
        };
        assert_eq!(keys(&a), keys(&b));
        // The control: slimming took something away.
        let size = |pods: &[Arc<Pod>]| {
            let pods: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
            serde_json::to_string(&pods).unwrap().len()
        };
        assert!(
            size(&slim.pods) * 2 < size(&whole.pods),
            "{} vs {}",
            size(&slim.pods),
            size(&whole.pods)
        );
    }
}
