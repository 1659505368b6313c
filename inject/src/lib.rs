//! Sidecar injection for Kubernetes.
//!
//! One mutation, two ways in: `airlock inject -f` rewrites YAML manifests
//! ([`inject_manifest`]), and `airlock injector` is a mutating admission webhook that
//! answers AdmissionReviews with the same mutation as a JSON Patch ([`review`],
//! [`webhook::serve`]). The mutation of a pod template is in [`inject_template`]; which
//! annotations steer it is in [`annotation`].

mod container_ports;
mod fields;
mod manifest;
mod names;
mod patch;
mod pod;
mod pod_settings;
mod port_protocol;
mod probes;
mod registry;
mod review;
mod sidecar_config;
pub mod webhook;
mod workload;
pub mod yaml;

pub use container_ports::ContainerPortError;
pub use manifest::{Injected, ManifestError, inject_manifest};
pub use names::{annotation, config_map};
pub use patch::json_patch;
pub use pod::{
    Controller, IdentityError, InjectOptions, Outcome, PodError, inject_template,
    service_account_identity,
};
pub use pod_settings::SettingsError;
pub use port_protocol::protocol_of_port;
pub use probes::ProbeError;
pub use registry::{Registry, RegistryError, registry};
pub use review::{MAX_JSON_VALUES, review, review_policy};
pub use workload::{Report, WorkloadError, inject_object, template_pointer};
