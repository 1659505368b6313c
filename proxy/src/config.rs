//! The sidecar's one configuration file (YAML). Every setting has a safe default; unknown
//! fields and bad values are one error naming file:line:column, and nothing starts.
//!
//! ```yaml
//! identity:
//!   trust_domain: demo.airlock
//!   ca_url: https://127.0.0.1:15012
//!   ca_bundle: ca/bundle.pem          # roots the CA's certificate must chain to
//!   token_file: token                 # join token or service-account JWT
//! inbound:
//!   listen: 127.0.0.2:15008           # mesh transport (the pod IP)
//!   ports:
//!   - {port: 8080, protocol: tcp, app: 127.0.0.1:8080}
//! outbound:
//!   upstreams:
//!   - {listen: 127.0.0.1:9001, service: payments, port: 8080}
//! registry:
//!   payments:
//!     identity: spiffe://demo.airlock/ns/pay/sa/payments
//!     endpoints: [127.0.0.3:15008]
//! policy:
//!   paths: [policies/]
//!   default: deny
//! ```
//!
//! Relative paths are resolved against the config file's directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_identity::{SpiffeId, TrustDomain};
use airlock_policy::DefaultMode;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use sha2::{Digest, Sha256};

use crate::access_log::{AccessLogConfig, SinkKind};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub identity: IdentityConfig,
    #[serde(default)]
    pub inbound: InboundConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Service name → where its sidecars are and who they must be.
    #[serde(default)]
    pub registry: Services,
    /// More registry entries, in a YAML file of the same shape as `registry` (in
    /// Kubernetes: a ConfigMap shared by the namespace). Read at start and again when it
    /// changes (`policy.reload_interval`); a missing file adds nothing (logged), a name in
    /// both places is an error, and an invalid change keeps the previous registry.
    #[serde(default)]
    pub registry_file: Option<PathBuf>,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub access_log: AccessLogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(with = "text")]
    pub trust_domain: TrustDomain,
    /// `https://host:port` of `airlock ca serve`.
    pub ca_url: String,
    /// PEM roots that the CA (and every peer) must chain to, until the CA serves a newer bundle.
    pub ca_bundle: PathBuf,
    /// File holding the join token or Kubernetes service-account JWT; re-read at each use
    /// (the kubelet rotates projected tokens). Never logged, never shown by the admin API.
    pub token_file: PathBuf,
    /// SVID lifetime to ask for (default: the CA's default).
    #[serde(default, with = "optional_duration")]
    pub svid_ttl: Option<Duration>,
    /// How often to re-fetch the trust bundle.
    #[serde(default = "defaults::bundle_refresh", with = "duration")]
    pub bundle_refresh: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Mesh transport listener (mTLS, HTTP/2 CONNECT).
    #[serde(default = "defaults::inbound_listen")]
    pub listen: SocketAddr,
    /// The ports the workload serves; CONNECTs to any other port are refused.
    #[serde(default)]
    pub ports: Vec<InboundPort>,
    /// Plaintext capture listener for permissive ports (iptables REDIRECT target,
    /// SO_ORIGINAL_DST); off when absent.
    #[serde(default)]
    pub permissive_listen: Option<SocketAddr>,
    /// How long an `auto` port waits for the client's first bytes before treating the
    /// stream as opaque TCP (server-first protocols send nothing).
    #[serde(default = "defaults::detect_timeout", with = "duration")]
    pub detect_timeout: Duration,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            listen: defaults::inbound_listen(),
            ports: Vec::new(),
            permissive_listen: None,
            detect_timeout: defaults::detect_timeout(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// Authorize once per connection, then copy bytes.
    Tcp,
    /// HTTP/1.1 or HTTP/2 (gRPC included): authorize every request.
    Http,
    /// Detect HTTP from the client's first bytes; anything else is TCP.
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPort {
    pub port: u16,
    #[serde(default = "defaults::protocol")]
    pub protocol: PortProtocol,
    /// Where the app listens (default `127.0.0.1:<port>`).
    #[serde(default)]
    pub app: Option<SocketAddr>,
    /// Also accept plaintext for this port (migration), evaluated as an unauthenticated
    /// peer. Off by default.
    #[serde(default)]
    pub permissive: bool,
    /// Limits on HTTP requests (ports with protocol `http` or `auto`).
    #[serde(default)]
    pub http: HttpLimits,
}

/// Limits on the HTTP requests of one port; each refusal answers its own status and is
/// counted in `airlock_http_limit_rejections`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Bytes of the request line and headers together (431).
    pub max_header_bytes: usize,
    /// Number of request headers (431).
    pub max_headers: usize,
    /// Bytes of the request target (414).
    pub max_uri_bytes: usize,
    /// Bytes of a request body; unlimited when absent (413).
    pub max_body_bytes: Option<u64>,
    /// An HTTP/1 client must send a whole request head within this time, or the
    /// connection is closed (slowloris).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// The whole request body must arrive within this time (408).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// The app must answer with response headers within this time (504).
    #[serde(with = "duration")]
    pub response_timeout: Duration,
    /// Requests in flight on this port at once, over all connections (503).
    pub max_concurrent_requests: usize,
    /// Keep `%2F`/`%5C` in paths (as opaque escapes) instead of answering 400.
    pub allow_encoded_slashes: bool,
    /// What happens to request header names that hold `_`.
    pub headers_with_underscores: UnderscoreHeaders,
    /// Honour `X-HTTP-Method-Override`, `X-HTTP-Method` and `X-Method-Override`: policy
    /// then decides on the method they name. Off: a request whose override names another
    /// method than its own is refused (400).
    pub allow_method_override: bool,
}

