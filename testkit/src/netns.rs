//! Network namespaces a test builds itself (root only).

use std::process::{Command, Output};

use crate::process::{has_program, is_root, prerequisite, stderr};

/// A network namespace the test created, with loopback up; deleted when dropped, also
/// when the test fails.
pub struct Namespace(pub String);

impl Namespace {
    /// `None`, after saying why, where root, `ip` or `iptables` is missing: the test is
    /// skipped there, or fails when `CI` is set ([`prerequisite`]).
    pub fn create(name: &str, test: &str) -> Option<Self> {
        let ready = prerequisite(
            test,
            "root (network namespaces)",
            is_root(),
            "sudo cargo test",
        ) && prerequisite(test, "`ip`", has_program("ip"), "apt-get install iproute2")
            && prerequisite(
                test,
                "`iptables`",
                has_program("iptables"),
                "apt-get install iptables",
            );
        if !ready {
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
