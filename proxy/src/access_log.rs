//! The access log: one JSON line per HTTP request and per TCP tunnel, masked before it
//! leaves the process.
//!
//! Masking, in order, for every value that is logged:
//! - the values of secret headers (Authorization, Proxy-Authorization, Cookie,
//!   Set-Cookie, X-Api-Key and any configured name) are never logged: they show as `***`,
//!   and no setting turns that off;
//! - query parameter values are replaced by `***` when their key holds one of the
//!   configured words (`token`, `password`, `secret`, ...), or all of them on request;
//! - configured regular expressions (e-mail addresses, card numbers, bearer tokens by
//!   default) replace what they match with `[<name>]`, in paths and header values alike.
//!
//! Lines go through a bounded queue to one writer thread, so a slow disk never blocks a
//! request; when the queue is full the line is dropped and counted.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use airlock_policy::{Decision, Reason};
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use airlock_config::{AccessLogConfig, FileSinkConfig, Redaction, SECRET_HEADERS, SinkKind};

use crate::metrics::Disposition;

const MASK: &str = "***";

/// Masks values as the configuration says (pure, so it is table-tested).
#[derive(Debug, Clone)]
pub(crate) struct Masker {
    secret_headers: Vec<String>,
    query_keys: Vec<String>,
    all_query_values: bool,
    redactions: Vec<Redaction>,
}

impl Masker {
    pub(crate) fn new(config: &AccessLogConfig) -> Self {
        let secret_headers = SECRET_HEADERS
            .iter()
            .map(|h| (*h).to_owned())
            .chain(config.mask_headers.iter().map(|h| h.to_ascii_lowercase()))
            .collect();
        Self {
            secret_headers,
            query_keys: config
                .mask_query_keys
                .iter()
                .map(|k| k.to_ascii_lowercase())
                .collect(),
            all_query_values: config.mask_all_query_values,
            redactions: config.redact.clone(),
        }
    }

    /// A header value as it may be logged.
    pub(crate) fn header(&self, name: &str, value: &str) -> String {
        if self
            .secret_headers
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
        {
            MASK.to_owned()
        } else {
            self.redact(value)
        }
    }

    /// A path and optional query as they may be logged.
    pub(crate) fn target(&self, path: &str, query: Option<&str>) -> String {
        let mut out = self.redact(path);
        if let Some(query) = query {
            out.push('?');
            out.push_str(&self.redact(&self.query(query)));
        }
        out
    }

    /// Parameters are separated by `&` or `;` (some frameworks take both).
    fn query(&self, query: &str) -> String {
        query
            .split_inclusive(['&', ';'])
            .map(|item| {
                let (pair, separator) = match item.strip_suffix(['&', ';']) {
                    Some(pair) => (pair, &item[pair.len()..]),
                    None => (item, ""),
                };
                match pair.split_once('=') {
                    Some((key, _)) if self.secret_key(key) => format!("{key}={MASK}{separator}"),
                    _ => item.to_owned(),
                }
            })
            .collect()
    }

    fn secret_key(&self, key: &str) -> bool {
        if self.all_query_values {
            return true;
        }
        // Keys are compared decoded: `pass%77ord` is `password`.
        let decoded = percent_decode(key).to_ascii_lowercase();
        self.query_keys.iter().any(|word| decoded.contains(word))
    }

    fn redact(&self, value: &str) -> String {
        let mut out = value.to_owned();
        for redaction in &self.redactions {
            let replacement = format!("[{}]", redaction.name);
            if let std::borrow::Cow::Owned(replaced) = redaction
                .pattern
                .replace_all(&out, regex::NoExpand(&replacement))
            {
                out = replaced;
            }
        }
        out
    }
}

