//! Changing the log filter of a running sidecar (`GET`/`POST /logging`): the logging
//! library is the binary's, so the binary hands the sidecar these two functions.

/// Changes the log filter; the error says why a filter was refused.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), LogLevelError> + Send + Sync>;

/// Why `POST /logging` did not change the log level (the body of its 400).
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    /// The sidecar runs without a [`LogControl`] (as the demo's do).
    #[error("log level control is not available")]
    Unavailable,
    /// `level` is no log filter the logging library accepts.
    #[error("invalid level {level:?}: {source}")]
    Invalid {
        /// The filter as the caller sent it (the `level=` query parameter).
        level: String,
        /// The logging library's reason for refusing it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The filter is valid, but the logging library did not switch to it.
    #[error("{0}")]
    Reload(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads and changes the log level at run time (`/logging`).
pub struct LogControl {
    /// The log filter in effect, as `GET /logging` shows it.
    pub get: Box<dyn Fn() -> String + Send + Sync>,
    /// Switches to a new filter for `POST /logging?level=...`; nothing changes when it
    /// errs.
    pub set: SetLogLevel,
}
