//! The Kubernetes source (`--source kubernetes`): kube-rs watchers on Services,
//! EndpointSlices, Pods and `AuthorizationPolicy` objects in every namespace, each
//! feeding a reflector store. Any change wakes the builder, which waits a moment for
//! related changes to land (a rollout moves pods and slices together), translates the
//! stores ([`crate::kube_model`]) and publishes the view.
//!
//! The Kubernetes API is the only store: the last accepted version of each policy is
//! kept in its `status.acceptedSpec` ([`crate::kube_status`] writes it), and applies
//! while the current spec is invalid. Writes happen only when the status differs, so
//! replicas that agree write nothing twice and the watch they trigger changes no view.

use std::sync::Arc;
use std::time::Duration;

use airlock_identity::TrustDomain;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::Notify;

use crate::kube_model::{Cluster, policy_resource, translate};
use crate::kube_slim::Slim;
use crate::publish::Publisher;
use crate::view::MeshView;

/// How long the builder waits after a change for the ones that come with it.
const SETTLE: Duration = Duration::from_millis(50);
/// The four stores, and what wakes the builder.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    policies: Store<DynamicObject>,
}

impl Stores {
    fn cluster(&self) -> Cluster {
        Cluster {
            services: self.services.state(),
            slices: self.slices.state(),
            pods: self.pods.state(),
            policies: self.policies.state(),
        }
    }

    async fn ready(&self) {
        // A store is ready once its first list is in; a writer dropped (its watch task
        // ended) leaves it never ready, and the controller never ready with it.
        let listed = tokio::join!(
            self.services.wait_until_ready(),
            self.slices.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.policies.wait_until_ready(),
        );
        if listed.0.is_err() || listed.1.is_err() || listed.2.is_err() || listed.3.is_err() {
            // An empty view now would wipe every sidecar's mesh: stay not ready.
            tracing::error!("a watch ended before its first list; the controller stays not ready");
            std::future::pending::<()>().await;
        }
    }
}

/// Starts a watch of every object of kind `K` (described by `resource`), reflected into
/// the returned store; each event (or error, logged) wakes `changed`.
fn watch_all<K>(client: &Client, resource: K::DynamicType, changed: &Arc<Notify>) -> Store<K>
where
    K: Resource
        + Slim
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let api: Api<K> = Api::all_with(client.clone(), &resource);
    let kind = K::kind(&resource).into_owned();
    let changed = changed.clone();
    let writer = reflector::store::Writer::new(resource);
    let reader = writer.as_reader();
    let config = watcher::Config::default();
    let stream = watcher(api, config)
        // Only what the translation reads is kept: most of an object tells the mesh
        // nothing, and the stores hold every Pod of the cluster.
        .modify(Slim::slim)
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
            }
            changed.notify_one();
        }
    });
    reader
}

/// Watches the cluster through `client` and publishes a view after each change.
pub(crate) async fn follow(
    client: Client,
    trust_domain: TrustDomain,
    mesh_port: u16,
    mut publisher: Publisher,
) {
    let changed = Arc::new(Notify::new());
    let stores = Stores {
        services: watch_all(&client, (), &changed),
        slices: watch_all(&client, (), &changed),
        pods: watch_all(&client, (), &changed),
        policies: watch_all(&client, policy_resource(), &changed),
    };
    stores.ready().await;
    tracing::info!("the cluster's objects are listed; serving views");
    let status = crate::kube_status::spawn(client, stores.policies.clone());
    loop {
        let translation = translate(&stores.cluster(), &trust_domain, mesh_port);
        let mut problems = translation.problems.clone();
        problems.extend(
            translation
                .policies
                .iter()
                .filter_map(|p| p.refused.clone()),
        );
        publisher.report(problems);
        let policies = translation
            .policies
            .iter()
            .filter_map(|p| p.applied.clone())
            .collect();
        publisher.publish(MeshView::new(translation.services, policies));
        status.send_replace(Arc::new(translation.policies));
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
    }
}
