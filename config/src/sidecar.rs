//! The sections of the sidecar's configuration file and their defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use airlock_identity::{SpiffeId, TrustDomain};
use airlock_policy::DefaultMode;
use serde::{Deserialize, Serialize};

use crate::access_log::AccessLogConfig;
use crate::ports;
use crate::routes::ServicePort;

/// The whole file: `airlock proxy --config FILE`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this workload is and where it gets its SVID; the only required section.
    pub identity: IdentityConfig,
    /// What the sidecar accepts from the mesh and hands to the app.
    #[serde(default)]
    pub inbound: InboundConfig,
    /// How the app reaches other services through the mesh; no listeners by default.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Service name → where its sidecars are and who they must be.
    #[serde(default)]
    pub registry: Services,
    /// More registry entries, in a YAML file of the same shape as `registry` (in
    /// Kubernetes: a ConfigMap shared by the namespace). Read at start and again when it
    /// changes (`policy.reload_interval`); a missing file adds nothing (logged), a name in
    /// both places is an error, and an invalid change keeps the previous registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_file: Option<PathBuf>,
    /// Follow `airlock control` for services, endpoints and the policies that select this
    /// workload, on top of the static `registry`, `registry_file` and `policy.paths`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryConfig>,
    /// The authorization policies and the fallback when none decides (default: deny).
    #[serde(default)]
    pub policy: PolicyConfig,
    /// The loopback admin API, the health listener and the app's probes.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Connection counts, stream counts and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// Where access log lines go and what is masked in them.
    #[serde(default)]
    pub access_log: AccessLogConfig,
}

impl Config {
    /// A sidecar with `identity` and every other setting at its default: no ports, no
    /// upstreams, no policy (so the default, deny, decides).
    pub fn new(identity: IdentityConfig) -> Self {
        Self {
            identity,
            inbound: InboundConfig::default(),
            outbound: OutboundConfig::default(),
            registry: Services::new(),
            registry_file: None,
            discovery: None,
            policy: PolicyConfig::default(),
            admin: AdminConfig::default(),
            limits: Limits::default(),
            access_log: AccessLogConfig::default(),
        }
    }
}

/// The `discovery` section: where the controller is and who it must be.
///
/// ```yaml
/// discovery:
///   url: https://airlock-control.airlock-system.svc:15010
///   identity: spiffe://cluster.local/ns/airlock-system/sa/airlock-control
///   cache_file: /var/run/airlock/discovery.pb   # an emptyDir in Kubernetes
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The controller's gRPC address, `https://HOST:PORT` (mTLS with this workload's SVID).
    pub url: String,
    /// The SPIFFE ID the controller must present (pinned, as a registry identity is).
    pub identity: SpiffeId,
    /// Where the last applied mesh view is kept, so that a restart while the controller is
    /// away comes back with the mesh it knew. None: not kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_file: Option<PathBuf>,
}

impl DiscoveryConfig {
    /// The host and port of `url`; errors name the field.
    pub fn address(&self) -> Result<(String, u16), String> {
        let bad = |why: &str| format!("discovery.url {:?}: {why}", self.url);
        let rest = self
            .url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| bad("must name a port (https://HOST:PORT)"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a port"))?;
        if host.is_empty() || host.contains(['/', '?', '#', '@']) {
            return Err(bad("must be https://HOST:PORT with nothing after the port"));
        }
        Ok((host.to_owned(), port))
    }
}

/// The `identity` section: the workload's trust domain and how it obtains and renews its
/// SVID from the CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// This workload's trust domain; its SVID, every peer and every registry identity must
    /// belong to it.
    pub trust_domain: TrustDomain,
    /// `https://host:port` of `airlock ca serve`.
    pub ca_url: String,
    /// PEM roots that the CA (and every peer) must chain to, until the CA serves a newer bundle.
    pub ca_bundle: PathBuf,
    /// File holding the join token or Kubernetes service-account JWT; re-read at each use
    /// (the kubelet rotates projected tokens). Never logged, never shown by the admin API.
    pub token_file: PathBuf,
    /// SVID lifetime to ask for (default: the CA's default).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub svid_ttl: Option<Duration>,
    /// How often to re-fetch the trust bundle (and deny list) from the CA; default `5m`.
    #[serde(default = "defaults::bundle_refresh", with = "humantime_serde")]
    pub bundle_refresh: Duration,
}

impl IdentityConfig {
    /// The required settings; the SVID lifetime and bundle refresh keep their defaults.
    pub fn new(
        trust_domain: TrustDomain,
        ca_url: impl Into<String>,
        ca_bundle: impl Into<PathBuf>,
        token_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            trust_domain,
            ca_url: ca_url.into(),
            ca_bundle: ca_bundle.into(),
            token_file: token_file.into(),
            svid_ttl: None,
            bundle_refresh: defaults::bundle_refresh(),
        }
    }
}

