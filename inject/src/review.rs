//! The AdmissionReview v1 exchange of the mutating webhook: a review in, a review out,
//! whatever the input. Malformed reviews get an AdmissionReview error (HTTP 400 with a
//! `status`), never a panic; kinds without a pod template pass unchanged.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::patch::json_patch;
use crate::pod::{InjectOptions, Outcome};
use crate::workload::{inject_object, template_pointer};

const API_VERSION: &str = "admission.k8s.io/v1";
/// Parsed JSON takes far more memory than its text (tens of bytes per value). A real
/// pod holds a few thousand values; refusing more before parsing bounds each review's
/// memory whatever its body.
pub const MAX_JSON_VALUES: usize = 50_000;

/// The HTTP status and AdmissionReview body answering `body`.
pub fn review(body: &[u8], options: &InjectOptions) -> (u16, Value) {
    answered(body, |request| decide(request, options))
}

/// The answer to `body`: 400 when it is no AdmissionReview the webhook can read, else
/// 200 with `respond`'s `response` for its request.
fn answered(body: &[u8], respond: impl FnOnce(&Request) -> Value) -> (u16, Value) {
    match parse(body) {
        Ok(request) => (200, answer(&request.uid, respond(&request))),
        Err(message) => (
            400,
            answer(
                "",
                json!({
                    "allowed": false,
                    "status": status(400, "BadRequest", &message.to_string()),
                }),
            ),
        ),
    }
}

/// Answers a validating AdmissionReview of an `AuthorizationPolicy`: allowed when the
/// policy loader reads its spec, refused with the loader's message otherwise, the same
/// message the controller writes into an invalid object's status. Other kinds and
/// operations (DELETE, a status update) are allowed: the webhook is registered for
/// CREATE and UPDATE of the resource itself.
pub fn review_policy(body: &[u8]) -> (u16, Value) {
    answered(body, decide_policy)
}

fn decide_policy(request: &Request) -> Value {
    let checked = request.kind == "AuthorizationPolicy"
        && matches!(request.operation.as_str(), "CREATE" | "UPDATE");
    if !checked {
        return json!({"allowed": true});
    }
    let name = request
        .object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let spec = request.object.get("spec").cloned().unwrap_or(Value::Null);
    let source = format!("AuthorizationPolicy {}/{name}", request.namespace);
    let document = airlock_policy::load::resource_document(&request.namespace, name, &spec);
    match airlock_policy::load::parse_text(std::path::Path::new(&source), &document) {
        Ok(_) => json!({"allowed": true}),
        Err(errors) => json!({
            "allowed": false,
            "status": status(
                422,
                "Invalid",
                &format!("airlock: {}", airlock_policy::load::joined(&errors)),
            ),
        }),
    }
}

/// Why a body is no AdmissionReview the injector can answer (the `status.message` of
/// its 400).
#[derive(Debug, thiserror::Error)]
enum ReviewError {
    /// The body holds more JSON values than a review needs (see [`MAX_JSON_VALUES`]).
    #[error("the review holds more than {MAX_JSON_VALUES} JSON values")]
    TooBig,
    /// The body does not parse as JSON.
    #[error("the body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an AdmissionReview of the version the webhook speaks.
    #[error("the body is not an AdmissionReview of apiVersion {API_VERSION}")]
    NotAReview,
    /// A member the injector needs (`request.uid`, say) is absent or empty.
    #[error("{field} is missing")]
    Missing { field: &'static str },
}

/// The parts of `request` the injector reads.
struct Request {
    uid: String,
    kind: String,
    operation: String,
    namespace: String,
    object: Value,
}

fn parse(body: &[u8]) -> Result<Request, ReviewError> {
    if json_values_over(body, MAX_JSON_VALUES) {
        return Err(ReviewError::TooBig);
    }
    let mut review: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
    let field = |pointer: &str| {
        review
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if field("/apiVersion").as_deref() != Some(API_VERSION)
        || field("/kind").as_deref() != Some("AdmissionReview")
    {
        return Err(ReviewError::NotAReview);
    }
    let missing = |field| ReviewError::Missing { field };
    let uid = field("/request/uid")
        .filter(|uid| !uid.is_empty())
        .ok_or(missing("request.uid"))?;
    let kind = field("/request/kind/kind").ok_or(missing("request.kind.kind"))?;
    let operation = field("/request/operation").ok_or(missing("request.operation"))?;
    let request_namespace = field("/request/namespace");
    // Taken, not copied: the object is most of the review.
    let object = review
        .pointer_mut("/request/object")
        .map(Value::take)
        .filter(Value::is_object)
        .unwrap_or(Value::Null);
    let namespace = request_namespace
        .as_deref()
        .or_else(|| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
        })
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
        .to_owned();
    Ok(Request {
        uid,
        kind,
        operation,
        namespace,
        object,
    })
}

/// Whether `body` holds more than `limit` JSON values, counted from its structure
/// (separators and openers outside strings) without parsing it.
fn json_values_over(body: &[u8], limit: usize) -> bool {
    let (mut values, mut in_string, mut escaped) = (1usize, false, false);
    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b',' | b'[' | b'{' | b':' => {
                values += 1;
                if values > limit {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// The `response` member for a well-formed request.
fn decide(request: &Request, options: &InjectOptions) -> Value {
    // A pod's containers cannot change after creation; workload templates can.
    let mutable = match request.kind.as_str() {
        "Pod" => request.operation == "CREATE",
        _ => matches!(request.operation.as_str(), "CREATE" | "UPDATE"),
    };
    if !mutable || template_pointer(&request.kind).is_none() {
        return json!({"allowed": true});
    }
    if request.object.is_null() {
        return json!({
            "allowed": false,
            "status": status(400, "BadRequest", "request.object is missing"),
        });
    }
    let mut object = request.object.clone();
    let reports = match inject_object(&mut object, &request.kind, &request.namespace, options) {
        Ok(reports) => reports,
        Err(message) => {
            // Refused rather than admitted without a sidecar: the pod would run outside
            // the mesh (or its traffic would bypass the sidecar) without anyone noticing.
            return json!({
                "allowed": false,
                "status": status(400, "BadRequest", &format!("airlock: {message}")),
            });
        }
    };
    let warnings: Vec<String> = reports
        .iter()
        .filter_map(|report| match report.outcome {
            Outcome::Skipped(reason) => Some(format!(
                "airlock: {}: sidecar not injected: {reason}",
                report.object
            )),
            Outcome::Injected(_) => None,
        })
        .collect();
    let patch = json_patch(&request.object, &object);
    let mut response = json!({"allowed": true});
    if !patch.is_empty() {
        let encoded = serde_json::to_vec(&patch).expect("a patch serializes");
        response["patchType"] = "JSONPatch".into();
        response["patch"] = base64::engine::general_purpose::STANDARD
            .encode(encoded)
            .into();
    }
    if !warnings.is_empty() {
        response["warnings"] = warnings.into();
    }
    response
}

fn answer(uid: &str, mut response: Value) -> Value {
    response["uid"] = uid.into();
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"code": code, "reason": reason, "message": message})
}
