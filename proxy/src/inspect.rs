//! Answering questions about the live sidecar, on the loopback admin listener:
//! `GET /status` (who it is, what it trusts, which policy set is live and whether the last
//! reload was refused, how old its registry is, what it listens on, how much is live, and
//! the last denials) and `POST /policy/eval` (how the loaded policies would decide a
//! request to this workload, on the evaluation entry point the live path uses).
//!
//! [`Inspect`] holds what nothing else keeps: the bound listeners, the last refused policy
//! reload, when the registry was last loaded, and a small ring of recent denials fed by
//! `authorize`. Nothing here shows a key, a token or a header value, and a denial keeps
//! the path without its query string, which may carry credentials.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use airlock_identity::{SpiffeId, TrustBundle};
use airlock_policy::Decision;
use airlock_policy::eval::{HttpRequest, RequestSpec};
use airlock_policy::http::{
    PathOptions, check_method, effective_method, normalize_host, normalize_path,
};
use airlock_policy::model::Timestamp;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use serde_json::{Map, Value, json};

use crate::Shared;
use crate::config::HttpLimits;
use crate::lifecycle::unix_now;
use crate::start::Bound;
use crate::tunnels::TunnelKey;

/// How many recent denials `/status` shows; older ones fall out.
const DENIALS_KEPT: usize = 20;

/// The largest `/policy/eval` body: a request description, not a payload.
const MAX_EVAL_BODY: usize = 64 * 1024;

/// How long a `/policy/eval` body may take to arrive (the listener's header timeout does
/// not cover the body).
const EVAL_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// One denial, as `/status` lists it.
struct Denial {
    at: i64,
    peer: Option<SpiffeId>,
    source_ip: IpAddr,
    port: u16,
    /// Method and path (no query), for an HTTP request.
    http: Option<(String, String)>,
    policy: Option<String>,
    reason: String,
}

/// A refused policy reload: when, and the loader's errors.
struct Refusal {
    at: i64,
    message: String,
}

/// What the sidecar remembers only so that it can answer `/status`.
pub(crate) struct Inspect {
    bound: OnceLock<Bound>,
    policy_refusal: Mutex<Option<Refusal>>,
    registry_loaded_at: AtomicI64,
    denials: Mutex<VecDeque<Denial>>,
}

impl Inspect {
    /// Fresh state; the registry counts as loaded now (`run` loads it before this).
    pub(crate) fn new() -> Self {
        Self {
            bound: OnceLock::new(),
            policy_refusal: Mutex::new(None),
            registry_loaded_at: AtomicI64::new(unix_now()),
            denials: Mutex::new(VecDeque::with_capacity(DENIALS_KEPT)),
        }
    }

    /// Keeps the addresses `run` bound.
    pub(crate) fn listening(&self, bound: &Bound) {
        let _ = self.bound.set(bound.clone());
    }

    /// Records a policy reload: `Some(errors)` when it was refused, `None` when the files
    /// are what is live (swapped in, or unchanged), which clears an earlier refusal.
    pub(crate) fn policy_reload(&self, refused: Option<&str>) {
        let mut last = self
            .policy_refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match refused {
            Some(message) if last.as_ref().is_some_and(|r| r.message == message) => {}
            Some(message) => {
                *last = Some(Refusal {
                    at: unix_now(),
                    message: message.to_owned(),
                });
            }
            None => *last = None,
        }
    }

    /// Records that the registry was (re)loaded just now.
    pub(crate) fn registry_loaded(&self) {
        self.registry_loaded_at.store(unix_now(), Ordering::Relaxed);
    }

    /// Remembers `key`'s denial, dropping the oldest beyond [`DENIALS_KEPT`].
    pub(crate) fn denied(&self, key: &TunnelKey, decision: &Decision, now: i64) {
        let denial = Denial {
            at: now,
            peer: key.source.clone(),
            source_ip: key.source_ip,
            port: key.port,
            http: key
                .http
                .as_ref()
                .map(|r| (r.method.clone(), r.path.clone())),
            policy: decision.reason.policy().map(ToString::to_string),
            reason: decision.reason.to_string(),
        };
        let mut denials = self.denials.lock().unwrap_or_else(PoisonError::into_inner);
        if denials.len() == DENIALS_KEPT {
            denials.pop_front();
        }
        denials.push_back(denial);
    }
}

