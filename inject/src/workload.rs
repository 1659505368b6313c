//! Where the pod template sits in each workload kind, and the injection of one object.

use serde_json::Value;

use crate::pod::{InjectOptions, Outcome, PodError, inject_template};

/// What the injector did to one pod template of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Deployment shop/checkout`.
    pub object: String,
    /// Injected with which identity, or skipped and why.
    pub outcome: Outcome,
}

/// Why an object's pod template could not be injected; `object` names it
/// (`Deployment shop/checkout`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    /// The object's kind holds a pod template, but this object has none at `pointer`.
    #[error("{object}: {} is missing", field_path(pointer))]
    NoTemplate {
        /// `<Kind> <namespace>/<name>` of the object.
        object: String,
        /// Where its kind keeps the pod template ([`template_pointer`]).
        pointer: &'static str,
    },
    /// The pod template at `pointer` is refused; the fields it names are prefixed with
    /// the template's own path. (Boxed: a pod error is large, and rare.)
    #[error("{object}: {}{source}", field_prefix(pointer))]
    Template {
        /// `<Kind> <namespace>/<name>` of the object.
        object: String,
        /// Where the pod template sits in it ([`template_pointer`]; `""` for a Pod).
        pointer: &'static str,
        /// Why the template was refused, relative to the template.
        #[source]
        source: Box<PodError>,
    },
}

/// The JSON pointer of the pod template inside an object of `kind`; `""` is the object
/// itself. `None`: the kind holds no pod template and passes unchanged.
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects the pod template of `object`, of kind `kind` (and of every item of a `List`),
/// whose pods run in `namespace` unless the object names its own. Objects of other kinds
/// are left alone.
pub fn inject_object(
    object: &mut Value,
    kind: &str,
    namespace: &str,
    options: &InjectOptions,
) -> Result<Vec<Report>, WorkloadError> {
    if kind.ends_with("List") {
        let mut reports = Vec::new();
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                let kind = item
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                reports.extend(inject_object(item, &kind, namespace, options)?);
            }
        }
        return Ok(reports);
    }
    let Some(pointer) = template_pointer(kind) else {
        return Ok(Vec::new());
    };
    let metadata = object.get("metadata");
    let text = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    let namespace = text("namespace").unwrap_or(namespace).to_owned();
    let name = text("name").or(text("generateName")).unwrap_or("(unnamed)");
    let label = format!("{kind} {namespace}/{name}");
    let Some(template) = object.pointer_mut(pointer).filter(|t| t.is_object()) else {
        return Err(WorkloadError::NoTemplate {
            object: label,
            pointer,
        });
    };
    let outcome = match inject_template(template, &namespace, options) {
        Ok(outcome) => outcome,
        Err(source) => {
            return Err(WorkloadError::Template {
                object: label,
                pointer,
                source: Box::new(source),
            });
        }
    };
    Ok(vec![Report {
        object: label,
        outcome,
    }])
}

/// `/spec/template` → `spec.template`.
fn field_path(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Field names in pod-template errors are relative to the template: prefix its path.
fn field_prefix(pointer: &str) -> String {
    if pointer.is_empty() {
        String::new()
    } else {
        format!("{}.", field_path(pointer))
    }
}
