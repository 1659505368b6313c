//! The one accept loop every sidecar listener uses: a connection cap, backoff on accept
//! errors (e.g. out of file descriptors) instead of spinning, and a stop flag.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::stopped(&mut stop) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Metrics::reason(&metrics.connect_refused, "max_connections");
            continue;
        };
        let task = handle(tcp, peer);
        tokio::spawn(async move {
            let _slot = slot;
            task.await;
        });
    }
}
