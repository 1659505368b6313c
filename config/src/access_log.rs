//! The `access_log` section: where lines go and what is masked in them (the masking
//! itself is the sidecar's).

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Headers whose values are never logged, whatever the configuration says.
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// The `access_log` section of the sidecar config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Where access log lines go; default `stdout`.
    pub sink: SinkKind,
    /// Required when `sink: file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSinkConfig>,
    /// Request headers whose (masked) values each line carries.
    pub headers: Vec<String>,
    /// More header names whose values are secret, on top of [`SECRET_HEADERS`].
    pub mask_headers: Vec<String>,
    /// A query parameter whose key contains one of these words (case-insensitively) is
    /// logged as `key=***`.
    pub mask_query_keys: Vec<String>,
    /// Log every query value as `***`.
    pub mask_all_query_values: bool,
    /// Regular expressions whose matches in logged values are replaced by `[name]`.
    pub redact: Vec<Redaction>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        let words = [
            "token",
            "password",
            "passwd",
            "secret",
            "key",
            "signature",
            "sig",
            "auth",
            "session",
            "code",
            "credential",
        ];
        Self {
            sink: SinkKind::Stdout,
            file: None,
            headers: vec!["user-agent".into()],
            mask_headers: Vec::new(),
            mask_query_keys: words.iter().map(|w| (*w).to_owned()).collect(),
            mask_all_query_values: false,
            redact: vec![
                Redaction::new(
                    "email",
                    r"[A-Za-z0-9._%+-]+(@|%40)[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
                ),
                Redaction::new("card", r"\b(?:\d[ -]?){12,18}\d\b"),
                Redaction::new("bearer", r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+"),
            ],
        }
    }
}

/// The `access_log.sink` key: the destination of access log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One line per record on standard output, for a node-level collector.
    Stdout,
    /// A local file with rotation and retention.
    File,
    /// No access log.
    Off,
}

/// The `access_log.file` section: the log file and its rotation and retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The current log file; rotated files sit next to it. Relative to the config file's
    /// directory.
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes (default 100 MiB).
    #[serde(default = "defaults::max_bytes")]
    pub max_bytes: u64,
    /// Rotate when the file is older than this (default `24h`).
    #[serde(default = "defaults::rotate_after", with = "humantime_serde")]
    pub rotate_after: Duration,
    /// Keep at most this many rotated files (default 7).
    #[serde(default = "defaults::max_files")]
    pub max_files: usize,
    /// Delete rotated files older than this (default `7d`).
    #[serde(default = "defaults::max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

impl FileSinkConfig {
    /// A file at `path`, rotated and retained by the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            max_bytes: defaults::max_bytes(),
            rotate_after: defaults::rotate_after(),
            max_files: defaults::max_files(),
            max_age: defaults::max_age(),
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub(super) fn max_bytes() -> u64 {
        100 * 1024 * 1024
    }
    pub(super) fn rotate_after() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub(super) fn max_files() -> usize {
        7
    }
    pub(super) fn max_age() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
}

/// A named regular expression (validated when the config is read).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redaction {
    /// Label that replaces each match, written as `[name]` (e.g. `[email]`).
    pub name: String,
    /// What to mask; an invalid expression fails the config load.
    #[serde(with = "pattern")]
    pub pattern: Regex,
}

impl Redaction {
    fn new(name: &str, pattern: &str) -> Self {
        Self {
            name: name.into(),
            pattern: Regex::new(pattern).expect("built-in redaction pattern"),
        }
    }
}

mod pattern {
    use regex::Regex;
    use serde::{Deserialize, Deserializer, Serializer, de};
    pub(super) fn serialize<S: Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.as_str())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Regex, D::Error> {
        let text = String::deserialize(d)?;
        Regex::new(&text).map_err(|e| de::Error::custom(format!("invalid pattern {text:?}: {e}")))
    }
}
