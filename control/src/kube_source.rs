//! The Kubernetes source (`--source kubernetes`): kube-rs watchers on Services,
//! EndpointSlices, Pods and `AuthorizationPolicy` objects in every namespace, each
//! feeding a reflector store. Any change wakes the builder, which waits a moment for
//! related changes to land (a rollout moves pods and slices together), translates the
//! stores ([`crate::kube_model`]) and publishes the view.
//!
//! The Kubernetes API is the only store: the last accepted version of each policy is
//! kept in its `status.acceptedSpec`, with an `Accepted` condition saying whether the
//! current spec is valid; an invalid spec also gets a Warning Event with the loader's
//! message. Writes happen only when the status differs, so replicas that agree write
//! nothing twice and the watch they trigger changes no view.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use airlock_identity::TrustDomain;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::health::Health;
use crate::kube_model::{Cluster, POLICY_KIND, PolicyOutcome, translate};
use crate::kube_slim::Slim;
use crate::metrics::Metrics;
use crate::publish;
use crate::view::MeshView;

/// How long the builder waits after a change for the ones that come with it.
const SETTLE: Duration = Duration::from_millis(50);
/// The field manager and event reporter name.
const MANAGER: &str = "airlock-control";

/// The `AuthorizationPolicy` resource (`airlock.dev/v1alpha1`, plural
/// `authorizationpolicies`).
pub(crate) fn policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("airlock.dev", "v1alpha1", POLICY_KIND),
        "authorizationpolicies",
    )
}

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
        let _ = tokio::join!(
            self.services.wait_until_ready(),
            self.slices.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.policies.wait_until_ready(),
        );
    }
}

/// Starts a watch of every object of kind `K`, reflected into the returned store; each
/// event (or error, logged) wakes `changed`.
fn watch_all<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changed: Arc<Notify>,
    kind: &'static str,
) -> Store<K>
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
                tracing::warn!(kind, %error, "watch failed; retrying with backoff");
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
    views: watch::Sender<Arc<MeshView>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) {
    let changed = Arc::new(Notify::new());
    let policy_api: Api<DynamicObject> = Api::all_with(client.clone(), &policy_resource());
    let stores = Stores {
        services: watch_all(
            Api::all(client.clone()),
            reflector::store::Writer::default(),
            changed.clone(),
            "Service",
        ),
        slices: watch_all(
            Api::all(client.clone()),
            reflector::store::Writer::default(),
            changed.clone(),
            "EndpointSlice",
        ),
        pods: watch_all(
            Api::all(client.clone()),
            reflector::store::Writer::default(),
            changed.clone(),
            "Pod",
        ),
        policies: watch_all(
            policy_api,
            reflector::store::Writer::new(policy_resource()),
            changed.clone(),
            POLICY_KIND,
        ),
    };
    stores.ready().await;
    tracing::info!("the cluster's objects are listed; serving views");
    let status = StatusWriter::new(client);
    let mut reported = Vec::new();
    loop {
        let translation = translate(&stores.cluster(), &trust_domain, mesh_port);
        let mut problems = translation.problems.clone();
        problems.extend(
            translation
                .policies
                .iter()
                .filter_map(|p| p.refused.clone()),
        );
        if problems != reported {
            for problem in &problems {
                tracing::error!(problem = %problem, "source object refused; its last valid version applies");
            }
            reported = problems;
        }
        metrics.invalid_objects.set(reported.len() as i64);
        let policies = translation
            .policies
            .iter()
            .filter_map(|p| p.applied.clone())
            .collect();
        publish(
            &views,
            MeshView::new(translation.services, policies),
            &health,
            &metrics,
        );
        status.update(&stores.policies, &translation.policies).await;
        changed.notified().await;
        tokio::time::sleep(SETTLE).await;
    }
}

/// Writes policies' status and Events, each once per (object, generation, verdict).
struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// What was last written for each object: its generation and whether it was valid.
    written: tokio::sync::Mutex<HashMap<String, (Option<i64>, bool)>>,
}

impl StatusWriter {
    fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            written: tokio::sync::Mutex::default(),
        }
    }

    async fn update(&self, store: &Store<DynamicObject>, outcomes: &[PolicyOutcome]) {
        let mut written = self.written.lock().await;
        for outcome in outcomes {
            let valid = outcome.refused.is_none();
            let state = (outcome.generation, valid);
            if written.get(&outcome.key) == Some(&state) {
                continue;
            }
            let Some((namespace, name)) = outcome.key.split_once('/') else {
                continue;
            };
            let Some(object) = store.state().into_iter().find(|o| {
                o.metadata.namespace.as_deref() == Some(namespace)
                    && o.metadata.name.as_deref() == Some(name)
            }) else {
                continue;
            };
            if already_written(&object, outcome) {
                written.insert(outcome.key.clone(), state);
                continue;
            }
            match self.write(&object, outcome).await {
                Ok(()) => {
                    written.insert(outcome.key.clone(), state);
                }
                Err(error) => {
                    tracing::warn!(policy = %outcome.key, %error, "could not write the policy's status");
                }
            }
        }
        written.retain(|key, _| outcomes.iter().any(|o| &o.key == key));
    }

    async fn write(
        &self,
        object: &DynamicObject,
        outcome: &PolicyOutcome,
    ) -> Result<(), kube::Error> {
        let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
        let name = object.metadata.name.as_deref().unwrap_or_default();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &policy_resource());
        let (condition_status, reason, message) = match &outcome.refused {
            None => ("True", "Valid", String::new()),
            Some(message) => ("False", "Invalid", message.clone()),
        };
        let mut status = json!({
            "conditions": [{
                "type": "Accepted",
                "status": condition_status,
                "reason": reason,
                "message": message,
                "observedGeneration": outcome.generation,
                "lastTransitionTime": now_rfc3339(),
            }],
        });
        if outcome.refused.is_none() {
            status["acceptedSpec"] = object.data.get("spec").cloned().unwrap_or_default();
        }
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        if let Some(message) = &outcome.refused {
            let reference = ObjectReference {
                api_version: Some(crate::kube_model::POLICY_API_VERSION.into()),
                kind: Some(POLICY_KIND.into()),
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                uid: object.metadata.uid.clone(),
                resource_version: object.metadata.resource_version.clone(),
                ..ObjectReference::default()
            };
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidPolicy".into(),
                note: Some(truncate(message, 1000)),
                action: "Validate".into(),
                secondary: None,
            };
            self.recorder.publish(&event, &reference).await?;
        }
        Ok(())
    }
}

/// The current time as Kubernetes writes it (RFC 3339, whole seconds, UTC).
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
}

/// True when the object's status already says what `outcome` would write.
fn already_written(object: &DynamicObject, outcome: &PolicyOutcome) -> bool {
    let Some(conditions) = object
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
    else {
        return false;
    };
    let expected = if outcome.refused.is_none() {
        "True"
    } else {
        "False"
    };
    conditions.iter().any(|condition| {
        condition["type"] == "Accepted"
            && condition["status"] == expected
            && condition["observedGeneration"].as_i64() == outcome.generation
    }) && !outcome.accept
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, limit: usize) -> String {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
