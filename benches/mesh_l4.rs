//! The sidecar pair on loopback, against direct loopback:
//! - bulk: 8 MiB through one connection (client → sink, the sink acknowledges the count);
//! - connect: new connection + 1-byte round trip + close, one after another;
//! - idle RSS of a sidecar (printed, from /proc).
//!
//! `cargo bench --bench mesh_l4`. Real `airlock` processes (release build), real TLS.

// criterion_group! defines a public function that cannot carry a doc comment.
#![allow(missing_docs)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use airlock_config::{InboundPort, PortProtocol};
use airlock_policy::DefaultMode;
use airlock_testkit::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BULK: usize = 8 * 1024 * 1024;
const CLIENT_ID: &str = "spiffe://bench.local/ns/bench/sa/client";
const SERVER_ID: &str = "spiffe://bench.local/ns/bench/sa/server";

/// Reads everything a connection sends, then answers with the byte count (8 bytes);
/// a 1-byte message is echoed at once (for the connect benchmark).
fn sink_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buffer = vec![0u8; 64 * 1024];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(1) if total == 0 => {
                            let _ = stream.write_all(b"!");
                            return;
                        }
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = stream.write_all(&total.to_le_bytes());
            });
        }
    });
    addr
}

fn bulk(addr: SocketAddr, payload: &[u8]) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(payload).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_le_bytes(count), payload.len() as u64);
}

fn connect_once(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(b"?").unwrap();
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mesh(c: &mut Criterion) {
    let ca = TestCa::init("bench.local");
    let server = CaServer::start(&ca);
    let sink = sink_server();
    // The server side starts first, so that the client's registry names the inbound
    // address it announced; every listener is on port 0 and read back from the sidecar.
    let identity = ca.identity(&server.url, "server", SERVER_ID, &[]);
    let mut config = sidecar_config(identity, "127.0.0.2");
    config.inbound.ports.push(InboundPort {
        app: Some(sink),
        ..InboundPort::new(8080, PortProtocol::Tcp)
    });
    config.policy.default = DefaultMode::AllowMesh;
    let server_side = Sidecar::start(&ca, "server", &config);
    server_side.wait_ready();
    let identity = ca.identity(&server.url, "client", CLIENT_ID, &[]);
    let mut config = sidecar_config(identity, "127.0.0.1");
    config.outbound.upstreams.push(upstream("server", 8080));
    config
        .registry
        .insert("server".into(), service(SERVER_ID, &[server_side.inbound]));
    let client_side = Sidecar::start(&ca, "client", &config);
    client_side.wait_ready();
    let pair_entry = client_side.upstream("server", 8080);

    let payload = vec![0x5au8; BULK];
    bulk(pair_entry, &payload); // warm the pool
    let mut group = c.benchmark_group("l4_bulk_8MiB");
    group.throughput(Throughput::Bytes(BULK as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("direct", |b| b.iter(|| bulk(sink, &payload)));
    group.bench_function("sidecar_pair", |b| b.iter(|| bulk(pair_entry, &payload)));
    group.finish();

    let mut group = c.benchmark_group("l4_new_connection");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("direct", |b| b.iter(|| connect_once(sink)));
    group.bench_function("sidecar_pair", |b| b.iter(|| connect_once(pair_entry)));
    group.finish();

    std::thread::sleep(Duration::from_secs(2));
    println!(
        "idle RSS after the runs: client sidecar {} KiB, server sidecar {} KiB",
        rss_kib(client_side.child.id()),
        rss_kib(server_side.child.id())
    );
}

criterion_group!(benches, mesh);
criterion_main!(benches);
