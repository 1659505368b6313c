//! A fake Kubernetes API server for tests of the controller's watch wiring: it speaks
//! the API's wire format for what a reflector does (paged-less `list` with a
//! `resourceVersion`, `watch=true` streams of JSON lines with ADDED, MODIFIED, DELETED
//! and BOOKMARK events, `410 Gone` for a version older than it keeps, as an `ERROR`
//! event), and takes the writes a controller makes (merge patches of `/status`, Events).
//! Plain HTTP on loopback; [`FakeKube::kubeconfig`] writes a kubeconfig naming it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt as _;

/// The collections a controller watches, by the kind of their objects.
const COLLECTIONS: [(&str, &str); 4] = [
    ("Service", "/api/v1/services"),
    ("Pod", "/api/v1/pods"),
    ("EndpointSlice", "/apis/discovery.k8s.io/v1/endpointslices"),
    (
        "AuthorizationPolicy",
        "/apis/airlock.dev/v1alpha1/authorizationpolicies",
    ),
];

/// What the fake holds: objects per collection and what happened to them.
#[derive(Default)]
struct State {
    /// The last resourceVersion handed out.
    version: u64,
    /// Collection path → `namespace/name` → object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// Collection path → every event line sent, with its version (for watches that
    /// start from an older version).
    history: BTreeMap<&'static str, Vec<(u64, String)>>,
    /// Watches from a version below this get `410 Gone`.
    expired_below: u64,
    /// Every request line (`METHOD path?query`), in order.
    requests: Vec<String>,
    /// Merge patches of `/status`: (`namespace/name`, patch).
    status_patches: Vec<(String, Value)>,
    /// Events posted (`events.k8s.io/v1`).
    events: Vec<Value>,
}

/// A watch's next line, or the end of every open watch.
#[derive(Clone)]
enum Broadcast {
    Line(&'static str, u64, String),
    CloseAll,
}

/// A running fake API server (its thread lives as long as the test).
pub struct FakeKube {
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    lines: broadcast::Sender<Broadcast>,
}

impl FakeKube {
    /// Starts it on 127.0.0.1 holding `objects` (each with `apiVersion` and `kind`).
    pub fn start(objects: &[Value]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (lines, _) = broadcast::channel(4096);
        let fake = Self {
            addr,
            state: Arc::default(),
            lines: lines.clone(),
        };
        for object in objects {
            fake.apply(object.clone());
        }
        let state = fake.state.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, state, lines));
        });
        fake
    }

    /// Writes a kubeconfig for it (no credentials) to `path`.
    pub fn kubeconfig(&self, path: &Path) {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\n\
                 users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake, namespace: default}}\n\
                 current-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
    }

    /// Adds or replaces an object (ADDED or MODIFIED to every watch of its kind).
    pub fn apply(&self, object: Value) {
        let mut state = self.state.lock().unwrap();
        apply(&mut state, &self.lines, object);
    }

    /// Deletes the object of `kind` named `namespace/name` (DELETED to its watches).
    pub fn delete(&self, kind: &str, key: &str) {
        let mut state = self.state.lock().unwrap();
        let collection = collection_of(kind);
        let Some(mut object) = state.objects.entry(collection).or_default().remove(key) else {
            panic!("no {kind} {key} to delete");
        };
        state.version += 1;
        let version = state.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        send(
            &mut state,
            &self.lines,
            collection,
            version,
            "DELETED",
            object,
        );
    }

    /// Sends every open watch a BOOKMARK at the current version.
    pub fn bookmark(&self) {
        let mut state = self.state.lock().unwrap();
        let version = state.version;
        for (kind, collection) in COLLECTIONS {
            let line = json!({
                "type": "BOOKMARK",
                "object": {"kind": kind, "apiVersion": api_version(kind), "metadata": {"resourceVersion": version.to_string()}},
            })
            .to_string();
            state
                .history
                .entry(collection)
                .or_default()
                .push((version, line.clone()));
            let _ = self.lines.send(Broadcast::Line(collection, version, line));
        }
    }

    /// Ends every open watch, as an API server does at its watch timeout: a reflector
    /// watches again from the last version it saw (a bookmark's, say).
    pub fn end_watches(&self) {
        let _ = self.lines.send(Broadcast::CloseAll);
    }

    /// Forgets every version up to now (as etcd compaction does) and ends every open
    /// watch: the next watch from an older version gets `410 Gone`, and must list again.
    pub fn expire(&self) {
        let mut state = self.state.lock().unwrap();
        state.expired_below = state.version + 1;
        let _ = self.lines.send(Broadcast::CloseAll);
    }

    /// Every request line so far (`METHOD path?query`).
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The `/status` merge patches so far: (`namespace/name`, patch).
    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().status_patches.clone()
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// The object of `kind` named `namespace/name`, as stored now.
    pub fn object(&self, kind: &str, key: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state.objects.get(collection_of(kind))?.get(key).cloned()
    }
}

fn collection_of(kind: &str) -> &'static str {
    COLLECTIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("the fake API serves no {kind}"))
}

fn api_version(kind: &str) -> &'static str {
    match kind {
        "EndpointSlice" => "discovery.k8s.io/v1",
        "AuthorizationPolicy" => "airlock.dev/v1alpha1",
        _ => "v1",
    }
}

fn key_of(object: &Value) -> String {
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = object["metadata"]["name"]
        .as_str()
        .expect("an object has a name");
    format!("{namespace}/{name}")
}