/// The rule for header names with `_` (`x_forwarded_client_cert`), which CGI-style
/// servers read as the dashed name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnderscoreHeaders {
    /// Remove them before policy and the app see the request (nginx's default).
    #[default]
    Drop,
    /// Answer 400.
    Reject,
    /// Pass them on; a spelling of a header only the sidecar sets is still refused.
    Allow,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: None,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            response_timeout: Duration::from_secs(60),
            max_concurrent_requests: 1024,
            allow_encoded_slashes: false,
            headers_with_underscores: UnderscoreHeaders::Drop,
            allow_method_override: false,
        }
    }
}

impl InboundPort {
    pub fn app_addr(&self) -> SocketAddr {
        self.app
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Explicit listeners: a local port that leads to one service.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Transparent capture listener (iptables REDIRECT + SO_ORIGINAL_DST); off when absent.
    #[serde(default)]
    pub transparent: Option<SocketAddr>,
    /// Destinations outside the mesh that captured connections may reach, in plain TCP
    /// as the app sent it. None by default: egress is denied.
    #[serde(default)]
    pub egress: Vec<EgressRule>,
}

/// One allowed egress destination: a CIDR and, optionally, ports (none = any port).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(with = "text")]
    pub cidr: ipnet::IpNet,
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl OutboundConfig {
    /// Whether an egress rule lets a captured connection reach `destination`.
    pub fn egress_allows(&self, destination: SocketAddr) -> bool {
        let ip = destination.ip().to_canonical();
        self.egress.iter().any(|rule| {
            rule.cidr.contains(&ip)
                && (rule.ports.is_empty() || rule.ports.contains(&destination.port()))
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub listen: SocketAddr,
    pub service: String,
    /// The port on the destination workload.
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The SPIFFE ID every endpoint must present (pinned).
    pub identity: SpiffeId,
    /// Mesh transport addresses of the service's sidecars.
    pub endpoints: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policy files or directories; none = no policy (the default decides).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    #[serde(default, with = "text")]
    pub default: DefaultMode,
    #[serde(default = "defaults::reload_interval", with = "duration")]
    pub reload_interval: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            default: DefaultMode::Deny,
            reload_interval: defaults::reload_interval(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin API; must be a loopback address.
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// `/live`, `/ready`, `/metrics`, `/app-health/<name>`.
    #[serde(default = "defaults::health_listen")]
    pub health_listen: SocketAddr,
    /// Probes of the app that the kubelet sends to the health listener instead of the
    /// app's own, captured, port (`GET /app-health/<name>`). The injector writes them.
    #[serde(default)]
    pub app_probes: BTreeMap<String, AppProbe>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
            health_listen: defaults::health_listen(),
            app_probes: BTreeMap::new(),
        }
    }
}

/// One probe of the app, run by the sidecar from inside the pod over loopback.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppProbe {
    /// The app's port on 127.0.0.1.
    pub port: u16,
    /// `GET` this path: any 2xx or 3xx answer passes. Absent: the port must accept a
    /// TCP connection.
    #[serde(default)]
    pub path: Option<String>,
    /// Request headers for the `GET`.
    #[serde(default)]
    pub headers: Vec<ProbeHeader>,
    /// The probe fails when the app has not answered within this time.
    #[serde(default = "defaults::probe_timeout", with = "duration")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections per listener.
    pub max_connections: usize,
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// A tunnel with no bytes in either direction for this long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// How long SIGTERM waits for live tunnels.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Mesh connections per destination endpoint.
    pub pool_connections_per_endpoint: usize,
    /// Concurrent CONNECT streams per mesh connection (outbound pool).
    pub pool_streams_per_connection: usize,
    /// Concurrent CONNECT streams a peer may open on one inbound connection.
    pub max_streams_per_connection: usize,
    /// Threads that run the proxy (default: one per core). Lower it to cap the
    /// sidecar's CPU share; benchmarks set it equal to the other proxies' worker count.
    pub worker_threads: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            drain_timeout: Duration::from_secs(20),
            pool_connections_per_endpoint: 4,
            pool_streams_per_connection: 100,
            max_streams_per_connection: 256,
            worker_threads: None,
        }
    }
}

