//! The mutation of one pod template (`metadata` + `spec`): the capture init container, the
//! sidecar as a native sidecar (an init container with `restartPolicy: Always`, so the app
//! containers start only once the proxy answers `/ready`), their volumes, and the sidecar's
//! configuration, carried in a pod annotation that the downward API projects as a file.
//!
//! Re-injecting first removes everything an earlier injection added, so running the
//! injector twice gives the same pod, and a new image or setting replaces the old one.

use airlock_config::ports;
use airlock_identity::{SpiffeId, SpiffeIdError, TrustDomain};
use airlock_policy::DefaultMode;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::container_ports::{ContainerPort, ContainerPortError, declared_ports};
use crate::fields::{list_text, name_of};
use crate::names::dir::{
    CA_BUNDLE_DIR, CONFIG_DIR, DISCOVERY_DIR, POLICIES_DIR, REGISTRY_DIR, TOKEN_DIR,
};
use crate::names::{annotation, config_map};
use crate::pod_settings::{PodSettings, SettingsError};
use crate::probes::{ProbeError, move_probes, restore_probes};
use crate::sidecar_config::{PodSidecar, sidecar_config};

const INIT_CONTAINER: &str = "airlock-init";
const SIDECAR_CONTAINER: &str = "airlock-proxy";
const TOKEN_VOLUME: &str = "airlock-token";
const CA_BUNDLE_VOLUME: &str = "airlock-ca-bundle";
const POLICIES_VOLUME: &str = "airlock-policies";
const REGISTRY_VOLUME: &str = "airlock-registry";
const CONFIG_VOLUME: &str = "airlock-config";
/// Writable `/run` for the capture container (iptables takes its lock file there).
const CAPTURE_RUN_VOLUME: &str = "airlock-capture-run";
const DISCOVERY_VOLUME: &str = "airlock-discovery";
const VOLUMES: [&str; 7] = [
    TOKEN_VOLUME,
    CA_BUNDLE_VOLUME,
    POLICIES_VOLUME,
    REGISTRY_VOLUME,
    CONFIG_VOLUME,
    CAPTURE_RUN_VOLUME,
    DISCOVERY_VOLUME,
];

/// Cluster-wide settings of the injector (flags of `airlock inject` and `airlock
/// injector`); pods refine some of them with annotations.
#[derive(Debug, Clone)]
pub struct InjectOptions {
    /// The image holding the `airlock` binary, for both injected containers.
    pub image: String,
    /// The mesh's trust domain: a pod's identity is
    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service account>`.
    pub trust_domain: TrustDomain,
    /// `https://host:port` of the CA, as the sidecar dials it.
    pub ca_url: String,
    /// Audience of the projected service-account token (the CA's `kubernetes.audience`).
    pub ca_audience: String,
    /// UID (and GID) of the sidecar; capture exempts its traffic.
    pub proxy_uid: u32,
    /// Namespace of documents that name none (`airlock inject` only; the webhook is told).
    pub namespace: String,
    /// Accept plaintext on app ports unless the pod says `airlock.dev/mode: strict`.
    pub permissive: bool,
    /// Workload default unless the pod says otherwise.
    pub default_policy: DefaultMode,
    /// The controller sidecars subscribe to (`airlock control`); `None`: sidecars read
    /// the registry and policy ConfigMaps only.
    pub controller: Option<Controller>,
}

/// Where sidecars find `airlock control`, and who it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// `https://host:port` of its gRPC listener.
    pub url: String,
    /// Its SPIFFE ID, pinned by every sidecar.
    pub identity: SpiffeId,
}

/// What happened to one pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar was added (or refreshed) for this identity.
    Injected(SpiffeId),
    /// Left alone, for this reason.
    Skipped(&'static str),
}