/// Whether `request` is `POST /policy/eval`, which [`eval`] answers (it reads a body).
pub(crate) fn is_eval(request: &Request<Incoming>) -> bool {
    request.method() == Method::POST && request.uri().path() == "/policy/eval"
}

/// The current SVID: its ID, serial, validity and how long it has left; `None` before
/// the first one.
fn svid_json(shared: &Shared, now: i64) -> Option<Value> {
    shared.identity.store.current().map(|svid| {
        json!({
            "spiffe_id": svid.id,
            "serial": svid.serial_hex,
            "not_before": svid.not_before,
            "not_after": svid.not_after,
            "expires_in_s": svid.not_after - now,
            "valid": svid.not_before <= now && now < svid.not_after,
        })
    })
}

/// The trust bundle's roots: subject, serial, expiry and how long each has left.
fn roots_json(bundle: &TrustBundle, now: i64) -> Vec<Value> {
    bundle
        .roots()
        .iter()
        .filter_map(|der| {
            use x509_parser::prelude::FromDer;
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
            let not_after = cert.validity().not_after.timestamp();
            Some(json!({
                "subject": cert.subject().to_string(),
                "serial": cert.raw_serial_as_string(),
                "not_after": not_after,
                "expires_in_s": not_after - now,
            }))
        })
        .collect()
}

/// `GET /certs`: the SVID and the bundle's roots.
pub(crate) fn certs(shared: &Shared) -> Response<Full<Bytes>> {
    let now = unix_now();
    let bundle = shared.identity.bundle.current();
    json_response(
        StatusCode::OK,
        &json!({
            "svid": svid_json(shared, now),
            "trust_domain": bundle.trust_domain().as_str(),
            "bundle_roots": roots_json(&bundle, now),
        }),
    )
}

/// `GET /status`.
pub(crate) fn status(shared: &Shared) -> Response<Full<Bytes>> {
    let now = unix_now();
    let inspect = &shared.inspect;
    let identity = svid_json(shared, now);
    let bundle = shared.identity.bundle.current();
    let roots = roots_json(&bundle, now);
    let (policies, version) = shared.policy.versioned();
    let refusal = inspect
        .policy_refusal
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|r| json!({"at": r.at, "message": r.message}));
    let loaded_at = inspect.registry_loaded_at.load(Ordering::Relaxed);
    let registry_file = shared
        .config
        .registry_file
        .as_ref()
        .map(|f| f.display().to_string());
    let denials: Vec<_> = inspect
        .denials
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .rev()
        .map(|d| {
            json!({
                "at": d.at,
                "peer": d.peer.as_ref().map_or("unauthenticated".to_owned(), ToString::to_string),
                "source_ip": d.source_ip.to_string(),
                "port": d.port,
                "method": d.http.as_ref().map(|h| h.0.as_str()),
                "path": d.http.as_ref().map(|h| h.1.as_str()),
                "policy": d.policy,
                "reason": d.reason,
            })
        })
        .collect();
    let live = *shared.tunnels.watch_count().borrow();
    json_response(
        StatusCode::OK,
        &json!({
            "identity": identity,
            "ready": shared.is_ready(),
            "draining": shared.is_draining(),
            "trust_domain": bundle.trust_domain().as_str(),
            "bundle_roots": roots,
            "policy": {
                "version": version,
                "policies": policies.len(),
                "default": shared.config.policy.default.to_string(),
                "last_error": refusal,
            },
            "registry": {
                "services": shared.services().len(),
                "registry_file": registry_file,
                "loaded_at": loaded_at,
                "age_s": now - loaded_at,
            },
            "controller": shared
                .config
                .discovery
                .as_ref()
                .map(|config| shared.discovery.status(config, now)),
            "listeners": inspect.bound.get().map(listeners),
            "connections": {"live": live},
            "denials": denials,
        }),
    )
}

fn listeners(bound: &Bound) -> Value {
    let upstreams: Vec<_> = bound
        .upstreams
        .iter()
        .map(|(service, port, listen)| json!({"service": service, "port": port, "listen": listen.to_string()}))
        .collect();
    json!({
        "inbound": bound.inbound.to_string(),
        "permissive": bound.permissive.map(|a| a.to_string()),
        "admin": bound.admin.to_string(),
        "health": bound.health.to_string(),
        "upstreams": upstreams,
        "transparent": bound.transparent.map(|a| a.to_string()),
    })
}