/// The `inbound` section: the mesh listener and the workload's ports behind it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Mesh transport listener (mTLS, HTTP/2 CONNECT); default `0.0.0.0:15008`.
    #[serde(default = "defaults::inbound_listen")]
    pub listen: SocketAddr,
    /// The ports the workload serves; CONNECTs to any other port are refused.
    #[serde(default)]
    pub ports: Vec<InboundPort>,
    /// Plaintext capture listener for permissive ports (iptables REDIRECT target,
    /// SO_ORIGINAL_DST); off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissive_listen: Option<SocketAddr>,
    /// How long an `auto` port waits for the client's first bytes before treating the
    /// stream as opaque TCP (server-first protocols send nothing); default `200ms`.
    #[serde(default = "defaults::detect_timeout", with = "humantime_serde")]
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

/// The `protocol` of an inbound port: how much of the traffic the sidecar understands,
/// and so how finely policy can decide.
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

/// One entry of `inbound.ports`: a port the workload serves through the mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPort {
    /// The port peers name in their CONNECT; non-zero and listed once.
    pub port: u16,
    /// How the traffic is handled; default `tcp`.
    #[serde(default = "defaults::protocol")]
    pub protocol: PortProtocol,
    /// Where the app listens (default `127.0.0.1:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// The whole request body must arrive within this time (408).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The app must answer with response headers within this time (504).
    #[serde(with = "humantime_serde")]
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
    /// `port` served with `protocol` by an app on `127.0.0.1:<port>`, mTLS only, with
    /// the default HTTP limits.
    pub fn new(port: u16, protocol: PortProtocol) -> Self {
        Self {
            port,
            protocol,
            app: None,
            permissive: false,
            http: HttpLimits::default(),
        }
    }

    /// Where the app listens: `app`, or `127.0.0.1:<port>` when it is not set.
    pub fn app_addr(&self) -> SocketAddr {
        self.app
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.port)))
    }
}

/// The `outbound` section: the ways the app's connections enter the mesh, and where
/// else they may go.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Explicit listeners: a local port that leads to one service.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// Transparent capture listener (iptables REDIRECT + SO_ORIGINAL_DST); off when absent.
    /// Must be a loopback address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<SocketAddr>,
    /// Destinations outside the mesh that captured connections may reach, in plain TCP
    /// as the app sent it. None by default: egress is denied.
    #[serde(default)]
    pub egress: Vec<EgressRule>,
    /// Limits on the app's own HTTP requests to routed service ports (`protocol: http`).
    #[serde(default)]
    pub http: RoutedLimits,
}

/// Limits on the HTTP the app sends to routed service ports: the caller's side of the
/// mesh is a listener too, and a runaway app must not take the sidecar down with it.
/// Each refusal is counted in `airlock_http_limit_rejections`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutedLimits {
    /// Bytes of the request line and headers together (431).
    pub max_header_bytes: usize,
    /// Number of request headers (431).
    pub max_headers: usize,
    /// An HTTP/1 request head must arrive within this time, or the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Routed requests in flight at once, over every routed port and connection (503,
    /// or gRPC `UNAVAILABLE`).
    pub max_concurrent_requests: usize,
}

impl Default for RoutedLimits {
    fn default() -> Self {
        let inbound = HttpLimits::default();
        Self {
            max_header_bytes: inbound.max_header_bytes,
            max_headers: inbound.max_headers,
            header_read_timeout: inbound.header_read_timeout,
            max_concurrent_requests: 4096,
        }
    }
}

impl RoutedLimits {
    /// The server settings of a routed app connection, as the inbound side's limits
    /// name them (the fields that do not apply keep their defaults).
    pub fn as_http_limits(&self) -> HttpLimits {
        HttpLimits {
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            header_read_timeout: self.header_read_timeout,
            // Also each HTTP/2 connection's stream limit: no more than an inbound
            // port's, so one app connection cannot take every place.
            max_concurrent_requests: self
                .max_concurrent_requests
                .min(HttpLimits::default().max_concurrent_requests),
            ..HttpLimits::default()
        }
    }
}

/// One allowed egress destination: a CIDR and, optionally, ports (none = any port).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Destination addresses, e.g. `203.0.113.0/24`; IPv4-mapped IPv6 destinations match
    /// as IPv4.
    pub cidr: ipnet::IpNet,
    /// Destination ports; empty (the default) allows every port.
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

/// One entry of `outbound.upstreams`: a local listener whose connections are tunnelled
/// to one registry service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Where the app connects; must be a loopback address, since connections here act
    /// with this workload's identity.
    pub listen: SocketAddr,
    /// Name of the destination service; must be in the registry.
    pub service: String,
    /// The port on the destination workload.
    pub port: u16,
}

