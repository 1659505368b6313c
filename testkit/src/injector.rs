//! `airlock injector` for a test: its serving certificate from deploy/webhook-cert.sh,
//! and curl verifying that certificate against the Service's DNS name.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ca::curl_verified;
use crate::process::{airlock, ok, repo, run, spawn_announcing, stdout};

/// The webhook Service's DNS name, which its certificate names.
pub const WEBHOOK_HOST: &str = "airlock-injector.airlock-system.svc";

/// `airlock injector` with a certificate from deploy/webhook-cert.sh.
pub struct Injector {
    /// The process (tests signal it).
    pub child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The directory of `ca.crt`, `tls.crt` and `tls.key`.
    pub certs: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
}

impl Injector {
    /// Makes a certificate in `dir/certs` and starts the injector with it.
    pub fn start(dir: &Path) -> Self {
        let certs = dir.join("certs");
        ok(Command::new(repo().join("deploy/webhook-cert.sh")).arg(&certs));
        let log = dir.join("injector.log");
        let (child, line) = spawn_announcing(
            airlock()
                .args(["injector", "--listen", "127.0.0.1:0", "--cert"])
                .arg(certs.join("tls.crt"))
                .arg("--key")
                .arg(certs.join("tls.key")),
            std::fs::File::create(&log).unwrap(),
        );
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self {
            child,
            port,
            certs,
            log,
        }
    }

    /// curl, verifying the webhook's certificate against ca.crt and its Service DNS name.
    pub fn curl(&self, path: &str, args: &[&str]) -> (u16, String) {
        let resolve = format!("{WEBHOOK_HOST}:{}:127.0.0.1", self.port);
        let mut all = vec!["--resolve", &resolve];
        all.extend_from_slice(args);
        let url = format!("https://{WEBHOOK_HOST}:{}{path}", self.port);
        let reply = curl_verified(&self.certs.join("ca.crt"), &all, &url);
        (reply.status, reply.body)
    }

    /// `serial=…` of the certificate the webhook presents now, as openssl sees it.
    pub fn served_serial(&self) -> String {
        let script = format!(
            "openssl s_client -connect 127.0.0.1:{} -servername {WEBHOOK_HOST} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            self.port
        );
        stdout(&run(Command::new("bash").args(["-c", &script])))
            .trim()
            .to_owned()
    }

    /// POSTs the AdmissionReview in `body_file` to `/inject`: (status, answer).
    pub fn review(&self, body_file: &Path) -> (u16, serde_json::Value) {
        self.review_at("/inject", body_file)
    }

    /// POSTs the AdmissionReview in `body_file` to `path`: (status, answer).
    pub fn review_at(&self, path: &str, body_file: &Path) -> (u16, serde_json::Value) {
        let data = format!("@{}", body_file.display());
        let (status, body) = self.curl(
            path,
            &[
                "-H",
                "content-type: application/json",
                "--data-binary",
                &data,
            ],
        );
        let answer = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        (status, answer)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