/// `POST /policy/eval`: decides the request the body describes as if it came in now
/// (or `at`), to this workload, on the live set and the configured default.
pub(crate) async fn eval(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = Limited::new(request.into_body(), MAX_EVAL_BODY);
    let bytes = match tokio::time::timeout(EVAL_BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return bad_request(&format!(
                "the body is larger than {MAX_EVAL_BODY} bytes or broken"
            ));
        }
        Err(_) => return bad_request("the body did not arrive in time"),
    };
    let asked = match EvalRequest::parse(&bytes) {
        Ok(asked) => asked,
        Err(message) => return bad_request(&message),
    };
    let now = unix_now();
    let Some(own) = shared.identity.valid_svid(now) else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "this sidecar holds no valid SVID yet, so it has no identity to decide for"}),
        );
    };
    let (set, version) = shared.policy.versioned();
    let default = shared.config.policy.default;
    let at = asked.at.unwrap_or(now);
    let limits = shared
        .config
        .inbound
        .ports
        .iter()
        .find(|p| p.port == asked.port)
        .map(|p| &p.http);
    let mut answer = match asked.http(limits) {
        // The sidecar refuses a port it does not declare before any policy runs.
        _ if limits.is_none() => json!({
            "decision": "deny",
            "reason": format!("port {} is not served here: refused before policy (403)", asked.port),
            "policy": null,
            "rule": null,
            "dry_run": [],
        }),
        Ok(http) => {
            let spec = RequestSpec {
                target: own.id.clone(),
                port: asked.port,
                source: asked.source,
                source_ip: asked.source_ip,
                http,
                now: at,
            };
            set.evaluate_spec(&spec, default).to_json()
        }
        // The proxy answers such a request 400 before any policy runs.
        Err(refusal) => json!({
            "decision": "deny",
            "reason": format!("request refused before policy (400): {refusal}"),
            "policy": null,
            "rule": null,
            "dry_run": [],
        }),
    };
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("policy_version".into(), json!(version));
        fields.insert("policies".into(), json!(set.len()));
        fields.insert("target".into(), json!(own.id.to_string()));
        fields.insert("default".into(), json!(default.to_string()));
        fields.insert("at".into(), json!(at));
    }
    json_response(StatusCode::OK, &answer)
}

/// The body of `POST /policy/eval`: the flags of `airlock policy eval`, minus the policy
/// files, the target (this workload) and the default (the configured one).
#[derive(Default)]
struct EvalRequest {
    source: Option<SpiffeId>,
    source_ip: Option<IpAddr>,
    port: u16,
    /// `None`: HTTP when any HTTP field is given, else TCP.
    protocol_http: Option<bool>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    headers: Vec<(String, String)>,
    at: Option<i64>,
}

