//! The accept loop every airlock listener uses: the sidecar's listeners, `airlock ca
//! serve` and the injector's webhook.
//!
//! Each listener needs the same things done right: a connection cap, so that a flood of
//! connections cannot exhaust memory or file descriptors; a short backoff when `accept`
//! fails (typically `EMFILE` when the process is out of file descriptors), because
//! retrying at once would spin a core while nothing can be accepted anyway; and a stop
//! signal that ends the loop without cutting the connections already running. Written
//! once here, each listener only says what a connection does ([`accept_loop`]'s
//! `handle`) and what a refusal costs (`refused`: a metric, a log line).
//!
//! The TLS listeners with no metrics of their own (the CA and the webhook) also share
//! [`tls_handshake`]: the handshake bounded by a timeout, each failure logged once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long the loop waits after a failed `accept` before trying again: long enough not to
/// spin while out of file descriptors, short enough that a freed descriptor is used soon.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `stop` completes, then drops the listener, so
/// that new connections are refused by the kernel from then on.
///
/// Each accepted connection takes one permit of `slots` and runs `handle`'s future on its
/// own task, holding the permit until that future ends. When no permit is free the
/// connection is closed at once, after `refused` is told its peer (to count or log it):
/// beyond the cap, callers get a fast close rather than a queue.
///
/// The loop never waits for the connections it started: they outlive it. A caller that
/// drains (lets open connections finish after stop) keeps a clone of `slots` and acquires
/// all its permits once this returns.
///
/// `what` names the listener in the warning logged when `accept` fails.
pub async fn accept_loop<H, Fut>(
    what: &'static str,
    listener: TcpListener,
    slots: Arc<Semaphore>,
    stop: impl Future<Output = ()>,
    refused: impl Fn(SocketAddr),
    mut handle: H,
) where
    H: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(peer);
            drop(tcp);
            continue;
        };
        let task = handle(tcp, peer);
        tokio::spawn(async move {
            let _slot = slot;
            task.await;
        });
    }
}

/// Runs the server side of the TLS handshake on `tcp`, giving up after `timeout`.
///
/// Garbage, plaintext and silent clients are common on a listening port (scanners, probes
/// speaking the wrong protocol), so a failure is logged once at info level with the peer,
/// "TLS handshake refused" or "TLS handshake timed out", and the caller just drops the
/// connection on `None`. The timeout bounds how long such a client holds a connection
/// slot.
pub async fn tls_handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{oneshot, watch};
    use tokio::task::JoinHandle;
    use tokio_rustls::rustls;

    use super::*;

    /// Long enough for anything on loopback; a hung test fails instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// A loop on a fresh loopback port whose handler writes one byte to the client, then
    /// holds the connection (and its slot) until `release` turns true.
    struct Running {
        addr: SocketAddr,
        slots: Arc<Semaphore>,
        refused: Arc<Mutex<Vec<SocketAddr>>>,
        release: watch::Sender<bool>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    }

    async fn start(max: usize) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slots = Arc::new(Semaphore::new(max));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let slots = slots.clone();
            let refused = refused.clone();
            accept_loop(
                "test",
                listener,
                slots,
                async move {
                    let _ = stopped.await;
                },
                move |peer| refused.lock().unwrap().push(peer),
                move |mut tcp, _| {
                    let mut released = released.clone();
                    async move {
                        let _ = tcp.write_all(b"1").await;
                        let _ = released.wait_for(|released| *released).await;
                    }
                },
            )
        });
        Running {
            addr,
            slots,
            refused,
            release,
            stop: Some(stop),
            task,
        }
    }

    /// Connects and reads the handler's byte: the connection got a slot.
    async fn served(addr: SocketAddr) -> TcpStream {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, tcp.read_exact(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(1))), "not served: {read:?}");
        tcp
    }

    /// Connects and expects the loop to close the connection without serving it.
    async fn closed_at_once(addr: SocketAddr) -> SocketAddr {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("the refused connection was left open");
        // A clean close reads end of file; a close with unread data may reset instead.
        assert!(matches!(read, Ok(0) | Err(_)), "served anyway: {read:?}");
        tcp.local_addr().unwrap()
    }

    async fn wait_for_free_slots(slots: &Semaphore, free: usize) {
        let start = Instant::now();
        while slots.available_permits() < free {
            assert!(start.elapsed() < PATIENCE, "slots never came back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_cap_closes_connections_beyond_it_and_accepting_goes_on() {
        let running = start(2).await;
        let _first = served(running.addr).await;
        let _second = served(running.addr).await;

        let beyond = closed_at_once(running.addr).await;
        assert_eq!(*running.refused.lock().unwrap(), vec![beyond]);

        // Freed slots are taken again: the loop kept accepting after the refusal.
        running.release.send_replace(true);
        wait_for_free_slots(&running.slots, 2).await;
        let _third = served(running.addr).await;
        let _fourth = served(running.addr).await;
        assert_eq!(running.refused.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn stop_ends_the_loop_and_running_connections_keep_their_slots() {
        let mut running = start(4).await;
        let mut open = served(running.addr).await;

        running.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(PATIENCE, running.task)
            .await
            .expect("the loop did not stop")
            .unwrap();

        // The listener is gone with the loop...
        assert!(TcpStream::connect(running.addr).await.is_err());
        // ...but the connection it started is still served, holding its slot, so a caller
        // that drains waits for it.
        assert_eq!(running.slots.available_permits(), 3);
        let drained = running.slots.clone();
        let drain = tokio::spawn(async move {
            let _all = drained.acquire_many(4).await.unwrap();
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!drain.is_finished(), "drained while a connection was open");
        open.write_all(b"still here").await.unwrap();
        running.release.send_replace(true);
        tokio::time::timeout(PATIENCE, drain)
            .await
            .expect("the drain never finished")
            .unwrap();
    }

    /// No certificate at all: these tests never get as far as needing one.
    #[derive(Debug)]
    struct NoCertificate;

    impl rustls::server::ResolvesServerCert for NoCertificate {
        fn resolve(
            &self,
            _hello: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }
    }

    fn acceptor() -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate));
        TlsAcceptor::from(Arc::new(config))
    }

    /// The server side of one fresh loopback connection, and its client side.
    async fn pair() -> (TcpStream, SocketAddr, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        (server, peer, client)
    }

    #[tokio::test]
    async fn a_plaintext_client_is_refused_at_once() {
        let (server, peer, mut client) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let tls = tls_handshake(&acceptor(), server, PATIENCE, peer).await;
        assert!(tls.is_none());
        assert!(
            started.elapsed() < PATIENCE / 2,
            "refused only at the deadline"
        );
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_at_the_deadline() {
        let (server, peer, _client) = pair().await;
        let started = Instant::now();
        let deadline = Duration::from_millis(100);
        let tls = tls_handshake(&acceptor(), server, deadline, peer).await;
        assert!(tls.is_none());
        let waited = started.elapsed();
        assert!(waited >= deadline && waited < PATIENCE, "waited {waited:?}");
    }
}