fn apply(state: &mut State, lines: &broadcast::Sender<Broadcast>, mut object: Value) {
    let collection = collection_of(object["kind"].as_str().expect("an object has a kind"));
    state.version += 1;
    let version = state.version;
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    let key = key_of(&object);
    let previous = state.objects.entry(collection).or_default().get(&key);
    let kind = if previous.is_some() {
        "MODIFIED"
    } else {
        "ADDED"
    };
    // A write of the object leaves its status alone, as with a status subresource.
    if let Some(status) = previous
        .and_then(|p| p.get("status"))
        .filter(|_| object.get("status").is_none())
    {
        object["status"] = status.clone();
    }
    state
        .objects
        .get_mut(collection)
        .unwrap()
        .insert(key, object.clone());
    send(state, lines, collection, version, kind, object);
}

fn send(
    state: &mut State,
    lines: &broadcast::Sender<Broadcast>,
    collection: &'static str,
    version: u64,
    kind: &str,
    object: Value,
) {
    let line = json!({"type": kind, "object": object}).to_string();
    state
        .history
        .entry(collection)
        .or_default()
        .push((version, line.clone()));
    let _ = lines.send(Broadcast::Line(collection, version, line));
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    lines: broadcast::Sender<Broadcast>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (state, lines) = (state.clone(), lines.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let (state, lines) = (state.clone(), lines.clone());
                async move { Ok::<_, Infallible>(answer(request, &state, &lines).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::from(body.to_string()).boxed())
        .unwrap()
}

fn not_found(what: &str) -> Response<Body> {
    reply(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("{what} not found"), "reason": "NotFound", "code": 404}),
    )
}

async fn answer(
    request: Request<Incoming>,
    state: &Arc<Mutex<State>>,
    lines: &broadcast::Sender<Broadcast>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let method = request.method().clone();
    state
        .lock()
        .unwrap()
        .requests
        .push(format!("{method} {path}?{query}"));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if method == Method::GET {
        if let Some((_, collection)) = COLLECTIONS.iter().find(|(_, c)| *c == path) {
            return if params.get("watch").map(String::as_str) == Some("true") {
                let from = params
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                watch(collection, from, state, lines)
            } else {
                list(collection, state)
            };
        }
        return not_found(&path);
    }
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if path.starts_with("/apis/events.k8s.io/v1/namespaces/") {
        state.lock().unwrap().events.push(body.clone());
        let status = if method == Method::POST {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return reply(status, &body);
    }
    // PATCH /apis/airlock.dev/v1alpha1/namespaces/NS/authorizationpolicies/NAME/status
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method == Method::PATCH
        && let [
            "apis",
            "airlock.dev",
            "v1alpha1",
            "namespaces",
            ns,
            "authorizationpolicies",
            name,
            "status",
        ] = parts.as_slice()
    {
        let key = format!("{ns}/{name}");
        let mut state = state.lock().unwrap();
        let collection = collection_of("AuthorizationPolicy");
        let Some(mut object) = state
            .objects
            .get(collection)
            .and_then(|o| o.get(&key))
            .cloned()
        else {
            return not_found(&key);
        };
        merge(&mut object, &body);
        state.status_patches.push((key, body));
        apply(&mut state, lines, object.clone());
        let object = state.objects[collection][&key_of(&object)].clone();
        return reply(StatusCode::OK, &object);
    }
    not_found(&path)
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    target.as_object_mut().unwrap().remove(key);
                } else {
                    merge(
                        target
                            .as_object_mut()
                            .unwrap()
                            .entry(key)
                            .or_insert(Value::Null),
                        value,
                    );
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn list(collection: &'static str, state: &Arc<Mutex<State>>) -> Response<Body> {
    let state = state.lock().unwrap();
    let items: Vec<Value> = state
        .objects
        .get(collection)
        .map(|objects| objects.values().cloned().collect())
        .unwrap_or_default();
    let kind = COLLECTIONS
        .iter()
        .find(|(_, c)| *c == collection)
        .map(|(k, _)| *k)
        .unwrap();
    reply(
        StatusCode::OK,
        &json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version(kind),
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        }),
    )
}

fn watch(
    collection: &'static str,
    from: u64,
    state: &Arc<Mutex<State>>,
    lines: &broadcast::Sender<Broadcast>,
) -> Response<Body> {
    let (sender, receiver) = mpsc::channel::<String>(1024);
    let state = state.lock().unwrap();
    if from < state.expired_below {
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("too old resource version: {from} ({})", state.expired_below),
            "reason": "Expired", "code": 410}});
        let _ = sender.try_send(format!("{gone}\n"));
    } else {
        // Subscribed under the lock, so nothing falls between the replay and the live
        // lines.
        let mut live = lines.subscribe();
        let replay: Vec<(u64, String)> = state
            .history
            .get(collection)
            .map(|h| h.iter().filter(|(v, _)| *v > from).cloned().collect())
            .unwrap_or_default();
        tokio::spawn(async move {
            for (_, line) in replay {
                if sender.send(format!("{line}\n")).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(Broadcast::Line(c, version, line)) if c == collection && version > from => {
                        if sender.send(format!("{line}\n")).await.is_err() {
                            return;
                        }
                    }
                    Ok(Broadcast::Line(..)) => {}
                    Ok(Broadcast::CloseAll) | Err(_) => return,
                }
            }
        });
    }
    let frames = tokio_stream::wrappers::ReceiverStream::new(receiver)
        .map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line))));
    Response::builder()
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap()
}
