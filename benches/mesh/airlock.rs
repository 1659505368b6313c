//! The airlock pair: `airlock proxy` sidecars, a client side and one server side per app,
//! each configured as a typed [`Config`] with every listener on port 0, read back from
//! what the sidecar announces.

use std::net::SocketAddr;

use airlock_config::routes::{ServicePort, ServiceProtocol};
use airlock_config::{Config, InboundPort, PortProtocol, SinkKind};
use airlock_testkit::{CaServer, Sidecar, service, sidecar_config, upstream};

use crate::process::Process;
use crate::{CLIENT_ID, Fixture, SERVER_ID, Variant, WORKERS, fill};

/// The server side's policy: the client may GET /kib on 8080 and reach iperf3 on 5201.
const POLICY: &str = include_str!("airlock-policy.yaml");

/// What every airlock sidecar of the benchmark shares: no access log, [`WORKERS`] threads.
fn quiet(config: &mut Config) {
    config.access_log.sink = SinkKind::Off;
    config.limits.worker_threads = Some(WORKERS);
}

/// One server-side sidecar per app of `apps` (the first also fronts iperf3), then the
/// client side, whose registry names the inbound addresses they announced and routes
/// port 8080 per request; `name` names the variant.
pub(crate) fn pair(
    fixture: &Fixture,
    ca_server: &CaServer,
    apps: &[SocketAddr],
    name: &'static str,
) -> Variant {
    let ca = &fixture.ca;
    let policies = fixture.dir.join("airlock-policies.yaml");
    std::fs::write(
        &policies,
        fill(
            POLICY,
            &[("server_id", &SERVER_ID), ("client_id", &CLIENT_ID)],
        ),
    )
    .unwrap();

    let mut servers = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let file = format!("{name}-server-{index}");
        let identity = ca.identity(&ca_server.url, &file, SERVER_ID, &[]);
        let mut config = sidecar_config(identity, "127.0.0.2");
        config.inbound.ports = vec![
            InboundPort {
                app: Some(*app),
                ..InboundPort::new(8080, PortProtocol::Http)
            },
            InboundPort {
                app: Some(fixture.iperf),
                ..InboundPort::new(5201, PortProtocol::Tcp)
            },
        ];
        config.policy.paths = vec![policies.clone()];
        quiet(&mut config);
        let server_side = Sidecar::start(ca, &file, &config);
        server_side.wait_ready();
        servers.push(server_side);
    }
    let endpoints: Vec<SocketAddr> = servers.iter().map(|s| s.inbound).collect();

    let file = format!("{name}-client");
    let identity = ca.identity(&ca_server.url, &file, CLIENT_ID, &[]);
    let mut config = sidecar_config(identity, "127.0.0.1");
    config.outbound.upstreams = vec![upstream("server", 8080), upstream("server", 5201)];
    // Port 8080 is HTTP: the client side routes each request on its own (balancer,
    // retry layer, per-request HTTP/2 on the mesh), as users of HTTP services run it.
    let server = airlock_config::Service {
        ports: vec![ServicePort::new(8080, ServiceProtocol::Http)],
        ..service(SERVER_ID, &endpoints)
    };
    config.registry.insert("server".into(), server);
    quiet(&mut config);
    let client_side = Sidecar::start(ca, &file, &config);
    client_side.wait_ready();

    let http_entry = client_side.upstream("server", 8080);
    let mtls_port = Some(servers[0].inbound);
    let server_admin = Some(servers[0].admin);
    let mut servers = servers.into_iter().map(Process::adopt);
    let server = servers.next().expect("at least one app");
    Variant {
        name,
        http_entry,
        http2_entry: http_entry,
        tcp_entry: client_side.upstream("server", 5201),
        mtls_port,
        server_admin,
        proxies: Some((Process::adopt(client_side), server)),
        _extra_servers: servers.collect(),
        idle_rss_kib: None,
    }
}
