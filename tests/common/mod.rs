//! Shared helpers for the end-to-end tests: they run the real `airlock` binary and the
//! independent tools (openssl, curl, Python `cryptography`) as processes.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const PASSPHRASE: &str = "test-passphrase-1";

/// The real binary, with the CA passphrase in its environment.
pub fn airlock() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_airlock"));
    command
        .env("AIRLOCK_CA_PASSPHRASE", PASSPHRASE)
        .env_remove("AIRLOCK_LOG");
    command
}

/// Spawns a long-running command (stderr to `log`) and returns it with the first line it
/// prints on stdout, which announces where it listens.
/// The rest of stdout (a sidecar's access log, say) goes to `log` as well.
pub fn spawn_announcing(command: &mut Command, log: std::fs::File) -> (Child, String) {
    let mut rest = log.try_clone().unwrap();
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut rest));
    (child, line)
}

pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(command: &mut Command) -> String {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Asserts the exit status and returns stderr.
pub fn fails_with(command: &mut Command, status: i32) -> String {
    let output = run(command);
    assert_eq!(
        output.status.code(),
        Some(status),
        "{command:?}: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stderr(&output)
}

/// A fresh CA directory (inside its own temp dir, removed on drop).
pub struct TestCa {
    pub temp: tempfile::TempDir,
    pub dir: PathBuf,
    pub trust_domain: String,
}

impl TestCa {
    pub fn init(trust_domain: &str) -> Self {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("ca");
        ok(airlock()
            .args(["ca", "init", "--trust-domain", trust_domain, "--dir"])
            .arg(&dir));
        Self {
            temp,
            dir,
            trust_domain: trust_domain.to_owned(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A scratch file path next to the CA directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.trust_domain)
    }

    /// Sets top-level sections of ca.yaml: each top-level key of `yaml` replaces the
    /// block of the same key (the key line and its indented lines).
    pub fn configure(&self, yaml: &str) {
        let path = self.path("ca.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let replaced: Vec<&str> = yaml
            .lines()
            .filter(|l| !l.starts_with(' ') && !l.is_empty())
            .filter_map(|l| l.split(':').next())
            .collect();
        let mut kept = Vec::new();
        let mut skipping = false;
        for line in text.lines() {
            if !line.starts_with(' ') && !line.starts_with('-') {
                skipping = replaced
                    .iter()
                    .any(|key| line.starts_with(&format!("{key}:")));
            }
            if !skipping {
                kept.push(line);
            }
        }
        std::fs::write(&path, format!("{}\n{yaml}", kept.join("\n"))).unwrap();
    }

    /// Replaces one top-level `key: value` line of ca.yaml.
    pub fn set(&self, key: &str, value: &str) {
        self.configure(&format!("{key}: {value}\n"));
    }

    /// A sidecar's `identity:` section for `id`: a fresh join token (made with
    /// `token_args`, such as `--uses 5`) in `<name>.token`, and the CA at `ca_url`.
    pub fn identity_yaml(&self, ca_url: &str, name: &str, id: &str, token_args: &[&str]) -> String {
        let token_file = self.scratch(&format!("{name}.token"));
        std::fs::write(&token_file, self.token(id, token_args)).unwrap();
        format!(
            "identity:\n  trust_domain: {}\n  ca_url: {ca_url}\n  ca_bundle: {}\n  token_file: {}\n",
            self.trust_domain,
            self.path("bundle.pem").display(),
            token_file.display()
        )
    }

    pub fn token(&self, id: &str, extra: &[&str]) -> String {
        ok(airlock()
            .args(["ca", "token", "create", "--spiffe-id", id, "--dir"])
            .arg(&self.dir)
            .args(extra))
        .trim()
        .to_owned()
    }

    /// `airlock ca issue` for a CSR file; returns the chain PEM.
    pub fn issue(&self, id: &str, csr: &Path, extra: &[&str]) -> String {
        ok(airlock()
            .args(["ca", "issue", "--spiffe-id", id, "--dir"])
            .arg(&self.dir)
            .arg("--csr")
            .arg(csr)
            .args(extra))
    }
}

/// An EC P-256 key and CSR made by openssl, with whatever extra `req` arguments.
pub fn openssl_csr(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let output = run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=workload",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .args(extra));
    assert!(output.status.success(), "openssl req: {}", stderr(&output));
    (key, csr)
}

/// A leaf that airlock's CA would never issue, signed by openssl with the CA's real issuing
/// key (decrypted with the passphrase): cA=false, digitalSignature, both EKUs and exactly
/// the URI SAN `uri`, valid for ten minutes. Returns `(chain, key)`, leaf first, so a
/// verifier's own leaf rules are what refuses it, not the chain.
pub fn forge_leaf(ca: &TestCa, name: &str, uri: &str) -> (PathBuf, PathBuf) {
    let (key, csr) = openssl_csr(ca.temp.path(), name, &[]);
    let issuing_key = ca.scratch(&format!("{name}.issuing-key.pem"));
    ok(Command::new("openssl")
        .args(["pkey", "-passin", "env:AIRLOCK_CA_PASSPHRASE", "-in"])
        .arg(ca.path("issuing.key"))
        .arg("-out")
        .arg(&issuing_key)
        .env("AIRLOCK_CA_PASSPHRASE", PASSPHRASE));
    let extensions = ca.scratch(&format!("{name}.ext"));
    std::fs::write(
        &extensions,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=critical,URI:{uri}\nauthorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n"
        ),
    )
    .unwrap();
    let leaf = ca.scratch(&format!("{name}.leaf.pem"));
    ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(ca.path("issuing.pem"))
        .arg("-CAkey")
        .arg(&issuing_key)
        .arg("-extfile")
        .arg(&extensions)
        .arg("-out")
        .arg(&leaf));
    let chain = ca.scratch(&format!("{name}.pem"));
    std::fs::write(
        &chain,
        std::fs::read_to_string(&leaf).unwrap()
            + &std::fs::read_to_string(ca.path("issuing.pem")).unwrap(),
    )
    .unwrap();
    (chain, key)
}

/// A running `airlock ca serve`, killed on drop.
pub struct CaServer {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub url: String,
}

impl CaServer {
    pub fn start(ca: &TestCa) -> Self {
        Self::start_at(ca, "127.0.0.1:0")
    }

    /// Starts (or restarts) the CA on a given address.
    pub fn start_at(ca: &TestCa, listen: &str) -> Self {
        let log = ca.scratch("serve.log");
        // Appended: a restarted CA keeps the earlier run's log.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let (child, line) = spawn_announcing(
            airlock()
                .args(["ca", "serve", "--listen", listen, "--dir"])
                .arg(&ca.dir),
            log_file,
        );
        let url = announced_url(&line, &log);
        let addr = url.trim_start_matches("https://").parse().unwrap();
        Self {
            child,
            addr,
            log,
            url,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Stops the CA (an outage); dropping it later is harmless.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `https://…` URL in a server's announcement line; the panic shows its log.
pub fn announced_url(line: &str, log: &Path) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with("https://"))
        .unwrap_or_else(|| {
            panic!(
                "no URL in {line:?}; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .to_owned()
}

/// What curl saw: HTTP status (0 when the connection failed) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub curl_exit: i32,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// curl against the CA, verifying its certificate with the bundle.
pub fn curl(ca: &TestCa, server: &CaServer, path: &str, args: &[&str]) -> Reply {
    curl_verified(
        &ca.path("bundle.pem"),
        args,
        &format!("{}{path}", server.url),
    )
}

/// curl to `url`, verifying the server's certificate against the roots in `cacert`.
pub fn curl_verified(cacert: &Path, args: &[&str], url: &str) -> Reply {
    let output = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(cacert)
        .args(args)
        .arg(url));
    let text = stdout(&output);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        curl_exit: output.status.code().unwrap_or(-1),
    }
}

/// `POST /v1/svid` with a JSON `body` and more curl arguments (headers, a certificate).
pub fn post_svid(ca: &TestCa, server: &CaServer, body: &str, extra: &[&str]) -> Reply {
    let mut args = vec![
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "--data-binary",
        body,
    ];
    args.extend_from_slice(extra);
    curl(ca, server, "/v1/svid", &args)
}

/// The JSON body of `POST /v1/svid` for a CSR file.
pub fn svid_request(csr: &Path, ttl: Option<u64>) -> String {
    let csr = std::fs::read_to_string(csr).unwrap();
    serde_json::json!({"csr": csr, "ttl": ttl}).to_string()
}

/// Writes a JSON `POST /v1/svid` answer's chain to a file.
pub fn save_chain(reply: &Reply, path: &Path) {
    let chain: Vec<String> = reply.json()["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    std::fs::write(path, chain.concat()).unwrap();
}

pub fn python(script: &str) -> Command {
    let mut command = Command::new("python3");
    command.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/tools")
            .join(script),
    );
    command
}

pub fn wait_for(what: &str, condition: impl FnMut() -> bool) {
    wait_up_to(Duration::from_secs(10), what, condition);
}

/// Polls `condition` every 50 ms until it holds; panics after `limit`.
pub fn wait_up_to(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

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

/// `openssl s_client` arguments that present `chain` (leaf and intermediate: `-cert` alone
/// sends only the first certificate) with `key`.
pub fn present_svid(chain: &Path, key: &Path) -> Vec<String> {
    let (chain, key) = (chain.display().to_string(), key.display().to_string());
    vec![
        "-cert".into(),
        chain.clone(),
        "-cert_chain".into(),
        chain,
        "-key".into(),
        key,
    ]
}

/// `openssl s_client` against the mesh port; true when the server accepted us (it
/// answers an empty CONNECT-less HTTP/2 preface with bytes only after a full handshake).
pub fn s_client(addr: SocketAddr, ca: &TestCa, extra: &[String]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-alpn",
            "h2",
            "-CAfile",
        ])
        .arg(ca.path("bundle.pem"))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the server time to reject a client certificate (TLS 1.3 does that after the
    // client's Finished), then close stdin.
    std::thread::sleep(Duration::from_millis(700));
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", stdout(&output), stderr(&output));
    let accepted = text.contains("Verify return code: 0 (ok)")
        && !text.contains("alert")
        && !text.contains("error:");
    (accepted, text)
}

/// A network namespace the test created, with loopback up; deleted when dropped, also
/// when the test fails.
pub struct Namespace(pub String);

impl Namespace {
    /// `None`, after saying why, where root, `ip` or `iptables` is missing: the test is
    /// skipped there (CI runs as root and installs both).
    pub fn create(name: &str, test: &str) -> Option<Self> {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let tools = ["ip", "iptables"]
            .iter()
            .all(|t| Command::new(t).arg("--version").output().is_ok());
        if !root || !tools {
            eprintln!(
                "SKIPPED {test}: needs root, `ip` (iproute2) and `iptables` to build a network namespace"
            );
            return None;
        }
        let namespace = Self(format!("airlock-{name}-{}", std::process::id()));
        assert!(
            Command::new("ip")
                .args(["netns", "add", &namespace.0])
                .status()
                .unwrap()
                .success()
        );
        namespace.run(&["ip", "link", "set", "lo", "up"]);
        Some(namespace)
    }

    /// Runs a command inside; it must succeed.
    pub fn run(&self, args: &[&str]) {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "ip netns exec {args:?} failed: {}",
            stderr(&output)
        );
    }

    /// Runs a command inside and returns what it did.
    pub fn output(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}
