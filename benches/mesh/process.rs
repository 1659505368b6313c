//! The proxies the harness started, and what they cost: CPU seconds and resident memory
//! from /proc, summed over each process tree.

use std::path::Path;
use std::process::{Child, Command};

use airlock_testkit::Sidecar;

/// A process the harness started; killed on drop.
pub(crate) struct Process {
    child: Child,
}

impl Drop for Process {
    /// Kills the whole tree: nginx's workers outlive a killed master.
    fn drop(&mut self) {
        let descendants: Vec<String> = self.pids()[1..].iter().map(u32::to_string).collect();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !descendants.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&descendants)
                .status();
        }
    }
}

impl Process {
    /// Starts `command` with stdout and stderr to `log`.
    pub(crate) fn spawn(command: &mut Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self { child }
    }

    /// Takes over a test sidecar's process.
    pub(crate) fn adopt(mut sidecar: Sidecar) -> Self {
        // Swap a harmless child in, so the sidecar's own Drop kills nothing we still need.
        let placeholder = Command::new("true").spawn().unwrap();
        let child = std::mem::replace(&mut sidecar.child, placeholder);
        Self { child }
    }

    /// This process and its descendants (nginx workers), for CPU and memory.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        let mut i = 0;
        while i < pids.len() {
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i]))
                .unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
            i += 1;
        }
        pids
    }

    pub(crate) fn cpu_seconds(&self) -> f64 {
        self.pids().iter().map(|pid| cpu_seconds(*pid)).sum()
    }

    /// Current and peak resident memory (KiB), summed over the process tree.
    pub(crate) fn memory_kib(&self) -> (u64, u64) {
        self.pids().iter().fold((0, 0), |(rss, peak), pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let field = |name: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0)
            };
            (rss + field("VmRSS:"), peak + field("VmHWM:"))
        })
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0 // USER_HZ is 100 on Linux
}
