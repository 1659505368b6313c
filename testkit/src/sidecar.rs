//! A sidecar for a test (the real binary with a written configuration), the addresses
//! it listens on, and the plain TCP and HTTP clients and servers around it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use crate::ca::TestCa;
use crate::process::{airlock, run, spawn_announcing, stdout};

/// A port that was free a moment ago on `ip`.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `curl` a plain-HTTP URL: (status, body); status 0 when the connection failed.
pub fn http(method: &str, url: &str) -> (u16, String) {
    let output = run(Command::new("curl").args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        url,
    ]));
    let text = stdout(&output);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// A running `airlock proxy`, killed on drop.
pub struct Sidecar {
    pub child: Child,
    pub log: PathBuf,
    pub config: PathBuf,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
}

/// Addresses for one sidecar on its own loopback IP.
pub struct SidecarAddrs {
    pub ip: String,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
}

impl SidecarAddrs {
    pub fn new(ip: &str) -> Self {
        let at = |port: u16| SocketAddr::new(ip.parse().unwrap(), port);
        Self {
            ip: ip.to_owned(),
            inbound: at(free_port(ip)),
            admin: at(free_port(ip)),
            health: at(free_port(ip)),
        }
    }
}

impl Sidecar {
    /// Writes `name.yaml` (the given YAML plus the addresses) next to the CA and starts it.
    pub fn start(ca: &TestCa, name: &str, addrs: &SidecarAddrs, yaml: &str) -> Self {
        Self::start_with_admin(ca, name, addrs, yaml, "")
    }

    /// [`Sidecar::start`], with more lines for the `admin:` section.
    pub fn start_with_admin(
        ca: &TestCa,
        name: &str,
        addrs: &SidecarAddrs,
        yaml: &str,
        admin_extra: &str,
    ) -> Self {
        let config = ca.scratch(&format!("{name}.yaml"));
        let text = format!(
            "{yaml}admin:\n  listen: {}\n  health_listen: {}\n{admin_extra}",
            addrs.admin, addrs.health
        )
        .replace("INBOUND_LISTEN", &addrs.inbound.to_string());
        std::fs::write(&config, text).unwrap();
        let log = ca.scratch(&format!("{name}.log"));
        let (child, line) = spawn_announcing(
            airlock()
                .args(["proxy", "--config"])
                .arg(&config)
                .env("AIRLOCK_LOG", "info"),
            std::fs::File::create(&log).unwrap(),
        );
        assert!(
            line.contains("listening"),
            "{name} did not start: {line:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self {
            child,
            log,
            config,
            inbound: addrs.inbound,
            admin: addrs.admin,
            health: addrs.health,
        }
    }

    pub fn wait_ready(&self) {
        let url = format!("http://{}/ready", self.health);
        for _ in 0..800 {
            if http("GET", &url).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "sidecar {} never became ready; its log:\n{}",
            self.config.display(),
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http("GET", &format!("http://{}/metrics", self.health)).1
    }

    pub fn admin(&self, method: &str, path: &str) -> (u16, String) {
        http(method, &format!("http://{}{path}", self.admin))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP echo server on 127.0.0.1, answering each connection in its own thread.
pub fn echo_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}

pub fn connect(addr: SocketAddr) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends `message` and reads the echo; `None` when the tunnel was refused or closed.
pub fn round_trip(stream: &mut std::net::TcpStream, message: &[u8]) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    stream.write_all(message).ok()?;
    let mut got = vec![0u8; message.len()];
    let mut filled = 0;
    while filled < got.len() {
        match stream.read(&mut got[filled..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => filled += n,
        }
    }
    Some(got)
}

/// Sum of the Prometheus samples whose line starts with `prefix`.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