/// `%XX` escapes decoded, and `+` read as a space, as in a query string (lossy UTF-8).
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One access log line. Fields that do not apply are left out.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// `http` or `tcp`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_addr: Option<String>,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Normalized and masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Bytes from the caller towards the callee (request bodies, for HTTP).
    pub bytes_in: u64,
    /// Bytes back to the caller (response bodies, for HTTP).
    pub bytes_out: u64,
    pub duration_ms: f64,
    /// `allow`, `deny` or `rejected` (refused before authorization: bad shape, limits).
    pub decision: Disposition,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The deciding rule's 0-based index in `policy`'s rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<DryRunRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Routed requests: the endpoints tried, in order (the last one answered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Routed requests: attempts sent, retries included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl Record {
    /// Writes down what policy decided and why.
    pub(crate) fn note_decision(&mut self, decision: &Decision) {
        self.decision = Disposition::of(decision.allowed);
        self.policy = decision.reason.policy().map(ToString::to_string);
        self.rule = match decision.reason {
            Reason::Rule { rule, .. } => Some(rule),
            _ => None,
        };
        self.reason = Some(decision.reason.to_string());
        self.dry_run = decision
            .dry_run
            .iter()
            .map(|d| DryRunRecord {
                policy: d.policy.to_string(),
                would_allow: d.would_allow,
                rule: d.rule,
            })
            .collect();
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct DryRunRecord {
    pub policy: String,
    pub would_allow: bool,
    /// The dry-run policy's matching rule; absent when none of an ALLOW policy's did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
}

/// Why the access log could not start (the sink named in the configuration).
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// `sink: file` without a `file` section saying where.
    #[error("access_log.file is required when access_log.sink is file")]
    NoFile,
    /// The log file could not be opened, or its old rotations pruned.
    #[error("access_log.file.path: {0}")]
    Open(#[source] io::Error),
}

/// The process's access log: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct AccessLog {
    lines: Option<SyncSender<String>>,
    pub masker: std::sync::Arc<Masker>,
    pub headers: std::sync::Arc<Vec<String>>,
    dropped: Counter,
}

/// Lines waiting for the writer; beyond this they are dropped and counted.
const QUEUE: usize = 8192;

impl AccessLog {
    /// Starts the writer thread (the file is opened, and old files pruned, first, so a bad
    /// path fails the start with its name).
    pub(crate) fn start(
        config: &AccessLogConfig,
        dropped: Counter,
    ) -> Result<Self, AccessLogError> {
        let lines = match config.sink {
            SinkKind::Off => None,
            SinkKind::Stdout => Some(spawn_writer(Box::new(io::stdout()))),
            SinkKind::File => {
                let file_config = config.file.clone().ok_or(AccessLogError::NoFile)?;
                let file = RotatingFile::open(file_config).map_err(AccessLogError::Open)?;
                Some(spawn_writer(Box::new(file)))
            }
        };
        Ok(Self {
            lines,
            masker: std::sync::Arc::new(Masker::new(config)),
            headers: std::sync::Arc::new(
                config
                    .headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            ),
            dropped,
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.lines.is_some()
    }

    pub(crate) fn write(&self, record: &Record) {
        let Some(lines) = &self.lines else { return };
        let Ok(mut line) = serde_json::to_string(record) else {
            return;
        };
        // One write per line, newline included, so rotation never splits a line.
        line.push('\n');
        match lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

fn spawn_writer(mut out: Box<dyn Write + Send>) -> SyncSender<String> {
    let (send, receive) = sync_channel::<String>(QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            // Write whatever is queued, then flush: batches under load, prompt when idle.
            while let Ok(first) = receive.recv() {
                let written = std::iter::once(first)
                    .chain(receive.try_iter())
                    .try_for_each(|line| out.write_all(line.as_bytes()))
                    .and_then(|()| out.flush());
                if let Err(e) = written {
                    tracing::warn!(error = %e, "access log write failed");
                }
            }
        })
        .expect("spawning the access log thread");
    send
}

/// A log file that rotates by size and age and prunes old rotations.
struct RotatingFile {
    config: FileSinkConfig,
    file: File,
    written: u64,
    opened: SystemTime,
}

impl RotatingFile {
    fn open(config: FileSinkConfig) -> io::Result<Self> {
        let file = open_log(&config.path)?;
        let written = file.metadata()?.len();
        let opened = SystemTime::now();
        let rotating = Self {
            config,
            file,
            written,
            opened,
        };
        rotating.prune()?;
        Ok(rotating)
    }

    /// Renames the live file and opens a fresh one. Whatever happens to the rename (the
    /// file may have been moved away by hand), a fresh file is opened and the counters
    /// reset, so one failure cannot turn every later line into another failed rotation.
    fn rotate(&mut self) -> io::Result<()> {
        let _ = self.file.flush();
        let renamed = self.rename_live();
        self.file = open_log(&self.config.path)?;
        self.written = self.file.metadata()?.len();
        self.opened = SystemTime::now();
        match renamed {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => self.prune(),
        }
    }

    fn rename_live(&self) -> io::Result<()> {
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second].[subsecond digits:6]Z"
            ))
            .map_err(io::Error::other)?;
        let rotated = PathBuf::from(format!("{}.{stamp}", self.config.path.display()));
        std::fs::rename(&self.config.path, rotated)
    }

    /// Deletes rotated files past the retention age, then the oldest beyond `max_files`.
    fn prune(&self) -> io::Result<()> {
        let path = &self.config.path;
        let directory = path.parent().filter(|p| !p.as_os_str().is_empty());
        let directory = directory.unwrap_or(Path::new("."));
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return Ok(());
        };
        let prefix = format!("{name}.");
        let mut rotated: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(directory)?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_prefix(&prefix))
                    .is_some_and(is_rotation_stamp)
                    && e.file_type().is_ok_and(|t| t.is_file())
            })
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        rotated.sort();
        let now = SystemTime::now();
        let keep_from = rotated.len().saturating_sub(self.config.max_files);
        for (index, (modified, file)) in rotated.iter().enumerate() {
            let too_old = now
                .duration_since(*modified)
                .is_ok_and(|age| age > self.config.max_age);
            if index < keep_from || too_old {
                std::fs::remove_file(file)?;
            }
        }
        Ok(())
    }
}