/// One registry entry: the sidecars of a service and the identity they must present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The SPIFFE ID every endpoint must present (pinned).
    pub identity: SpiffeId,
    /// Mesh transport addresses of the service's sidecars; at least one in a registry
    /// file (a control plane may announce a service whose pods are all gone).
    pub endpoints: Vec<SocketAddr>,
    /// The service's virtual addresses (Kubernetes ClusterIPs): a captured connection to
    /// one of them is balanced over `endpoints`, as a connection to an upstream is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    /// What callers do on each port ([`ServicePort`]); a port not listed is `tcp`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// `identity` at `endpoints`, every port `tcp`.
    pub fn new(identity: SpiffeId, endpoints: Vec<SocketAddr>) -> Self {
        Self {
            identity,
            endpoints,
            addresses: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// The settings of `port`, if the entry lists it.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// The `policy` section: which policies authorize inbound traffic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Policy files or directories; none = no policy (the default decides).
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// The decision when no policy matches a request or connection; default `deny`.
    #[serde(default)]
    pub default: DefaultMode,
    /// How often the policy files and `registry_file` are checked for changes; default
    /// `2s`. An invalid change is refused and the previous version stays in force.
    #[serde(default = "defaults::reload_interval", with = "humantime_serde")]
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

/// The `admin` section: the sidecar's own endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin API; must be a loopback address. Default `127.0.0.1:15000`.
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// `/live`, `/ready`, `/metrics`, `/app-health/<name>`; default `0.0.0.0:15020`.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Request headers for the `GET`.
    #[serde(default)]
    pub headers: Vec<ProbeHeader>,
    /// The probe fails when the app has not answered within this time; default `1s`,
    /// never zero.
    #[serde(default = "defaults::probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// One request header of an [`AppProbe`] (as in a Kubernetes `httpGet` probe).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    /// Header name; must be a valid HTTP header name.
    pub name: String,
    /// Header value; must be a valid HTTP header value.
    pub value: String,
}

/// The `limits` section: resource caps and timeouts of the proxy. Counts must be at
/// least 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections per listener; default 4096.
    pub max_connections: usize,
    /// A mesh peer must finish the inbound TLS handshake within this time or is dropped;
    /// default `5s`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Deadline for a TCP connect to the app, a mesh endpoint or an egress destination,
    /// and for the outbound TLS handshake; default `5s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// A tunnel with no bytes in either direction for this long is closed; default `1h`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long SIGTERM waits for live tunnels; default `20s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Mesh connections per destination endpoint; default 4.
    pub pool_connections_per_endpoint: usize,
    /// Concurrent CONNECT streams per mesh connection (outbound pool); default 100.
    pub pool_streams_per_connection: usize,
    /// Concurrent CONNECT streams a peer may open on one inbound connection; default 256.
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
    pub(super) fn bundle_refresh() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn inbound_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], ports::MESH))
    }
    pub(super) fn protocol() -> PortProtocol {
        PortProtocol::Tcp
    }
    pub(super) fn reload_interval() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn detect_timeout() -> Duration {
        Duration::from_millis(200)
    }
    pub(super) fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], ports::ADMIN))
    }
    pub(super) fn health_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], ports::HEALTH))
    }
    pub(super) fn probe_timeout() -> Duration {
        Duration::from_secs(1)
    }
}

/// Service name → where its sidecars are and who they must be.
pub type Services = BTreeMap<String, Service>;

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

    #[test]
    fn the_controller_url_is_https_host_and_port() {
        let discovery = |url: &str| DiscoveryConfig {
            url: url.into(),
            identity: SpiffeId::parse("spiffe://td/ns/airlock/sa/control").unwrap(),
            cache_file: None,
        };
        let good = [
            (
                "https://control.airlock.svc:15010",
                ("control.airlock.svc", 15010),
            ),
            ("https://127.0.0.1:15010/", ("127.0.0.1", 15010)),
            ("https://[fd00::1]:15010", ("fd00::1", 15010)),
        ];
        for (url, (host, port)) in good {
            assert_eq!(
                discovery(url).address(),
                Ok((host.to_owned(), port)),
                "{url}"
            );
        }
        let bad = [
            ("http://control:15010", "https://"),
            ("https://control", "port"),
            ("https://control:0", "not a port"),
            ("https://control:15010/v1", "not a port"),
            ("https://user@control:15010", "nothing after"),
            ("https://:15010", "nothing after"),
        ];
        for (url, says) in bad {
            let error = discovery(url).address().unwrap_err();
            assert!(
                error.starts_with("discovery.url") && error.contains(says),
                "{url}: {error}"
            );
        }
    }
}
