//! Hot reload by polling: one loop for every source the sidecar follows (policy files,
//! `registry_file`). A valid change is swapped in; an invalid one is refused, counted,
//! and logged once per distinct error, while what was last valid stays live.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

/// What one look at a source found.
pub(crate) enum Attempt {
    /// Nothing changed since the last swap.
    Unchanged,
    /// A valid change is live now; the text says how big it is, for the log.
    Swapped(String),
    /// The change is invalid (the message says why); the previous state stays live.
    Refused(String),
}

/// The counters of one source's reloads.
pub(crate) struct Counters {
    pub(crate) swaps: Counter,
    pub(crate) refusals: Counter,
}

/// Looks at `source` (called `what` in logs) every `interval`, forever, off the async
/// workers (it reads and parses files).
pub(crate) async fn poll<F>(what: &'static str, interval: Duration, counters: Counters, source: F)
where
    F: FnMut() -> Attempt + Send + 'static,
{
    let mut source = Some(source);
    let mut last_refusal = String::new();
    loop {
        tokio::time::sleep(interval).await;
        let Some(mut look) = source.take() else {
            return;
        };
        let Ok((look, attempt)) = tokio::task::spawn_blocking(move || {
            let attempt = look();
            (look, attempt)
        })
        .await
        else {
            // The look panicked: there is nothing left to poll with.
            tracing::error!(source = what, "reload stopped: the reader panicked");
            return;
        };
        source = Some(look);
        match attempt {
            Attempt::Unchanged => {}
            Attempt::Swapped(size) => {
                counters.swaps.inc();
                last_refusal.clear();
                tracing::info!(source = what, %size, "{what} reloaded");
            }
            Attempt::Refused(message) => {
                counters.refusals.inc();
                if message != last_refusal {
                    tracing::error!(source = what, error = %message, "{what} reload refused; keeping the previous {what}");
                    last_refusal = message;
                }
            }
        }
    }
}