/// Why a pod template cannot get the sidecar. Each message starts with the field or
/// annotation at fault, relative to the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// The template is no JSON object.
    #[error("the pod template is not an object")]
    NotAnObject,
    /// The template has no `spec` object.
    #[error("spec: the pod template has no spec")]
    NoSpec,
    /// An `airlock.dev/*` annotation, or an app port it selects, is invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A probe of an app container cannot be moved to the sidecar, or back.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A container's `containerPort` is no port number.
    #[error(transparent)]
    ContainerPort(#[from] ContainerPortError),
    /// The probes an earlier injection recorded (`airlock.dev/app-probes`) are unreadable.
    #[error(
        "metadata.annotations.{}: not the JSON object the injector wrote",
        annotation::APP_PROBES
    )]
    RecordedProbes,
    /// The pod's service account (and namespace) make no SPIFFE ID.
    #[error("spec.serviceAccountName: {0}")]
    ServiceAccount(#[source] IdentityError),
    /// The pod's `securityContext.runAsUser` is the sidecar's UID.
    #[error(
        "spec.securityContext.runAsUser is {uid}, the sidecar's UID: the app's traffic would \
         bypass the sidecar"
    )]
    PodRunsAsProxy {
        /// The sidecar's UID ([`InjectOptions::proxy_uid`]).
        uid: u32,
    },
    /// A container of `spec.<list>` has the name of one airlock injects.
    #[error("spec.{list}: the container name {name:?} is reserved for airlock")]
    ReservedContainer {
        /// `initContainers` or `containers`.
        list: &'static str,
        /// `airlock-init` or `airlock-proxy`.
        name: String,
    },
    /// A container's `securityContext.runAsUser` is the sidecar's UID.
    #[error(
        "spec.{list}[{name}].securityContext.runAsUser is {uid}, the sidecar's UID: its \
         traffic would bypass the sidecar"
    )]
    ContainerRunsAsProxy {
        /// `initContainers` or `containers`.
        list: &'static str,
        /// The container's name (`?` when it has none).
        name: String,
        /// The sidecar's UID ([`InjectOptions::proxy_uid`]).
        uid: u32,
    },
    /// A container may change the pod's iptables rules (`power` says how).
    #[error(
        "spec.{list}[{name}].securityContext: {power} lets the container rewrite the capture \
         rules"
    )]
    NetworkAdmin {
        /// `initContainers` or `containers`.
        list: &'static str,
        /// The container's name (`?` when it has none).
        name: String,
        /// `privileged: true`, or `capability NET_ADMIN` (also `SYS_ADMIN`, `ALL`) as the
        /// container adds it.
        power: String,
    },
    /// A container declares a port the sidecar listens on.
    #[error(
        "spec.{list}[{name}].ports: containerPort {port} is one the sidecar listens on ({})",
        list_text(&ports::ALL)
    )]
    SidecarPort {
        /// `initContainers` or `containers`.
        list: &'static str,
        /// The container's name (`?` when it has none).
        name: String,
        /// The declared `containerPort`: 15000, 15001, 15006, 15008 or 15020.
        port: u16,
    },
    /// A volume has the name of one airlock injects.
    #[error("spec.volumes: the volume name {name:?} is reserved for airlock")]
    ReservedVolume {
        /// The volume's name (`airlock-token`, `airlock-config`, ...).
        name: String,
    },
}

/// Why a namespace and service account make no workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The namespace is no DNS label.
    #[error("namespace {namespace:?} is not a Kubernetes namespace name")]
    Namespace {
        /// The namespace as given.
        namespace: String,
    },
    /// The service account is no DNS subdomain.
    #[error("{account:?} is not a Kubernetes service account name")]
    ServiceAccount {
        /// The pod's service account as given (`default` when it names none).
        account: String,
    },
    /// Both are names, but together no valid SPIFFE ID.
    #[error(transparent)]
    SpiffeId(#[from] SpiffeIdError),
}

/// Adds the sidecar to `template` (an object with `metadata` and `spec`), whose pods run
/// in `namespace`. On error the template is left as it was; the message names the field
/// or annotation at fault.
pub fn inject_template(
    template: &mut Value,
    namespace: &str,
    options: &InjectOptions,
) -> Result<Outcome, PodError> {
    let mut candidate = template.clone();
    let outcome = inject_in_place(&mut candidate, namespace, options)?;
    if matches!(outcome, Outcome::Injected(_)) {
        *template = candidate;
    }
    Ok(outcome)
}