mod defaults {
    use super::*;
    pub fn bundle_refresh() -> Duration {
        Duration::from_secs(300)
    }
    pub fn inbound_listen() -> SocketAddr {
        "0.0.0.0:15008".parse().expect("literal")
    }
    pub fn protocol() -> PortProtocol {
        PortProtocol::Tcp
    }
    pub fn reload_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub fn detect_timeout() -> Duration {
        Duration::from_millis(200)
    }
    pub fn admin_listen() -> SocketAddr {
        "127.0.0.1:15000".parse().expect("literal")
    }
    pub fn health_listen() -> SocketAddr {
        "0.0.0.0:15020".parse().expect("literal")
    }
    pub fn probe_timeout() -> Duration {
        Duration::from_secs(1)
    }
}

impl Config {
    /// Reads, validates and resolves relative paths; errors name the file and position.
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::load_pinned(path, None)
    }

    /// [`Config::load`], checking first that the file's SHA-256 is `sha256` (hex) when one
    /// is given. The injector pins the configuration it writes into the pod this way, so
    /// that an edit after admission stops the sidecar instead of reconfiguring it.
    pub fn load_pinned(path: &Path, sha256: Option<&str>) -> Result<Self, String> {
        let text = read_text(path)?;
        if let Some(pinned) = sha256 {
            if pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "--config-sha256 {pinned:?} is not a SHA-256 (64 hex digits)"
                ));
            }
            let actual = airlock_identity::hex(&Sha256::digest(text.as_bytes()));
            if !actual.eq_ignore_ascii_case(pinned.trim()) {
                return Err(format!(
                    "{}: its SHA-256 is {actual}, not the pinned {pinned} (--config-sha256): \
                     the configuration changed after it was pinned",
                    path.display()
                ));
            }
        }
        let mut config: Self = parse_yaml(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        let in_file = |e: String| format!("{}: {e}", path.display());
        let services = config.load_registry().map_err(in_file)?;
        config.validate(&services).map_err(in_file)?;
        Ok(config)
    }

    /// The whole registry: the config file's `registry` and the services of
    /// `registry_file`, read now.
    pub fn load_registry(&self) -> Result<Services, String> {
        let text = match self.registry_file.as_deref() {
            Some(file) if file.exists() => Some(read_text(file)?),
            _ => None,
        };
        self.registry_with(text.as_deref())
    }

    /// The whole registry, with `file_text` as the contents of `registry_file` (`None`:
    /// the file is missing). Every service must belong to this trust domain.
    pub fn registry_with(&self, file_text: Option<&str>) -> Result<Services, String> {
        let mut services = self.registry.clone();
        if let (Some(file), Some(text)) = (self.registry_file.as_deref(), file_text) {
            let from_file: Services = parse_yaml(text, file)?;
            for (name, service) in from_file {
                if services.contains_key(&name) {
                    return Err(format!(
                        "{}: service {name:?} is also in the config file's registry",
                        file.display()
                    ));
                }
                services.insert(name, service);
            }
        }
        for (name, service) in &services {
            if service.endpoints.is_empty() {
                return Err(format!("registry.{name}: no endpoints"));
            }
            if service.identity.trust_domain() != self.identity.trust_domain {
                return Err(format!(
                    "registry.{name}.identity {} is outside trust domain {}",
                    service.identity, self.identity.trust_domain
                ));
            }
        }
        Ok(services)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.identity.ca_bundle);
        resolve(&mut self.identity.token_file);
        if let Some(file) = &mut self.access_log.file {
            resolve(&mut file.path);
        }
        self.policy.paths.iter_mut().for_each(resolve);
        if let Some(file) = &mut self.registry_file {
            resolve(file);
        }
    }

    /// Checks the settings, with `services` the whole registry.
    fn validate(&self, services: &Services) -> Result<(), String> {
        if !self.admin.listen.ip().is_loopback() {
            return Err(format!(
                "admin.listen {} must be a loopback address",
                self.admin.listen
            ));
        }
        for (name, probe) in &self.admin.app_probes {
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !name_ok {
                return Err(format!(
                    "admin.app_probes: {name:?} may hold only letters, digits and - _ . /"
                ));
            }
            let path_ok = probe.path.as_deref().is_none_or(|path| {
                path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok()
            });
            let headers_ok = probe.headers.iter().all(|h| {
                http::HeaderName::try_from(h.name.as_str()).is_ok()
                    && http::HeaderValue::try_from(h.value.as_str()).is_ok()
            });
            if !path_ok || !headers_ok || probe.timeout.is_zero() {
                return Err(format!(
                    "admin.app_probes.{name}: the path must start with /, the headers must \
                     be valid HTTP and the timeout above zero"
                ));
            }
        }
        // Outbound listeners act with this workload's identity: only the workload itself
        // (loopback) may reach them.
        for (what, addr) in self
            .outbound
            .upstreams
            .iter()
            .map(|u| ("outbound.upstreams listen", u.listen))
            .chain(
                self.outbound
                    .transparent
                    .map(|a| ("outbound.transparent", a)),
            )
        {
            if !addr.ip().is_loopback() {
                return Err(format!("{what} {addr} must be a loopback address"));
            }
        }
        let any_permissive = self.inbound.ports.iter().any(|p| p.permissive);
        match (any_permissive, self.inbound.permissive_listen) {
            (true, None) => {
                return Err(
                    "inbound.ports: a port is permissive but inbound.permissive_listen is not set"
                        .into(),
                );
            }
            (false, Some(addr)) => {
                return Err(format!(
                    "inbound.permissive_listen {addr} is set but no port is permissive"
                ));
            }
            _ => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for port in &self.inbound.ports {
            if port.port == 0 {
                return Err("inbound.ports: port 0 is not a port".into());
            }
            if !seen.insert(port.port) {
                return Err(format!("inbound.ports: port {} is listed twice", port.port));
            }
            let http = &port.http;
            // hyper cannot read a request head in less than 8 KiB of buffer.
            if http.max_header_bytes < 8192 {
                return Err(format!(
                    "inbound.ports[{}].http.max_header_bytes must be at least 8192",
                    port.port
                ));
            }
            if http.max_headers == 0 || http.max_uri_bytes == 0 || http.max_concurrent_requests == 0
            {
                return Err(format!(
                    "inbound.ports[{}].http: max_headers, max_uri_bytes and max_concurrent_requests must be at least 1",
                    port.port
                ));
            }
        }
        for upstream in &self.outbound.upstreams {
            let service = services.get(&upstream.service).ok_or_else(|| {
                format!(
                    "outbound.upstreams: service {:?} (listen {}) is not in the registry",
                    upstream.service, upstream.listen
                )
            })?;
            if service.endpoints.is_empty() {
                return Err(format!("registry.{}: no endpoints", upstream.service));
            }
        }
        if self.access_log.sink == SinkKind::File && self.access_log.file.is_none() {
            return Err("access_log.sink is file but access_log.file is not set".into());
        }
        let limits = &self.limits;
        if limits.max_connections == 0
            || limits.pool_connections_per_endpoint == 0
            || limits.pool_streams_per_connection == 0
            || limits.max_streams_per_connection == 0
            || limits.worker_threads == Some(0)
        {
            return Err("limits: connection and stream limits must be at least 1".into());
        }
        Ok(())
    }
}

