//! A CA for a test: its directory, its tokens and SVIDs, its HTTPS API, and the
//! independent tools (openssl, curl) that check what it serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_config::IdentityConfig;

use crate::process::{PASSPHRASE, airlock, ok, run, spawn_announcing, stderr, stdout};

/// A fresh CA directory (inside its own temp dir, removed on drop).
pub struct TestCa {
    /// The test's scratch directory: holds `dir` and every file that [`TestCa::scratch`]
    /// names; deleted with the `TestCa`.
    pub temp: tempfile::TempDir,
    /// The CA directory that `airlock ca init` made (`ca.yaml`, `bundle.pem`, keys).
    pub dir: PathBuf,
    /// The bare trust domain name, e.g. `example.org`.
    pub trust_domain: String,
}

impl TestCa {
    /// Runs `airlock ca init` for `trust_domain` in a new temp dir (with the test
    /// passphrase); panics when it fails.
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

    /// A file inside the CA directory, e.g. `path("bundle.pem")`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A scratch file path next to the CA directory.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    /// The SPIFFE ID with this CA's trust domain and `path` (which starts with `/`).
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

    /// A sidecar's identity settings for `id`: a fresh join token (made with
    /// `token_args`, such as `--uses 5`) in `<name>.token`, and the CA at `ca_url`.
    pub fn identity(
        &self,
        ca_url: &str,
        name: &str,
        id: &str,
        token_args: &[&str],
    ) -> IdentityConfig {
        let token_file = self.scratch(&format!("{name}.token"));
        std::fs::write(&token_file, self.token(id, token_args)).unwrap();
        IdentityConfig::new(
            self.trust_domain.parse().unwrap(),
            ca_url,
            self.path("bundle.pem"),
            token_file,
        )
    }

    /// A fresh join token for `id` from `airlock ca token create`, with `extra` arguments
    /// (such as `--uses 5`); panics when the command fails.
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
    /// The `airlock ca serve` process.
    pub child: Child,
    /// Where it listens, as announced.
    pub addr: SocketAddr,
    /// `serve.log` in the CA's scratch dir: stderr and the rest of stdout, appended across
    /// restarts.
    pub log: PathBuf,
    /// `https://<addr>`, as announced; the base of API paths.
    pub url: String,
}

impl CaServer {
    /// Starts the CA on a free loopback port and waits for its announcement.
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

    /// Everything the CA has logged so far; panics when the log cannot be read.
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
    /// HTTP status; 0 when curl got no response (refused connection, TLS failure).
    pub status: u16,
    /// The response body, without the status line curl appends.
    pub body: String,
    /// curl's exit code (0 on a completed transfer, -1 when killed by a signal).
    pub curl_exit: i32,
}

impl Reply {
    /// The body as JSON; panics, showing the body, when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `error.code` of a CA error answer; empty when the body has none. Panics when
    /// the body is not JSON.
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
