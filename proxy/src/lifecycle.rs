//! The sidecar's clock and identity: the SVID and bundle upkeep is `airlock-ca`'s
//! ([`airlock_ca::workload`], shared with the controller); this module names it for the
//! rest of the sidecar and keeps the time helpers of its log lines.

pub(crate) use airlock_ca::workload::{Identity, unix_now};

/// The current time as RFC 3339 (UTC, milliseconds), for log lines.
pub(crate) fn rfc3339_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
