//! The sidecar's use of `airlock_listen::accept_loop`: its stop flag as the stop signal,
//! and connections beyond the cap counted as `connect_refused{reason="max_connections"}`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;

/// Accepts until `stop` turns true. Each connection runs `handle` on its own task while
/// holding one of `max_connections` slots; beyond that, connections are closed at once
/// and counted as `connect_refused{reason="max_connections"}`.
pub(crate) async fn accept_loop<F, Fut>(
    what: &'static str,
    listener: TcpListener,
    max_connections: usize,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    handle: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    airlock_listen::accept_loop(
        what,
        listener,
        Arc::new(Semaphore::new(max_connections)),
        async move { crate::stopped(&mut stop).await },
        |_| Metrics::reason(&metrics.connect_refused, "max_connections"),
        handle,
    )
    .await;
}
