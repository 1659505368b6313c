//! The airlock pair: two `airlock proxy` sidecars, each configured as a typed
//! [`Config`] with every listener on port 0, read back from what the sidecar announces.

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

/// Starts the server side first, so that the client's registry names the inbound address
/// it announced.
pub(crate) fn pair(fixture: &Fixture, ca_server: &CaServer) -> Variant {
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

    let identity = ca.identity(&ca_server.url, "server", SERVER_ID, &[]);
    let mut config = sidecar_config(identity, "127.0.0.2");
    config.inbound.ports = vec![
        InboundPort {
            app: Some(fixture.app),
            ..InboundPort::new(8080, PortProtocol::Http)
        },
        InboundPort {
            app: Some(fixture.iperf),
            ..InboundPort::new(5201, PortProtocol::Tcp)
        },
    ];
    config.policy.paths = vec![policies];
    quiet(&mut config);
    let server_side = Sidecar::start(ca, "server", &config);
    server_side.wait_ready();

    let identity = ca.identity(&ca_server.url, "client", CLIENT_ID, &[]);
    let mut config = sidecar_config(identity, "127.0.0.1");
    config.outbound.upstreams = vec![upstream("server", 8080), upstream("server", 5201)];
    config
        .registry
        .insert("server".into(), service(SERVER_ID, &[server_side.inbound]));
    quiet(&mut config);
    let client_side = Sidecar::start(ca, "client", &config);
    client_side.wait_ready();

    let http_entry = client_side.upstream("server", 8080);
    Variant {
        name: "airlock",
        http_entry,
        http2_entry: http_entry,
        tcp_entry: client_side.upstream("server", 5201),
        mtls_port: Some(server_side.inbound),
        proxies: Some((Process::adopt(client_side), Process::adopt(server_side))),
        idle_rss_kib: None,
    }
}