impl EvalRequest {
    /// Reads the JSON object field by field, so that an error names the field at fault.
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("the body must be a JSON object".into());
        };
        let mut asked = Self::default();
        let mut port = None;
        for (name, value) in &fields {
            let bad = |what: &str| format!("field `{name}`: expected {what}");
            match name.as_str() {
                "source" => {
                    let text = string(value).ok_or_else(|| bad("a SPIFFE ID string"))?;
                    asked.source = Some(SpiffeId::parse(text).map_err(|e| bad_field(name, e))?);
                }
                "source_ip" => {
                    let text = string(value).ok_or_else(|| bad("an IP address string"))?;
                    asked.source_ip = Some(text.parse().map_err(|e| bad_field(name, e))?);
                }
                "port" => {
                    port = value
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p > 0);
                    if port.is_none() {
                        return Err(bad("a port number from 1 to 65535"));
                    }
                }
                "protocol" => {
                    asked.protocol_http = match string(value) {
                        Some("tcp") => Some(false),
                        Some("http") => Some(true),
                        _ => return Err(bad("\"tcp\" or \"http\"")),
                    };
                }
                "method" => asked.method = Some(owned(value).ok_or_else(|| bad("a string"))?),
                "path" => asked.path = Some(owned(value).ok_or_else(|| bad("a string"))?),
                "host" => asked.host = Some(owned(value).ok_or_else(|| bad("a string"))?),
                "headers" => {
                    asked.headers = headers(value)
                        .ok_or_else(|| bad("a list of {\"name\": ..., \"value\": ...} objects"))?
                }
                "at" => {
                    asked.at = Some(match value {
                        Value::Number(n) => n
                            .as_i64()
                            .ok_or_else(|| bad("Unix seconds or an RFC 3339 time"))?,
                        Value::String(text) => {
                            Timestamp::parse(text).map_err(|e| bad_field(name, e))?.0
                        }
                        _ => return Err(bad("Unix seconds or an RFC 3339 time")),
                    });
                }
                _ => {
                    return Err(format!(
                        "unknown field `{name}` (known: source, source_ip, port, protocol, method, path, host, headers, at)"
                    ));
                }
            }
        }
        asked.port = port.ok_or("field `port` is required")?;
        let http_fields = asked.method.is_some()
            || asked.path.is_some()
            || asked.host.is_some()
            || !asked.headers.is_empty();
        if asked.protocol_http == Some(false) && http_fields {
            return Err(
                "field `protocol`: \"tcp\" cannot be combined with method, path, host or headers"
                    .into(),
            );
        }
        Ok(asked)
    }

    /// The HTTP request to decide, `None` for TCP, normalized as the live path does on a
    /// port with these `limits` (encoded slashes, method overrides); an error when the
    /// proxy would refuse its shape before policy.
    fn http(&self, limits: Option<&HttpLimits>) -> Result<Option<HttpRequest>, String> {
        let http_fields = self.method.is_some()
            || self.path.is_some()
            || self.host.is_some()
            || !self.headers.is_empty();
        if !self.protocol_http.unwrap_or(http_fields) {
            return Ok(None);
        }
        let (encoded_slashes, overrides) = limits.map_or((false, false), |l| {
            (l.allow_encoded_slashes, l.allow_method_override)
        });
        let method = self.method.as_deref().unwrap_or("GET");
        check_method(method).map_err(|e| e.to_string())?;
        let options = PathOptions {
            allow_encoded_slashes: encoded_slashes,
        };
        let path = normalize_path(self.path.as_deref().unwrap_or("/"), options)
            .map_err(|e| e.to_string())?
            .path;
        let headers = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let overriding = effective_method(method, headers, overrides).map_err(|e| e.to_string())?;
        Ok(Some(HttpRequest {
            method: method.to_owned(),
            override_method: (overriding != method).then(|| overriding.to_owned()),
            path,
            host: normalize_host(self.host.as_deref().unwrap_or_default()),
            headers: self.headers.clone(),
        }))
    }
}

fn bad_field(name: &str, error: impl std::fmt::Display) -> String {
    format!("field `{name}`: {error}")
}

fn string(value: &Value) -> Option<&str> {
    value.as_str()
}

fn owned(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn headers(value: &Value) -> Option<Vec<(String, String)>> {
    value
        .as_array()?
        .iter()
        .map(|header| {
            let header: &Map<String, Value> = header.as_object()?;
            let name = header.get("name")?.as_str()?.trim();
            let value = header.get("value")?.as_str()?;
            (!name.is_empty() && header.len() == 2).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn bad_request(message: &str) -> Response<Full<Bytes>> {
    json_response(StatusCode::BAD_REQUEST, &json!({"error": message}))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(
        serde_json::to_vec_pretty(value).expect("serializable"),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_is_named() {
        let cases = [
            (r#"{"port": 0}"#, "field `port`"),
            (r#"{"port": 80, "source": "nope"}"#, "field `source`"),
            (
                r#"{"port": 80, "source_ip": "10.0.0"}"#,
                "field `source_ip`",
            ),
            (
                r#"{"port": 80, "headers": [{"name": "a"}]}"#,
                "field `headers`",
            ),
            (r#"{"port": 80, "at": "yesterday"}"#, "field `at`"),
            (r#"{"port": 80, "colour": "red"}"#, "unknown field `colour`"),
            (r#"{"source_ip": "10.0.0.1"}"#, "field `port` is required"),
            (
                r#"{"port": 80, "protocol": "tcp", "path": "/"}"#,
                "field `protocol`",
            ),
        ];
        for (body, named) in cases {
            let error = EvalRequest::parse(body.as_bytes())
                .err()
                .unwrap_or_else(|| panic!("{body} was accepted"));
            assert!(error.contains(named), "{body}: {error}");
        }
        let fine = EvalRequest::parse(
            br#"{"port": 80, "method": "GET", "headers": [{"name": "x-a", "value": "1"}], "at": 5}"#,
        )
        .unwrap();
        assert_eq!((fine.port, fine.at), (80, Some(5)));
        assert!(fine.http(None).unwrap().is_some(), "HTTP fields imply HTTP");
    }
}