/// Service name → where its sidecars are and who they must be.
pub type Services = BTreeMap<String, Service>;

/// The service whose endpoints include `addr` (for transparent capture).
pub fn service_at(services: &Services, addr: SocketAddr) -> Option<(&str, &Service)> {
    services
        .iter()
        .find(|(_, s)| s.endpoints.iter().any(|e| e.ip() == addr.ip()))
        .map(|(name, s)| (name.as_str(), s))
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The YAML `text` of the file at `path` read into `T`; errors read
/// `file:line:column: message`.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, String> {
    serde_norway::from_str(text).map_err(|e| {
        let message = e.to_string();
        match e.location() {
            Some(l) => format!(
                "{}:{}:{}: {}",
                path.display(),
                l.line(),
                l.column(),
                message
                    .rsplit_once(" at line ")
                    .map_or(message.as_str(), |(m, _)| m)
            ),
            None => format!("{}: {message}", path.display()),
        }
    })
}

/// Durations as human text (`90s`, `5m`, `1h`).
pub(crate) mod duration {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

mod optional_duration {
    use super::*;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }
}

/// Types with a text form (`FromStr` + `Display`).
mod text {
    use super::*;
    pub fn serialize<T: std::fmt::Display, S: Serializer>(
        value: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|e| de::Error::custom(format!("{text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_rules_allow_only_their_cidrs_and_ports() {
        let outbound: OutboundConfig = serde_norway::from_str(
            "egress:\n- {cidr: 203.0.113.0/24, ports: [443]}\n- {cidr: 198.51.100.7/32}\n",
        )
        .unwrap();
        let cases = [
            ("203.0.113.9:443", true),
            ("203.0.113.9:80", false),
            ("203.0.114.1:443", false),
            ("198.51.100.7:25", true),
            ("198.51.100.8:25", false),
            ("[::ffff:203.0.113.9]:443", true),
        ];
        for (destination, allowed) in cases {
            assert_eq!(
                outbound.egress_allows(destination.parse().unwrap()),
                allowed,
                "{destination}"
            );
        }
        assert!(!OutboundConfig::default().egress_allows("1.1.1.1:443".parse().unwrap()));
    }
}
