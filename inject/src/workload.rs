//! Where the pod template sits in each workload kind, and the injection of one object.

use serde_json::Value;

use crate::pod::{InjectOptions, Outcome, inject_template};

/// What the injector did to one pod template of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Deployment shop/checkout`.
    pub object: String,
    pub outcome: Outcome,
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
) -> Result<Vec<Report>, String> {
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
    let template = object
        .pointer_mut(pointer)
        .filter(|t| t.is_object())
        .ok_or_else(|| format!("{label}: {} is missing", field_path(pointer)))?;
    let outcome = inject_template(template, &namespace, options)
        .map_err(|e| format!("{label}: {}{e}", field_prefix(pointer)))?;
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