/// `20261129T021139.123456Z`: the suffix [`RotatingFile::rotate`] writes. Nothing else
/// in the directory is ever pruned.
fn is_rotation_stamp(suffix: &str) -> bool {
    let bytes = suffix.as_bytes();
    bytes.len() == 23
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 => b == b'T',
            15 => b == b'.',
            22 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

fn open_log(path: &Path) -> io::Result<File> {
    // Never through a symlink: someone who can write the directory must not get the
    // sidecar to append to (and chmod) another file.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // The umask may have narrowed the mode; an existing file may be wider: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    Ok(file)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let too_big = self.written > 0 && self.written + buf.len() as u64 > self.config.max_bytes;
        let too_old = self
            .opened
            .elapsed()
            .is_ok_and(|age| age >= self.config.rotate_after);
        if too_big || too_old {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn masker() -> Masker {
        Masker::new(&AccessLogConfig {
            mask_headers: vec!["X-Internal-Token".into()],
            ..AccessLogConfig::default()
        })
    }

    #[test]
    fn secret_headers_are_never_logged() {
        let m = masker();
        for (name, value) in [
            ("Authorization", "Bearer s3cr3t"),
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("Proxy-Authorization", "x"),
            ("Cookie", "session=abc"),
            ("SET-COOKIE", "id=1"),
            ("x-api-key", "k"),
            ("x-internal-token", "t"),
        ] {
            assert_eq!(m.header(name, value), "***", "{name}");
        }
        assert_eq!(m.header("user-agent", "curl/8.0"), "curl/8.0");
    }

    #[test]
    fn configuration_cannot_unmask_the_default_secret_headers() {
        let m = Masker::new(&AccessLogConfig {
            mask_headers: Vec::new(),
            redact: Vec::new(),
            ..AccessLogConfig::default()
        });
        assert_eq!(m.header("Cookie", "a=b"), "***");
    }

    #[test]
    fn query_values_and_patterns_are_masked() {
        let m = masker();
        let cases = [
            ("/a", None, "/a"),
            ("/a", Some("page=2&token=abc"), "/a?page=2&token=***"),
            ("/a", Some("access_token=abc&x"), "/a?access_token=***&x"),
            ("/a", Some("API_KEY=1"), "/a?API_KEY=***"),
            ("/a", Some("pass%77ord=hunter2"), "/a?pass%77ord=***"),
            ("/a", Some("a=1;token=abc&b=2"), "/a?a=1;token=***&b=2"),
            ("/users/jane.doe@example.com", None, "/users/[email]"),
            ("/users/jane.doe%40example.com", None, "/users/[email]"),
            ("/pay", Some("card=4111 1111 1111 1111"), "/pay?card=[card]"),
            ("/x", Some("q=Bearer abc.def"), "/x?q=[bearer]"),
        ];
        for (path, query, expected) in cases {
            assert_eq!(m.target(path, query), expected, "{path} {query:?}");
        }
        assert_eq!(
            m.header("x-note", "mail me at a@b.io"),
            "mail me at [email]"
        );
    }

    #[test]
    fn rotation_keeps_max_files_and_deletes_files_past_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let old = dir.path().join("access.log.20200101T000000.000000Z");
        std::fs::write(&old, "old\n").unwrap();
        let month_ago = SystemTime::now() - Duration::from_secs(30 * 24 * 3600);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(month_ago)
            .unwrap();
        let unrelated = dir.path().join("other.log");
        std::fs::write(&unrelated, "keep\n").unwrap();
        let archive = dir.path().join("access.log.1.gz");
        std::fs::write(&archive, "keep\n").unwrap();
        std::fs::create_dir(dir.path().join("access.log.d")).unwrap();
        let mut file = RotatingFile::open(FileSinkConfig {
            path: path.clone(),
            max_bytes: 100,
            rotate_after: Duration::from_secs(3600),
            max_files: 2,
            max_age: Duration::from_secs(24 * 3600),
        })
        .unwrap();
        assert!(!old.exists(), "past max_age: deleted at open");
        for i in 0..20 {
            file.write_all(format!("{i:040}\n").as_bytes()).unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let rotated = names
            .iter()
            .filter_map(|n| n.strip_prefix("access.log."))
            .filter(|suffix| is_rotation_stamp(suffix))
            .count();
        assert_eq!(rotated, 2, "{names:?}");
        assert!(unrelated.exists() && archive.exists() && path.exists());
        let lines = std::fs::read_to_string(&path).unwrap();
        assert!(
            lines.ends_with('\n') && !lines.starts_with('\n'),
            "{lines:?}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn all_query_values_can_be_masked() {
        let m = Masker::new(&AccessLogConfig {
            mask_all_query_values: true,
            ..AccessLogConfig::default()
        });
        assert_eq!(m.target("/s", Some("q=shoes&page=2")), "/s?q=***&page=***");
    }
}