fn inject_in_place(
    template: &mut Value,
    namespace: &str,
    options: &InjectOptions,
) -> Result<Outcome, PodError> {
    let template = template.as_object_mut().ok_or(PodError::NotAnObject)?;
    let settings = PodSettings::read(
        template.get("metadata"),
        options.permissive,
        options.default_policy,
    )?;
    if !settings.inject {
        return Ok(Outcome::Skipped("annotated airlock.dev/inject: \"false\""));
    }
    if settings.mirror {
        return Ok(Outcome::Skipped(
            "a static pod's mirror: the kubelet runs its own manifest",
        ));
    }
    let spec = template
        .get("spec")
        .and_then(Value::as_object)
        .ok_or(PodError::NoSpec)?;
    if spec.get("hostNetwork") == Some(&Value::Bool(true)) {
        return Ok(Outcome::Skipped(
            "hostNetwork pods share the node's network namespace",
        ));
    }
    remove_injection(template)?;
    let spec = template
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .expect("checked above");
    check_app_containers(spec, options.proxy_uid)?;

    let service_account = ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|key| spec.get(*key).and_then(Value::as_str))
        .filter(|name| !name.is_empty())
        .unwrap_or("default");
    let identity = service_account_identity(&options.trust_domain, namespace, service_account)
        .map_err(PodError::ServiceAccount)?;
    let inbound_ports = settings.inbound_ports(spec)?;
    let (probes, original_probes) = move_probes(spec, &settings.exclude_inbound_ports)?;

    let config = sidecar_config(&PodSidecar {
        trust_domain: &options.trust_domain,
        ca_url: &options.ca_url,
        permissive: settings.permissive,
        default_policy: settings.default_policy,
        inbound_ports: &inbound_ports,
        egress: &settings.egress,
        probes: &probes,
        controller: options.controller.as_ref(),
    });
    let init_containers = array_at(spec, "initContainers");
    init_containers.insert(0, sidecar_container(options, &config));
    init_containers.insert(0, capture_container(options, &settings));
    let volumes = array_at(spec, "volumes");
    volumes.extend(volumes_for(options));

    let annotations = object_at(object_at(template, "metadata"), "annotations");
    annotations.insert(annotation::IDENTITY.into(), identity.to_string().into());
    if !original_probes.is_empty() {
        let originals = Value::Object(original_probes).to_string();
        annotations.insert(annotation::APP_PROBES.into(), originals.into());
    }
    annotations.insert(annotation::SIDECAR_CONFIG.into(), config.into());
    Ok(Outcome::Injected(identity))
}

/// Removes what an earlier injection added, and restores the app's own probes, so that
/// injecting again starts afresh. A pod without the sidecar keeps everything (its own
/// names that clash are refused later).
fn remove_injection(template: &mut Map<String, Value>) -> Result<(), PodError> {
    let Some(Value::Object(spec)) = template.get_mut("spec") else {
        return Ok(());
    };
    let Some(Value::Array(init)) = spec.get_mut("initContainers") else {
        return Ok(());
    };
    if !init.iter().any(|c| name_of(c) == Some(SIDECAR_CONTAINER)) {
        return Ok(());
    }
    init.retain(|c| !matches!(name_of(c), Some(INIT_CONTAINER | SIDECAR_CONTAINER)));
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        volumes.retain(|v| !name_of(v).is_some_and(|name| VOLUMES.contains(&name)));
    }
    // Removed (not overwritten in place), so that they come back in the same order.
    let mut recorded = None;
    if let Some(Value::Object(annotations)) = template
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
    {
        annotations.shift_remove(annotation::IDENTITY);
        annotations.shift_remove(annotation::SIDECAR_CONFIG);
        recorded = annotations.shift_remove(annotation::APP_PROBES);
    }
    let originals: Map<String, Value> = match recorded {
        None => Map::new(),
        Some(text) => text
            .as_str()
            .and_then(|text| serde_json::from_str(text).ok())
            .ok_or(PodError::RecordedProbes)?,
    };
    let Some(Value::Object(spec)) = template.get_mut("spec") else {
        return Ok(());
    };
    Ok(restore_probes(spec, &originals)?)
}

