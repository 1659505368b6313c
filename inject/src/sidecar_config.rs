//! The sidecar's `airlock proxy` configuration for one pod, built as the typed schema the
//! sidecar reads, so that the injector cannot write a file the sidecar would refuse.
//! Listeners bind the pod's addresses (0.0.0.0: the pod IP is not known before the pod
//! is scheduled); admin stays on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use airlock_config::{
    AccessLogConfig, AdminConfig, AppProbe, Config, DiscoveryConfig, EgressRule, HttpLimits,
    IdentityConfig, InboundConfig, InboundPort, Limits, OutboundConfig, PolicyConfig, PortProtocol,
    ProbeHeader, Services, ports,
};
use airlock_identity::TrustDomain;
use airlock_policy::DefaultMode;
use ipnet::{IpNet, Ipv4Net};

use crate::names::dir::{CA_BUNDLE_DIR, DISCOVERY_DIR, POLICIES_DIR, REGISTRY_DIR, TOKEN_DIR};
use crate::probes::MovedProbe;

/// What one pod's sidecar configuration depends on.
pub(crate) struct PodSidecar<'a> {
    pub trust_domain: &'a TrustDomain,
    pub ca_url: &'a str,
    /// Also accept plaintext on the app ports (when there are any).
    pub permissive: bool,
    pub default_policy: DefaultMode,
    pub inbound_ports: &'a [(u16, PortProtocol)],
    /// Destinations outside the mesh: a CIDR and, optionally, one port.
    pub egress: &'a [(Ipv4Net, Option<u16>)],
    /// The app's probes, now run by the sidecar.
    pub probes: &'a [MovedProbe],
    /// The controller to subscribe to, if the mesh runs one.
    pub controller: Option<&'a crate::pod::Controller>,
}

/// The configuration file's text.
pub(crate) fn sidecar_config(pod: &PodSidecar) -> String {
    let header =
        "# Written by the airlock injector; change the pod's airlock.dev/* annotations instead.\n";
    header.to_owned() + &config(pod).to_yaml()
}

fn config(pod: &PodSidecar) -> Config {
    let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let permissive = pod.permissive && !pod.inbound_ports.is_empty();
    let inbound_ports = pod
        .inbound_ports
        .iter()
        .map(|&(port, protocol)| InboundPort {
            port,
            protocol,
            app: None,
            permissive,
            http: HttpLimits::default(),
        })
        .collect();
    let egress = pod
        .egress
        .iter()
        .map(|&(cidr, port)| EgressRule {
            cidr: IpNet::V4(cidr),
            ports: port.into_iter().collect(),
        })
        .collect();
    let app_probes = pod
        .probes
        .iter()
        .map(|probe| {
            let headers = probe
                .headers
                .iter()
                .map(|(name, value)| ProbeHeader {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect();
            let checked = AppProbe {
                port: probe.port,
                path: probe.path.clone(),
                headers,
                timeout: Duration::from_secs(probe.timeout_seconds.max(1)),
            };
            (probe.name.clone(), checked)
        })
        .collect();
    Config {
        identity: IdentityConfig::new(
            pod.trust_domain.clone(),
            pod.ca_url,
            Path::new(CA_BUNDLE_DIR).join("bundle.pem"),
            Path::new(TOKEN_DIR).join("token"),
        ),
        inbound: InboundConfig {
            listen: any(ports::MESH),
            ports: inbound_ports,
            permissive_listen: permissive.then(|| any(ports::INBOUND_PLAINTEXT)),
            ..InboundConfig::default()
        },
        outbound: OutboundConfig {
            upstreams: Vec::new(),
            transparent: Some(loopback(ports::OUTBOUND)),
            egress,
            ..OutboundConfig::default()
        },
        registry: Services::new(),
        registry_file: Some(Path::new(REGISTRY_DIR).join("registry.yaml")),
        discovery: pod.controller.map(|controller| DiscoveryConfig {
            url: controller.url.clone(),
            identity: controller.identity.clone(),
            cache_file: Some(Path::new(DISCOVERY_DIR).join("view.pb")),
        }),
        policy: PolicyConfig {
            paths: vec![POLICIES_DIR.into()],
            default: pod.default_policy,
            ..PolicyConfig::default()
        },
        admin: AdminConfig {
            listen: loopback(ports::ADMIN),
            health_listen: any(ports::HEALTH),
            app_probes,
        },
        limits: Limits::default(),
        access_log: AccessLogConfig::default(),
    }
}
