//! A sidecar for a test (the real binary with a written configuration), the addresses
//! it listens on, and the plain TCP and HTTP clients and servers around it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use airlock_config::{Config, IdentityConfig, Service, Upstream};

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

/// A sidecar configuration for a test: `identity`, every other setting at its default,
/// and the mesh, admin and health listeners on `ip` with port 0, so that the system picks
/// free ports and [`Sidecar::start`] reads back which.
pub fn sidecar_config(identity: IdentityConfig, ip: &str) -> Config {
    let any_port = SocketAddr::new(ip.parse().unwrap(), 0);
    let mut config = Config::new(identity);
    config.inbound.listen = any_port;
    config.admin.listen = any_port;
    config.admin.health_listen = any_port;
    config
}

/// An upstream listener on 127.0.0.1 (port picked at start) to `service`'s `port`.
pub fn upstream(service: &str, port: u16) -> Upstream {
    Upstream {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        service: service.to_owned(),
        port,
    }
}

/// A registry entry: `identity` at `endpoints`.
pub fn service(identity: &str, endpoints: &[SocketAddr]) -> Service {
    Service::new(identity.parse().unwrap(), endpoints.to_vec())
}

/// A running `airlock proxy`, killed on drop, with the addresses it announced.
pub struct Sidecar {
    /// The `airlock proxy` process.
    pub child: Child,
    /// `<name>.log` next to the CA: the sidecar's stderr (at `info`) and its access log.
    pub log: PathBuf,
    /// The `<name>.yaml` file the sidecar was started with.
    pub config: PathBuf,
    /// The mesh transport listener (mTLS HTTP/2 CONNECT).
    pub inbound: SocketAddr,
    /// The loopback admin API.
    pub admin: SocketAddr,
    /// The health listener: `/live`, `/ready`, `/metrics`.
    pub health: SocketAddr,
    /// The plaintext capture listener; `None` unless `inbound.permissive_listen` is set.
    pub permissive: Option<SocketAddr>,
    /// The transparent outbound listener; `None` unless `outbound.transparent` is set.
    pub transparent: Option<SocketAddr>,
    /// (service, destination port, listener) of each explicit upstream.
    pub upstreams: Vec<(String, u16, SocketAddr)>,
}

impl Sidecar {
    /// Writes `config` to `name.yaml` next to the CA, starts the sidecar and reads the
    /// addresses it bound from its first line (`airlock proxy listening: …`).
    pub fn start(ca: &TestCa, name: &str, config: &Config) -> Self {
        let path = ca.scratch(&format!("{name}.yaml"));
        std::fs::write(&path, config.to_yaml()).unwrap();
        let log = ca.scratch(&format!("{name}.log"));
        let (child, line) = spawn_announcing(
            airlock()
                .args(["proxy", "--config"])
                .arg(&path)
                .env("AIRLOCK_LOG", "info"),
            std::fs::File::create(&log).unwrap(),
        );
        let Some(listening) = line.trim().strip_prefix("airlock proxy listening: ") else {
            panic!(
                "{name} did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let mut sidecar = Self {
            child,
            log,
            config: path,
            inbound: unset(),
            admin: unset(),
            health: unset(),
            permissive: None,
            transparent: None,
            upstreams: Vec::new(),
        };
        sidecar.read_announcement(listening);
        sidecar
    }

    /// Fills the addresses from `inbound A admin B health C [permissive P] [transparent T]
    /// [upstream service:port=U]…`.
    fn read_announcement(&mut self, listening: &str) {
        let words: Vec<&str> = listening.split_whitespace().collect();
        for pair in words.chunks(2) {
            let [role, value] = pair else {
                panic!("odd announcement {listening:?}");
            };
            let addr = |text: &str| -> SocketAddr {
                text.parse()
                    .unwrap_or_else(|_| panic!("{text:?} in {listening:?} is not an address"))
            };
            match *role {
                "inbound" => self.inbound = addr(value),
                "admin" => self.admin = addr(value),
                "health" => self.health = addr(value),
                "permissive" => self.permissive = Some(addr(value)),
                "transparent" => self.transparent = Some(addr(value)),
                "upstream" => {
                    let (destination, listen) = value.split_once('=').unwrap();
                    let (service, port) = destination.rsplit_once(':').unwrap();
                    self.upstreams
                        .push((service.to_owned(), port.parse().unwrap(), addr(listen)));
                }
                other => panic!("unknown listener {other:?} in {listening:?}"),
            }
        }
        assert!(
            self.inbound != unset() && self.admin != unset() && self.health != unset(),
            "{listening:?} lacks a listener"
        );
    }

    /// The listener of the upstream to `service`'s `port`.
    pub fn upstream(&self, service: &str, port: u16) -> SocketAddr {
        self.upstreams
            .iter()
            .find(|(name, to, _)| name == service && *to == port)
            .map(|&(_, _, listen)| listen)
            .unwrap_or_else(|| panic!("no upstream to {service}:{port} in {:?}", self.upstreams))
    }

    /// Polls `/ready` on the health listener until it answers 200; panics with the
    /// sidecar's log after about 40 seconds.
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

    /// Everything the sidecar has logged so far; empty when the log cannot be read.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text of `/metrics` (empty when the request failed); see [`metric`].
    pub fn metrics(&self) -> String {
        http("GET", &format!("http://{}/metrics", self.health)).1
    }

    /// A plain-HTTP request to the admin API, as [`http`] returns it.
    pub fn admin(&self, method: &str, path: &str) -> (u16, String) {
        http(method, &format!("http://{}{path}", self.admin))
    }
}

/// A placeholder until the announcement names the address.
fn unset() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
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

/// A TCP connection to `addr` with a 10 second read timeout, so a silent tunnel fails
/// the test instead of hanging it; panics when the connection is refused.
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

/// A caller's sidecar on 127.0.0.1 with `identity`, an upstream listener to each of
/// `service`'s `ports`, and `service` pinned to `service_identity` at `endpoint`; started
/// and ready. [`Sidecar::upstream`] names its listeners.
pub fn caller(
    ca: &TestCa,
    name: &str,
    identity: IdentityConfig,
    service_name: &str,
    service_identity: &str,
    endpoint: SocketAddr,
    ports: &[u16],
) -> Sidecar {
    let mut config = sidecar_config(identity, "127.0.0.1");
    config.outbound.upstreams = ports.iter().map(|&p| upstream(service_name, p)).collect();
    config.registry.insert(
        service_name.to_owned(),
        service(service_identity, &[endpoint]),
    );
    let sidecar = Sidecar::start(ca, name, &config);
    sidecar.wait_ready();
    sidecar
}