/// `spiffe://<td>/ns/<namespace>/sa/<account>`, once both are names Kubernetes could
/// have given: a namespace is a DNS label, a service account a DNS subdomain. Anything
/// else (a `/`, say) would make another identity than the CA will issue.
pub fn service_account_identity(
    trust_domain: &TrustDomain,
    namespace: &str,
    account: &str,
) -> Result<SpiffeId, IdentityError> {
    let label = |text: &str, longest: usize, extra: &[char]| {
        (1..=longest).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && text.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || extra.contains(&c)
            })
    };
    if !label(namespace, 63, &[]) {
        return Err(IdentityError::Namespace {
            namespace: namespace.to_owned(),
        });
    }
    if !label(account, 253, &['.']) || account.contains("..") {
        return Err(IdentityError::ServiceAccount {
            account: account.to_owned(),
        });
    }
    Ok(SpiffeId::for_service_account(
        trust_domain,
        namespace,
        account,
    )?)
}

/// Refuses pods whose own containers would slip past capture or clash with ours.
fn check_app_containers(spec: &Map<String, Value>, proxy_uid: u32) -> Result<(), PodError> {
    let runs_as_proxy = |context: Option<&Value>| {
        context
            .and_then(|c| c.get("runAsUser"))
            .and_then(Value::as_u64)
            == Some(u64::from(proxy_uid))
    };
    if runs_as_proxy(spec.get("securityContext")) {
        return Err(PodError::PodRunsAsProxy { uid: proxy_uid });
    }
    for list in ["initContainers", "containers"] {
        for container in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = name_of(container).unwrap_or("?");
            if matches!(name, INIT_CONTAINER | SIDECAR_CONTAINER) {
                return Err(PodError::ReservedContainer {
                    list,
                    name: name.to_owned(),
                });
            }
            let context = container.get("securityContext");
            if runs_as_proxy(context) {
                return Err(PodError::ContainerRunsAsProxy {
                    list,
                    name: name.to_owned(),
                    uid: proxy_uid,
                });
            }
            if let Some(power) = network_admin_power(context) {
                return Err(PodError::NetworkAdmin {
                    list,
                    name: name.to_owned(),
                    power,
                });
            }
            let at = format!("spec.{list}[{name}]");
            for ContainerPort { number: port, .. } in declared_ports(container.get("ports"), &at)? {
                if ports::ALL.contains(&port) {
                    return Err(PodError::SidecarPort {
                        list,
                        name: name.to_owned(),
                        port,
                    });
                }
            }
        }
    }
    if let Some(volume) = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(name_of)
        .find(|name| VOLUMES.contains(name))
    {
        return Err(PodError::ReservedVolume {
            name: volume.to_owned(),
        });
    }
    Ok(())
}

/// What in a container's security context would let it change the pod's iptables rules.
fn network_admin_power(context: Option<&Value>) -> Option<String> {
    let context = context?;
    if context.get("privileged") == Some(&Value::Bool(true)) {
        return Some("privileged: true".into());
    }
    context
        .pointer("/capabilities/add")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|cap| {
            let cap = cap.to_ascii_uppercase();
            let cap = cap.strip_prefix("CAP_").unwrap_or(&cap);
            matches!(cap, "NET_ADMIN" | "SYS_ADMIN" | "ALL")
        })
        .map(|cap| format!("capability {cap}"))
}

/// The member `key` of `object` as an array, created (or replaced, when it is not an
/// array) as needed.
fn array_at<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = object.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().expect("just made an array")
}

fn object_at<'a>(object: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = object.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().expect("just made an object")
}

/// Projected token lifetime: the kubelet refreshes it at 80 %; the sidecar re-reads the
/// file before every CA call.
const TOKEN_SECONDS: u64 = 3600;

