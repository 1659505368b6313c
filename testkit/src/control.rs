//! A controller for a test: `airlock control --source dir:…` with its own SVID from the
//! test CA, the addresses it announced, and a restart on the same gRPC address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use crate::ca::TestCa;
use crate::process::{airlock, spawn_announcing};
use crate::sidecar::http;

/// The SPIFFE ID path every test controller runs as.
pub const CONTROLLER_PATH: &str = "/ns/airlock/sa/control";

/// A running `airlock control`, killed on drop.
pub struct Controller {
    /// The process; `None` while stopped.
    child: Option<Child>,
    /// The gRPC (mTLS) listener, kept across restarts.
    pub grpc: SocketAddr,
    /// `/live`, `/ready`, `/metrics`.
    pub health: SocketAddr,
    /// `control.log` next to the CA: stderr, appended across restarts.
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Controller {
    /// Starts a controller on 127.0.0.1 following directory `source`, with a join token
    /// (good for ten starts) for `spiffe://TD/ns/airlock/sa/control` from `ca`, whose API
    /// is at `ca_url`, and its bundle (deny list included) fetched every second; waits
    /// until it is ready.
    pub fn start(ca: &TestCa, ca_url: &str, source: &Path) -> Self {
        Self::start_with(ca, ca_url, &format!("dir:{}", source.display()), &[])
    }

    /// [`Controller::start`] with any `--source` and more environment (`KUBECONFIG`).
    pub fn start_with(ca: &TestCa, ca_url: &str, source: &str, env: &[(&str, &str)]) -> Self {
        let token_file = ca.scratch("control.token");
        std::fs::write(
            &token_file,
            ca.token(&ca.id(CONTROLLER_PATH), &["--uses", "10"]),
        )
        .unwrap();
        let args: Vec<String> = [
            "control",
            "--source",
            source,
            "--trust-domain",
            &ca.trust_domain,
            "--ca-url",
            ca_url,
            "--ca-bundle",
            &ca.path("bundle.pem").display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
            "--poll-interval",
            "100ms",
            "--bundle-refresh",
            "1s",
            "--health-listen",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut controller = Self {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            child: None,
            grpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            health: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: ca.scratch("control.log"),
            args,
        };
        controller.restart();
        controller
    }

    /// The running process's id, for /proc.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `https://ADDR`, the sidecars' `discovery.url`.
    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Stops the controller (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same gRPC address and waits until it is ready.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let (child, line) = spawn_announcing(
            airlock()
                .args(&self.args)
                .arg("--listen")
                .arg(self.grpc.to_string())
                // The caller's environment comes last: a benchmark asks for quieter logs.
                .env("AIRLOCK_LOG", "info")
                .envs(self.env.iter().map(|(k, v)| (k, v))),
            log,
        );
        let Some(listening) = line.trim().strip_prefix("airlock control listening: ") else {
            panic!(
                "the controller did not start: {line:?}\n{}",
                self.log_text()
            );
        };
        let words: Vec<&str> = listening.split_whitespace().collect();
        let ["grpc", grpc, "health", health] = words.as_slice() else {
            panic!("odd announcement {listening:?}");
        };
        self.grpc = grpc.parse().unwrap();
        self.health = health.parse().unwrap();
        self.child = Some(child);
        let ready = format!("http://{}/ready", self.health);
        for _ in 0..400 {
            if http("GET", &ready).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the controller never became ready:\n{}", self.log_text());
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text of its `/metrics`.
    pub fn metrics(&self) -> String {
        http("GET", &format!("http://{}/metrics", self.health)).1
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}
