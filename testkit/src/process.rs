//! Running things: the real `airlock` binary, the Python checkers, any command; their
//! output; the prerequisites a test needs; waiting for a condition.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The repository root (tests/tools, examples, deploy are found from here).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the repository")
        .to_owned()
}

/// The `airlock` binary that cargo built beside the running test or bench
/// (`target/<profile>/deps/<test>` → `target/<profile>/airlock`).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test runs from target/<profile>/deps");
    let binary = profile_dir.join("airlock");
    assert!(
        binary.exists(),
        "{} is missing: run the tests of the `airlock` package (cargo builds its binary for them)",
        binary.display()
    );
    binary
}

/// The CA key passphrase every test CA uses (`AIRLOCK_CA_PASSPHRASE`); test-only.
pub const PASSPHRASE: &str = "test-passphrase-1";

/// The real binary, with the CA passphrase in its environment.
pub fn airlock() -> Command {
    let mut command = Command::new(binary());
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

/// Runs `command` to completion and captures its output, whatever its exit status;
/// panics only when it cannot be started.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// The captured stdout as text (invalid UTF-8 replaced).
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The captured stderr as text (invalid UTF-8 replaced).
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

/// Whether `present`; if not, one sentence naming `what` is missing and `install`, the
/// command that installs it. With `CI` set the test fails there, so that nothing shows
/// green in CI without having run; otherwise it says SKIPPED and the caller returns.
pub fn prerequisite(test: &str, what: &str, present: bool, install: &str) -> bool {
    if present {
        return true;
    }
    let sentence =
        format!("{test} needs {what}; install it with `{install}` (or run tests/setup.sh)");
    if std::env::var_os("CI").is_some() {
        panic!("{sentence}");
    }
    eprintln!("SKIPPED {sentence}");
    false
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Whether `program` is installed: it can be started (`--version`; what it answers does
/// not matter, as `ip` refuses that flag).
pub fn has_program(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// The Python checkers of tests/tools must be importable; a missing one fails the test
/// with one sentence saying how to install them, instead of an error from inside a script.
fn require_python_checkers() {
    static CHECKED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let output = Command::new("python3")
            .args(["-c", "import grpc, cryptography, jsonpatch, yaml"])
            .output()
            .map_err(|e| format!("python3 ({e})"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "the Python checkers ({})",
                stderr(&output).lines().last().unwrap_or("").trim()
            ))
        }
    });
    if let Err(what) = checked {
        panic!(
            "{what} are missing; install them with `python3 -m pip install -r tests/tools/requirements.txt` (or run tests/setup.sh)"
        );
    }
}

/// A `python3` command for the checker `script` in tests/tools, not yet run; panics with
/// install instructions when the checkers' Python modules are missing.
pub fn python(script: &str) -> Command {
    require_python_checkers();
    let mut command = Command::new("python3");
    command.arg(repo().join("tests/tools").join(script));
    command
}

/// [`wait_up_to`] with a 10 second limit.
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

/// A Python server from tests/tools, killed on drop.
pub struct PythonServer(pub Child);

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `script args…`, a server that prints the port it listens on (127.0.0.1) as
/// its first line.
pub fn python_server(script: &str, args: &[&str]) -> (PythonServer, SocketAddr) {
    let mut child = python(script)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("the server's port");
    (
        PythonServer(child),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}