/// `airlock init-capture` with the pod's exclusions. Root inside the pod's network
/// namespace with NET_ADMIN and NET_RAW only: not privileged, nothing else.
fn capture_container(options: &InjectOptions, settings: &PodSettings) -> Value {
    let mut args = vec![
        "init-capture".to_owned(),
        "--proxy-uid".to_owned(),
        options.proxy_uid.to_string(),
    ];
    let mut flag = |name: &str, values: String| {
        if !values.is_empty() {
            args.push(name.to_owned());
            args.push(values);
        }
    };
    flag(
        "--inbound-exclude-ports",
        list_text(&settings.exclude_inbound_ports),
    );
    flag(
        "--outbound-exclude-ports",
        list_text(&settings.exclude_outbound_ports),
    );
    flag(
        "--outbound-exclude-cidrs",
        list_text(&settings.exclude_outbound_cidrs),
    );
    json!({
        "name": INIT_CONTAINER,
        "image": options.image,
        "args": args,
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": CAPTURE_RUN_VOLUME, "mountPath": "/run"}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
    })
}

/// The sidecar, as a native sidecar: an init container that keeps running. The kubelet
/// starts the app containers once its startup probe (`/ready`: a valid SVID and policy)
/// passes, and stops it after them.
fn sidecar_container(options: &InjectOptions, config: &str) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ports::HEALTH},
            "periodSeconds": period,
            "failureThreshold": failures,
            "timeoutSeconds": 1,
        })
    };
    let mount =
        |volume: &str, path: &str| json!({"name": volume, "mountPath": path, "readOnly": true});
    let mut container = json!({
        "name": SIDECAR_CONTAINER,
        "image": options.image,
        "args": [
            "proxy",
            "--config",
            format!("{CONFIG_DIR}/config.yaml"),
            "--config-sha256",
            airlock_identity::hex(&Sha256::digest(config.as_bytes())),
        ],
        "restartPolicy": "Always",
        "ports": [
            {"name": "airlock-mesh", "containerPort": ports::MESH, "protocol": "TCP"},
            {"name": "airlock-health", "containerPort": ports::HEALTH, "protocol": "TCP"},
        ],
        "securityContext": {
            "runAsUser": options.proxy_uid,
            "runAsGroup": options.proxy_uid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"cpu": "1", "memory": "128Mi"},
        },
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "volumeMounts": [
            mount(CONFIG_VOLUME, CONFIG_DIR),
            mount(TOKEN_VOLUME, TOKEN_DIR),
            mount(CA_BUNDLE_VOLUME, CA_BUNDLE_DIR),
            mount(POLICIES_VOLUME, POLICIES_DIR),
            mount(REGISTRY_VOLUME, REGISTRY_DIR),
        ],
    });
    if options.controller.is_some() {
        container["volumeMounts"]
            .as_array_mut()
            .expect("volumeMounts is a list")
            .push(json!({"name": DISCOVERY_VOLUME, "mountPath": DISCOVERY_DIR}));
    }
    container
}

fn volumes_for(options: &InjectOptions) -> Vec<Value> {
    let read_only_files = 0o444;
    let mut volumes = vec![
        json!({
            "name": TOKEN_VOLUME,
            "projected": {
                "defaultMode": read_only_files,
                "sources": [{"serviceAccountToken": {
                    "audience": options.ca_audience,
                    "expirationSeconds": TOKEN_SECONDS,
                    "path": "token",
                }}],
            },
        }),
        json!({"name": CA_BUNDLE_VOLUME, "configMap": {"name": config_map::CA_BUNDLE, "defaultMode": read_only_files}}),
        // With a controller, policies come from it; the ConfigMap may add local ones.
        json!({"name": POLICIES_VOLUME, "configMap": {"name": config_map::POLICIES, "defaultMode": read_only_files, "optional": options.controller.is_some()}}),
        json!({"name": REGISTRY_VOLUME, "configMap": {"name": config_map::REGISTRY, "defaultMode": read_only_files, "optional": true}}),
        json!({
            "name": CONFIG_VOLUME,
            "downwardAPI": {
                "defaultMode": read_only_files,
                "items": [{
                    "path": "config.yaml",
                    "fieldRef": {"fieldPath": format!("metadata.annotations['{}']", annotation::SIDECAR_CONFIG)},
                }],
            },
        }),
        json!({"name": CAPTURE_RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}),
    ];
    if options.controller.is_some() {
        // The mesh view of a large cluster is a few MB.
        volumes.push(json!({"name": DISCOVERY_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}));
    }
    volumes
}
