//! Writing back what the controller decided about each `AuthorizationPolicy`: its
//! `status` (an `Accepted` condition, and `acceptedSpec`, the last valid spec, which is
//! what applies while the current spec is invalid) and a Warning Event for an invalid
//! one. The Kubernetes API is the only store, so replicas and restarts agree.
//!
//! Writes run in their own task, away from the view builder: a slow or failing API
//! call delays a status, never a view. Each call has a deadline; what could not be
//! written is tried again a little later, even if nothing else changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::kube_model::{POLICY_KIND, PolicyOutcome, policy_resource};

/// The field manager and event reporter name.
const MANAGER: &str = "airlock-control";

/// One status write or Event, at most.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// When something could not be written, the next attempt.
const RETRY: Duration = Duration::from_secs(5);

/// Starts the writer; it follows the outcomes sent to the returned sender, and stops
/// when that is dropped.
pub(crate) fn spawn(
    client: Client,
    store: Store<DynamicObject>,
) -> watch::Sender<Arc<Vec<PolicyOutcome>>> {
    let (outcomes, mut latest) = watch::channel(Arc::new(Vec::new()));
    let mut writer = StatusWriter::new(client);
    tokio::spawn(async move {
        loop {
            let outcomes = latest.borrow_and_update().clone();
            let next = if writer.update(&store, &outcomes).await {
                latest.changed().await
            } else {
                match tokio::time::timeout(RETRY, latest.changed()).await {
                    Ok(changed) => changed,
                    Err(_) => Ok(()),
                }
            };
            if next.is_err() {
                return;
            }
        }
    });
    outcomes
}

/// Writes policies' status and Events, each once per (object, generation, verdict).
struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// What was last written for each object (by uid, so that an object deleted and
    /// made again under its name is written anew): its generation and validity.
    written: HashMap<String, (Option<i64>, bool)>,
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
            written: HashMap::new(),
        }
    }

    /// Brings every object's status up to date with `outcomes`; false when some write
    /// failed.
    async fn update(&mut self, store: &Store<DynamicObject>, outcomes: &[PolicyOutcome]) -> bool {
        let objects: HashMap<String, Arc<DynamicObject>> = store
            .state()
            .into_iter()
            .map(|o| {
                (
                    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()),
                    o,
                )
            })
            .collect();
        let mut all_written = true;
        for outcome in outcomes {
            let Some(object) = objects.get(&outcome.key) else {
                continue;
            };
            let key = object.uid().unwrap_or_else(|| outcome.key.clone());
            let state = (outcome.generation, outcome.refused.is_none());
            if self.written.get(&key) == Some(&state) {
                continue;
            }
            if !already_written(object, outcome) {
                let written = tokio::time::timeout(CALL_TIMEOUT, self.write(object, outcome)).await;
                let failure = match written {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) => Some(error.to_string()),
                    Err(_) => Some(format!("no answer within {CALL_TIMEOUT:?}")),
                };
                if let Some(error) = failure {
                    tracing::warn!(policy = %outcome.key, %error, "could not write the policy's status; trying again shortly");
                    all_written = false;
                    continue;
                }
            }
            self.written.insert(key, state);
        }
        let live: Vec<String> = objects
            .values()
            .map(|o| o.uid().unwrap_or_default())
            .collect();
        self.written
            .retain(|key, _| live.contains(key) || objects.contains_key(key));
        all_written
    }

    async fn write(
        &self,
        object: &DynamicObject,
        outcome: &PolicyOutcome,
    ) -> Result<(), kube::Error> {
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let name = object.name_any();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &namespace, &policy_resource());
        let accepted = if outcome.refused.is_none() {
            "True"
        } else {
            "False"
        };
        let (reason, message) = match &outcome.refused {
            None => ("Valid", String::new()),
            Some(message) => ("Invalid", message.clone()),
        };
        // The transition time moves only when the verdict does.
        let previous = accepted_condition(object);
        let since = previous
            .filter(|condition| condition["status"] == accepted)
            .and_then(|condition| condition["lastTransitionTime"].as_str())
            .map_or_else(now_rfc3339, str::to_owned);
        let mut status = json!({
            "conditions": [{
                "type": "Accepted",
                "status": accepted,
                "reason": reason,
                "message": message,
                "observedGeneration": outcome.generation,
                "lastTransitionTime": since,
            }],
        });
        if outcome.refused.is_none() {
            let spec = object.data.get("spec").cloned().unwrap_or_default();
            status["acceptedSpec"] = replacing(object.data.pointer("/status/acceptedSpec"), &spec);
        }
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
        if let Some(message) = &outcome.refused {
            let reference = ObjectReference {
                api_version: Some(crate::kube_model::POLICY_API_VERSION.into()),
                kind: Some(POLICY_KIND.into()),
                name: Some(name),
                namespace: Some(namespace),
                uid: object.uid(),
                resource_version: object.resource_version(),
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

/// The object's `Accepted` condition, if it has one.
fn accepted_condition(object: &DynamicObject) -> Option<&Value> {
    object
        .data
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == "Accepted")
}

/// A JSON merge patch (RFC 7386) that turns `old` into `new`. Merging `new` alone would
/// keep every field `old` has and `new` lacks (a removed `mode: dry-run` would live on
/// in `acceptedSpec`), so those are set to null, which a merge patch deletes.
fn replacing(old: Option<&Value>, new: &Value) -> Value {
    match (old, new) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            let mut patch: serde_json::Map<String, Value> = new
                .iter()
                .map(|(key, value)| (key.clone(), replacing(old.get(key), value)))
                .collect();
            for key in old.keys().filter(|key| !new.contains_key(*key)) {
                patch.insert(key.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
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
    let expected = if outcome.refused.is_none() {
        "True"
    } else {
        "False"
    };
    accepted_condition(object).is_some_and(|condition| {
        condition["status"] == expected
            && condition["observedGeneration"].as_i64() == outcome.generation
    }) && !outcome.accepted_stale
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, limit: usize) -> String {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a JSON merge patch as RFC 7386 says.
    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(target), Value::Object(patch)) => {
                for (key, value) in patch {
                    if value.is_null() {
                        target.remove(key);
                    } else {
                        merge(target.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
            (target, patch) => *target = patch.clone(),
        }
    }

    #[test]
    fn the_accepted_spec_becomes_the_new_spec_whatever_it_lost() {
        let cases = [
            // A field removed at the top, one removed inside, one changed, one added.
            (
                json!({"action": "DENY", "mode": "dry-run", "selector": {"identities": ["a"], "namespaces": ["x"]}}),
                json!({"action": "DENY", "selector": {"identities": ["b"]}, "rules": [{}]}),
            ),
            // Nothing before.
            (Value::Null, json!({"action": "ALLOW"})),
            // Lists are replaced whole.
            (
                json!({"rules": [{"a": 1}, {"b": 2}]}),
                json!({"rules": [{"c": 3}]}),
            ),
        ];
        for (old, new) in cases {
            let mut target = old.clone();
            let patch = replacing((!old.is_null()).then_some(&old), &new);
            merge(&mut target, &patch);
            assert_eq!(target, new, "from {old}");
        }
        // The control: a plain merge keeps what the new spec lost.
        let old = json!({"action": "DENY", "mode": "dry-run"});
        let mut target = old.clone();
        merge(&mut target, &json!({"action": "DENY"}));
        assert_ne!(target, json!({"action": "DENY"}));
    }
}
