//! Copying bytes both ways between two streams, with an idle timeout that looks at both
//! directions together and a way to cut the tunnel from outside (policy re-checks, drain).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Both sides finished (EOF) or one side failed.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    Idle,
    /// Cut from outside.
    Cancelled,
}

/// Bytes moved and how the relay ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// From `a` to `b`.
    pub forward: u64,
    /// From `b` to `a`.
    pub reverse: u64,
    pub ended: Ended,
    /// How long the relay ran.
    pub elapsed: Duration,
}

/// Bytes read in one go. 64 KiB moves bulk data in a quarter of the wakeups a 16 KiB
/// buffer needs; the HTTP/2 layer cuts it into frames anyway.
const BUFFER: usize = 64 * 1024;

/// Relays until both directions reach EOF, either side fails, nothing moves for `idle`,
/// or `cancel` completes (a policy re-check; outbound tunnels pass one that never does).
pub(crate) async fn relay<A, B>(
    a: A,
    b: B,
    idle: Duration,
    cancel: impl Future<Output = ()>,
) -> Outcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last_activity = Arc::new(AtomicU64::new(0));
    let forward = AtomicU64::new(0);
    let reverse = AtomicU64::new(0);
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let both = async {
        tokio::join!(
            pump(&mut a_read, &mut b_write, &forward, &last_activity, started),
            pump(&mut b_read, &mut a_write, &reverse, &last_activity, started),
        )
    };
    let watchdog = async {
        loop {
            let since_start = started.elapsed();
            let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
            let quiet_for = since_start.saturating_sub(last);
            if quiet_for >= idle {
                return;
            }
            tokio::time::sleep(idle - quiet_for).await;
        }
    };
    let ended = tokio::select! {
        _ = both => Ended::Closed,
        () = watchdog => Ended::Idle,
        _ = cancel => Ended::Cancelled,
    };
    Outcome {
        forward: forward.load(Ordering::Relaxed),
        reverse: reverse.load(Ordering::Relaxed),
        ended,
        elapsed: started.elapsed(),
    }
}

/// One direction: read, write, note the time; on EOF shut the writer down so the other
/// side sees the half-close.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    bytes: &AtomicU64,
    last: &AtomicU64,
    started: Instant,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if writer.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copies_both_ways_and_half_closes() {
        let (client, proxy_a) = tokio::io::duplex(64);
        let (proxy_b, server) = tokio::io::duplex(64);
        let relay = tokio::spawn(relay(
            proxy_a,
            proxy_b,
            Duration::from_secs(5),
            std::future::pending(),
        ));
        let (mut client_r, mut client_w) = tokio::io::split(client);
        let (mut server_r, mut server_w) = tokio::io::split(server);
        client_w.write_all(b"ping").await.unwrap();
        client_w.shutdown().await.unwrap();
        let mut got = Vec::new();
        server_r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        server_w.write_all(b"pong!").await.unwrap();
        server_w.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_r.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        let outcome = relay.await.unwrap();
        assert_eq!(
            (outcome.forward, outcome.reverse, outcome.ended),
            (4, 5, Ended::Closed)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_cancel() {
        let (_client, a) = tokio::io::duplex(64);
        let (b, _server) = tokio::io::duplex(64);
        let outcome = relay(a, b, Duration::from_secs(30), std::future::pending()).await;
        assert_eq!(outcome.ended, Ended::Idle);

        let (_client, a) = tokio::io::duplex(64);
        let (b, _server) = tokio::io::duplex(64);
        let (cut, cancel) = tokio::sync::oneshot::channel::<()>();
        let cancelled = async move {
            let _ = cancel.await;
        };
        let relay = tokio::spawn(relay(a, b, Duration::from_secs(30), cancelled));
        cut.send(()).unwrap();
        assert_eq!(relay.await.unwrap().ended, Ended::Cancelled);
    }
}
