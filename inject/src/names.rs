//! The names that injection, the pods it writes and the sidecar agree on: annotations, the
//! namespace ConfigMaps and the paths of the mounted files (the well-known ports are `airlock_config::ports`).

/// Pod annotations that users set to steer injection.
pub mod annotation {
    /// `"false"` leaves the pod alone (`"true"` is the same as absent).
    pub const INJECT: &str = "airlock.dev/inject";
    /// `strict` (mesh only, the default) or `permissive` (also accept plaintext on the
    /// app ports, evaluated as an unauthenticated peer: for migrations).
    pub const MODE: &str = "airlock.dev/mode";
    /// The workload's default when no policy decides: deny, allow-mesh, allow-all, audit.
    pub const DEFAULT_POLICY: &str = "airlock.dev/default-policy";
    /// `8080,9090/tcp,50051/http`: the app ports behind the sidecar and their protocol
    /// (default `auto`). Absent: every TCP `containerPort` of the app containers, with
    /// the protocol its name gives ([`crate::protocol_of_port`]).
    pub const INBOUND_PORTS: &str = "airlock.dev/inbound-ports";
    /// Inbound ports that bypass the sidecar entirely (plaintext straight to the app).
    pub const EXCLUDE_INBOUND_PORTS: &str = "airlock.dev/exclude-inbound-ports";
    /// Outbound destination ports that bypass the sidecar.
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "airlock.dev/exclude-outbound-ports";
    /// Outbound destination CIDRs that bypass the sidecar.
    pub const EXCLUDE_OUTBOUND_CIDRS: &str = "airlock.dev/exclude-outbound-cidrs";
    /// `203.0.113.0/24:443, 198.51.100.7/32`: destinations outside the mesh that the
    /// sidecar relays in plain TCP (any port when none is given); the rest is refused.
    pub const EGRESS: &str = "airlock.dev/egress";
    /// Written by the injector: the handlers (`httpGet`/`tcpSocket`) of the app's own
    /// probes that now go through the sidecar; put back before re-injecting.
    pub const APP_PROBES: &str = "airlock.dev/app-probes";
    /// Written by the injector: the SPIFFE ID the pod's service account maps to.
    pub const IDENTITY: &str = "airlock.dev/identity";
    /// Written by the injector: the sidecar's configuration file. The sidecar's arguments
    /// pin its SHA-256, so an edit after admission stops the sidecar instead of
    /// reconfiguring it.
    pub const SIDECAR_CONFIG: &str = "airlock.dev/sidecar-config";
    /// Set by the kubelet on the API's copy of a static pod; the kubelet runs its own
    /// manifest, so injecting the copy would only mislead.
    pub const MIRROR: &str = "kubernetes.io/config.mirror";
}

/// The names of the ConfigMaps every meshed namespace holds (docs/kubernetes.md).
pub mod config_map {
    /// `bundle.pem`: the trust bundle (`airlock ca init` writes it).
    pub const CA_BUNDLE: &str = "airlock-ca-bundle";
    /// Policy YAML files; the sidecar reloads them when the kubelet updates the mount.
    pub const POLICIES: &str = "airlock-policies";
    /// `registry.yaml`: services, their identities and endpoints (optional).
    pub const REGISTRY: &str = "airlock-registry";
}

/// Where the injected containers find their files.
pub(crate) mod dir {
    /// The sidecar's configuration (`config.yaml`, from the pod annotation).
    pub(crate) const CONFIG_DIR: &str = "/etc/airlock/config";
    /// The trust bundle ConfigMap.
    pub(crate) const CA_BUNDLE_DIR: &str = "/etc/airlock/ca";
    /// The policies ConfigMap.
    pub(crate) const POLICIES_DIR: &str = "/etc/airlock/policies";
    /// The registry ConfigMap.
    pub(crate) const REGISTRY_DIR: &str = "/etc/airlock/registry";
    /// The projected service-account token.
    pub(crate) const TOKEN_DIR: &str = "/var/run/secrets/airlock";
    /// The sidecar's discovery cache (an emptyDir: it outlives a sidecar restart, not
    /// the pod).
    pub(crate) const DISCOVERY_DIR: &str = "/var/run/airlock/discovery";
}
