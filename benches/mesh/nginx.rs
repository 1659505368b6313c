//! The nginx pair: nginx-client.conf and nginx-server.conf beside this file (both opening
//! with nginx-common.conf), filled in with the SVIDs and addresses of this run.

use std::process::Command;

use crate::process::Process;
use crate::{CLIENT_ID, Fixture, SERVER_ID, Variant, WORKERS, fill, free_addr, svid};

const COMMON: &str = include_str!("nginx-common.conf");
const CLIENT: &str = include_str!("nginx-client.conf");
const SERVER: &str = include_str!("nginx-server.conf");

pub(crate) fn pair(fixture: &Fixture) -> Variant {
    let (client_cert, client_key) = svid(fixture, "nginx-client", CLIENT_ID);
    let (server_cert, server_key) = svid(fixture, "nginx-server", SERVER_ID);
    let bundle = fixture.ca.path("bundle.pem");
    // nginx cannot announce the ports it binds: every listener gets a port that was free a
    // moment ago.
    let http_entry = free_addr([127, 0, 0, 1]);
    let http2_entry = free_addr([127, 0, 0, 1]);
    let tcp_entry = free_addr([127, 0, 0, 1]);
    let server_http = free_addr([127, 0, 0, 4]);
    let server_tcp = free_addr([127, 0, 0, 4]);
    let dir = &fixture.dir;
    let common = |name: &str| {
        let scratch = dir.join(name);
        std::fs::create_dir_all(&scratch).unwrap();
        fill(
            COMMON,
            &[("workers", &WORKERS), ("scratch", &scratch.display())],
        )
    };
    let client_config = fill(
        CLIENT,
        &[
            ("common", &common("nginx-client")),
            ("server_http", &server_http),
            ("http_entry", &http_entry),
            ("http2_entry", &http2_entry),
            ("tcp_entry", &tcp_entry),
            ("server_tcp", &server_tcp),
            ("cert", &client_cert.display()),
            ("key", &client_key.display()),
        ],
    );
    let server_config = fill(
        SERVER,
        &[
            ("common", &common("nginx-server")),
            ("app", &fixture.app),
            ("server_http", &server_http),
            ("server_tcp", &server_tcp),
            ("cert", &server_cert.display()),
            ("key", &server_key.display()),
            ("bundle", &bundle.display()),
            ("iperf", &fixture.iperf),
        ],
    );
    let start = |name: &str, config: String| {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, config).unwrap();
        Process::spawn(
            Command::new("nginx").args(["-c", path.to_str().unwrap(), "-e", "stderr"]),
            &dir.join(format!("{name}.log")),
        )
    };
    let server = start("nginx-server", server_config);
    let client = start("nginx-client", client_config);
    crate::wait_listening(
        &[server_http, server_tcp, http_entry, http2_entry, tcp_entry],
        dir,
        "nginx",
    );
    Variant {
        name: "nginx",
        http_entry,
        http2_entry,
        tcp_entry,
        proxies: Some((client, server)),
        mtls_port: Some(server_http),
        idle_rss_kib: None,
    }
}
