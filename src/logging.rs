//! Process-wide logging and signal handling for the long-running subcommands.

use tracing_subscriber::EnvFilter;

/// JSON lines on stderr; level from `AIRLOCK_LOG` (default `info`).
pub(crate) fn init_json() {
    let filter = EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is called (inside
/// a runtime), not when it is first awaited: from then on neither signal kills the
/// process, so whatever runs meanwhile still gets to clean up.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    }
}
