//! The nginx pair: nginx-client.conf and nginx-server.conf beside this file (both opening
//! with nginx-common.conf), filled in with the SVIDs and addresses of this run.

use std::net::SocketAddr;
use std::process::Command;

use crate::process::Process;
use crate::{CLIENT_ID, Fixture, SERVER_ID, Variant, WORKERS, fill, free_addr, svid};

const COMMON: &str = include_str!("nginx-common.conf");
const CLIENT: &str = include_str!("nginx-client.conf");
const SERVER: &str = include_str!("nginx-server.conf");

/// A client-side nginx in front of one server-side nginx per app of `apps` (the first
/// also fronts iperf3); `name` names the variant.
pub(crate) fn pair(fixture: &Fixture, apps: &[SocketAddr], name: &'static str) -> Variant {
    let (client_cert, client_key) = svid(fixture, "nginx-client", CLIENT_ID);
    let (server_cert, server_key) = svid(fixture, "nginx-server", SERVER_ID);
    let bundle = fixture.ca.path("bundle.pem");
    let dir = &fixture.dir;
    let common = |file: &str| {
        let scratch = dir.join(file);
        std::fs::create_dir_all(&scratch).unwrap();
        fill(
            COMMON,
            &[("workers", &WORKERS), ("scratch", &scratch.display())],
        )
    };
    let start = |file: &str, config: String| {
        let path = dir.join(format!("{file}.conf"));
        std::fs::write(&path, config).unwrap();
        Process::spawn(
            Command::new("nginx").args(["-c", path.to_str().unwrap(), "-e", "stderr"]),
            &dir.join(format!("{file}.log")),
        )
    };
    // nginx cannot announce the ports it binds: every listener gets a port that was free a
    // moment ago.
    let mut servers = Vec::new();
    let mut listening = Vec::new();
    let mut server_https = Vec::new();
    let mut server_tcps = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        let server_http = free_addr([127, 0, 0, 4]);
        let server_tcp = free_addr([127, 0, 0, 4]);
        let file = format!("{name}-server-{index}");
        let server_config = fill(
            SERVER,
            &[
                ("common", &common(&file)),
                ("app", app),
                ("server_http", &server_http),
                ("server_tcp", &server_tcp),
                ("cert", &server_cert.display()),
                ("key", &server_key.display()),
                ("bundle", &bundle.display()),
                ("iperf", &fixture.iperf),
            ],
        );
        servers.push(start(&file, server_config));
        listening.extend([server_http, server_tcp]);
        server_https.push(server_http);
        server_tcps.push(server_tcp);
    }
    let http_entry = free_addr([127, 0, 0, 1]);
    let http2_entry = free_addr([127, 0, 0, 1]);
    let tcp_entry = free_addr([127, 0, 0, 1]);
    let upstream_servers: String = server_https
        .iter()
        .map(|a| format!("server {a}; "))
        .collect();
    let file = format!("{name}-client");
    let client_config = fill(
        CLIENT,
        &[
            ("common", &common(&file)),
            ("servers", &upstream_servers),
            ("http_entry", &http_entry),
            ("http2_entry", &http2_entry),
            ("tcp_entry", &tcp_entry),
            ("server_tcp", &server_tcps[0]),
            ("cert", &client_cert.display()),
            ("key", &client_key.display()),
        ],
    );
    let client = start(&file, client_config);
    listening.extend([http_entry, http2_entry, tcp_entry]);
    crate::wait_listening(&listening, dir, "nginx");
    let server = servers.remove(0);
    Variant {
        name,
        http_entry,
        http2_entry,
        tcp_entry,
        proxies: Some((client, server)),
        _extra_servers: servers,
        mtls_port: Some(server_https[0]),
        server_admin: None,
        idle_rss_kib: None,
    }
}
