//! Protocol detection for `auto` ports: is the client speaking HTTP/1, HTTP/2, or
//! something else? Decided from the client's first bytes only, within a short timeout, so
//! that a server-first protocol (the client sends nothing until the server greets it)
//! falls back to TCP instead of stalling.
//!
//! Whatever looks like HTTP to any server is served as HTTP: leading empty lines are
//! skipped (servers do), request lines are read as leniently as nginx and Python read them
//! (repeated spaces, tabs, any version), and a line cut by the size cap or by the timeout
//! counts as HTTP (hyper then refuses what it does not serve), so a caller cannot steer an
//! HTTP request past per-request authorization by shaping its first bytes. Only silence
//! and bytes that are not HTTP are TCP. A wrong guess cannot widen access: as TCP, ALLOW
//! rules with HTTP conditions never match, and as HTTP a non-HTTP stream gets 400.
//!
//! Silence is not the end of it: a caller could wait out the timeout to get a raw relay
//! and then send HTTP with its own identity header. So after a silent fallback the
//! caller's first bytes are still classified before any reach the app ([`watch_first_bytes`]):
//! HTTP while the app has said nothing is served as HTTP after all, and HTTP after the
//! app greeted (no server-first protocol looks like that) is refused.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The longest request line detection reads before deciding; a longer one is not HTTP we
/// would serve anyway (the URI limit is lower).
pub const MAX_REQUEST_LINE: usize = 16 * 1024;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A request line as some server would read one (also: one cut by the size cap or
    /// the timeout): serve as HTTP/1.x.
    Http1,
    /// The whole HTTP/2 connection preface, or a beginning of it the client stopped
    /// after: serve as HTTP/2 with prior knowledge.
    Http2,
    /// Anything else: relay as TCP.
    Opaque,
    /// Consistent with HTTP so far; read more.
    NeedMore,
}

/// Classifies a stream prefix. Once it answers anything but `NeedMore`, every longer
/// prefix of the same stream gets the same answer.
pub fn classify(prefix: &[u8]) -> Detected {
    if prefix.is_empty() {
        return Detected::NeedMore;
    }
    let shared = prefix.len().min(H2_PREFACE.len());
    if prefix[..shared] == H2_PREFACE[..shared] {
        return if prefix.len() >= H2_PREFACE.len() {
            Detected::Http2
        } else {
            Detected::NeedMore
        };
    }
    classify_request_line(prefix)
}

/// A request line as the most lenient server reads one: after any empty lines (RFC 9112
/// §2.2 lets servers skip them), a line of at least three words separated by spaces or
/// tabs (leading ones too, as Python's `http.server` allows) whose last word starts with
/// `HTTP/` in any case, ended by LF or CRLF. nginx takes repeated and trailing spaces,
/// Python tabs and `HTTP/1.10`: every spelling some server routes must be HTTP here, or
/// it would reach the app as raw TCP with headers nobody screened. What is not quite
/// HTTP/1.1 is then hyper's to refuse (400), failing closed. A control byte other than
/// tab, or a CR not followed by LF, is no request line (binary protocols decide on their
/// first byte).
fn classify_request_line(prefix: &[u8]) -> Detected {
    let capped = &prefix[..prefix.len().min(MAX_REQUEST_LINE)];
    let blank = capped
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(capped.len());
    let line = &capped[blank..];
    for (index, &byte) in line.iter().enumerate() {
        match byte {
            b'\n' => return request_line_verdict(&line[..index]),
            b'\r' => match line.get(index + 1) {
                Some(b'\n') => return request_line_verdict(&line[..index]),
                Some(_) => return Detected::Opaque,
                None => return more_unless_full(capped),
            },
            b'\t' => {}
            control if control < 0x20 || control == 0x7f => return Detected::Opaque,
            _ => {}
        }
    }
    more_unless_full(capped)
}

/// Consistent with HTTP so far: read more, or, at the cap, call it HTTP.
fn more_unless_full(capped: &[u8]) -> Detected {
    if capped.len() >= MAX_REQUEST_LINE {
        Detected::Http1
    } else {
        Detected::NeedMore
    }
}

/// A whole first line (without its line end): HTTP when it has three or more words and
/// the last one names an HTTP version.
fn request_line_verdict(line: &[u8]) -> Detected {
    let words: Vec<&[u8]> = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|word| !word.is_empty())
        .collect();
    let names_version = words
        .last()
        .is_some_and(|word| word.len() >= 5 && word[..5].eq_ignore_ascii_case(b"HTTP/"));
    if words.len() >= 3 && names_version {
        Detected::Http1
    } else {
        Detected::Opaque
    }
}

/// Reads the client's first bytes until [`classify`] decides, `timeout` passes, or the
/// client closes. Bytes that were still consistent with HTTP at that point count as HTTP;
/// silence is TCP. Returns the decision, whether the timeout ended it, and the stream with
/// the bytes read put back in front.
pub async fn detect<T: AsyncRead + Unpin>(
    mut io: T,
    timeout: Duration,
) -> (Detected, bool, Prefixed<T>) {
    let mut buffer = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut timed_out = false;
    let detected = loop {
        match classify(&buffer) {
            Detected::NeedMore => {}
            decided => break decided,
        }
        let mut chunk = [0u8; 2048];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break unfinished(&buffer),
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Err(_) => {
                timed_out = true;
                break unfinished(&buffer);
            }
        }
    };
    (detected, timed_out, Prefixed::new(buffer, io))
}

/// What a silent caller's first bytes turned out to be.
pub enum FirstBytes<T> {
    /// Not HTTP: relay it, with the bytes read put back, after `greeted` bytes the app
    /// has already sent the caller.
    Opaque {
        /// The caller's stream, its bytes read so far in front.
        io: Prefixed<T>,
        /// Bytes of the app's greeting already relayed to the caller (0 when the app
        /// said nothing), for the tunnel's byte counts.
        greeted: u64,
    },
    /// HTTP, and the app has said nothing: serve it as HTTP.
    Http(Prefixed<T>),
    /// HTTP after the app spoke: refuse it.
    HttpAfterGreeting,
    /// The caller closed or idled out before saying anything decisive.
    Gone,
}

/// After a silent fallback: relays what the app says to the caller (a server-first
/// greeting) while it reads the caller's first bytes until [`classify`] decides. Nothing
/// the caller sends reaches the app before that. Each wait, the greeting's delivery
/// included, is bounded by `idle`, and `cancelled` (a policy change, drain) ends it.
///
/// Once the app has greeted, HTTP is refused anyway, and the caller's reply to a
/// server-first app may be text that never ends a line: it gets `patience` from its first
/// byte to name an HTTP version (`HTTP/`), and is relayed as it is if it has not.
pub async fn watch_first_bytes<C, A>(
    mut client: C,
    app: &mut A,
    idle: Duration,
    patience: Duration,
    cancelled: &mut tokio::sync::oneshot::Receiver<()>,
) -> FirstBytes<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + Unpin,
{
    let mut buffer = Vec::new();
    let mut greeted = 0u64;
    let mut chunk = [0u8; 2048];
    let mut greeting = [0u8; 4096];
    let mut first_byte_at = None;
    loop {
        let decided = classify(&buffer);
        if decided != Detected::NeedMore {
            return first_bytes(decided, buffer, client, greeted);
        }
        if first_byte_at.is_none() && !buffer.is_empty() {
            first_byte_at = Some(tokio::time::Instant::now());
        }
        let deadline = first_byte_at
            .filter(|_| greeted > 0)
            .map(|at| at + patience);
        tokio::select! {
            () = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                let names_version = buffer
                    .windows(5)
                    .any(|w| w.eq_ignore_ascii_case(b"HTTP/"));
                let verdict = if names_version { Detected::Http1 } else { Detected::Opaque };
                return first_bytes(verdict, buffer, client, greeted);
            }
            read = client.read(&mut chunk) => match read {
                // A half-close before a word: the relay passes it on, as for any tunnel.
                Ok(0) if buffer.is_empty() => {
                    return FirstBytes::Opaque { io: Prefixed::new(buffer, client), greeted };
                }
                Err(_) if buffer.is_empty() => return FirstBytes::Gone,
                Ok(0) | Err(_) => return first_bytes(unfinished(&buffer), buffer, client, greeted),
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            },
            read = app.read(&mut greeting) => match read {
                // The app is done: whatever the caller sends goes nowhere but the relay.
                Ok(0) | Err(_) => return FirstBytes::Opaque { io: Prefixed::new(buffer, client), greeted },
                Ok(n) => {
                    let delivered = tokio::time::timeout(idle, client.write_all(&greeting[..n])).await;
                    if !matches!(delivered, Ok(Ok(()))) {
                        return FirstBytes::Gone;
                    }
                    greeted += n as u64;
                }
            },
            () = tokio::time::sleep(idle) => return FirstBytes::Gone,
            _ = &mut *cancelled => return FirstBytes::Gone,
        }
    }
}

fn first_bytes<C>(decided: Detected, buffer: Vec<u8>, client: C, greeted: u64) -> FirstBytes<C> {
    match decided {
        Detected::Http1 | Detected::Http2 if greeted > 0 => FirstBytes::HttpAfterGreeting,
        Detected::Http1 | Detected::Http2 => FirstBytes::Http(Prefixed::new(buffer, client)),
        Detected::Opaque | Detected::NeedMore => FirstBytes::Opaque {
            io: Prefixed::new(buffer, client),
            greeted,
        },
    }
}

/// The verdict on a prefix that was still undecided when the client stopped sending:
/// nothing at all is TCP, a beginning of HTTP is HTTP (hyper refuses what is incomplete).
fn unfinished(buffer: &[u8]) -> Detected {
    if buffer.is_empty() {
        Detected::Opaque
    } else if H2_PREFACE.starts_with(buffer) {
        Detected::Http2
    } else {
        Detected::Http1
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    read: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    /// Reads yield `prefix` first, then whatever `inner` reads; writes go to `inner`.
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            read: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let left = &this.prefix[this.read..];
            let n = left.len().min(buf.remaining());
            buf.put_slice(&left[..n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let cases: &[(&[u8], Detected)] = &[
            (b"", Detected::NeedMore),
            (b"G", Detected::NeedMore),
            (b"GET", Detected::NeedMore),
            (b"GET /", Detected::NeedMore),
            (b"GET / HTTP/1.", Detected::NeedMore),
            (b"GET / HTTP/1.1", Detected::NeedMore),
            (b"GET / HTTP/1.1\r", Detected::NeedMore),
            (b"GET / HTTP/1.1\r\n", Detected::Http1),
            (b"GET / HTTP/1.0\n", Detected::Http1),
            (b"PROPFIND /dav HTTP/1.1\r\nHost: x\r\n", Detected::Http1),
            (b"GET http://h/ HTTP/1.1\r\n", Detected::Http1),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detected::Http2),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", Detected::Http2),
            (b"PRI * HTTP/2", Detected::NeedMore),
            // Whatever some server reads as a request line is HTTP here (hyper then
            // refuses what it does not serve): a broken preface, other versions, nginx's
            // repeated and trailing spaces, Python's tabs and leading space, any case.
            (b"PRI * HTTP/2.0\r\n\r\nXX", Detected::Http1),
            (b"GET / HTTP/2.0\r\n", Detected::Http1),
            (b"GET / HTTP/1.x\r\n", Detected::Http1),
            (b"GET / HTTP/1.10\r\n", Detected::Http1),
            (b"GET  / HTTP/1.1\r\n", Detected::Http1),
            (b"GET / HTTP/1.1 \r\n", Detected::Http1),
            (b"GET\t/\tHTTP/1.1\r\n", Detected::Http1),
            (b" GET / HTTP/1.1\r\n", Detected::Http1),
            (b"get / http/1.1\n", Detected::Http1),
            (b"GE@T /x y HTTP/1.1\r\n", Detected::Http1),
            // HTTP/0.9 has no headers to smuggle; text protocols say other things.
            (b"GET /\r\n", Detected::Opaque),
            (b"EHLO mail.example\r\n", Detected::Opaque),
            (b"GET / HTTP/1.1\r\r", Detected::Opaque),
            (b"GET / \x01HTTP/1.1\r\n", Detected::Opaque),
            (b"\x16\x03\x01\x02\x00", Detected::Opaque), // a TLS ClientHello
            (b"SSH-2.0-OpenSSH_9.2\r\n", Detected::Opaque),
            (b"*1\r\n$4\r\nPING\r\n", Detected::Opaque), // Redis
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Detected::Opaque), // Postgres SSLRequest
            // Empty lines before the request line are skipped, as servers do.
            (b"\r\n", Detected::NeedMore),
            (b"\r\nGET / HTTP/1.1\r\n", Detected::Http1),
            (b"\n\r\n\nPOST /x HTTP/1.1\n", Detected::Http1),
            (b"\r\n\x16\x03", Detected::Opaque),
        ];
        for (input, expected) in cases {
            assert_eq!(
                classify(input),
                *expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn a_request_line_past_the_cap_is_still_http() {
        for start in [&b"GET /"[..], b"\r\n"] {
            let mut line = start.to_vec();
            line.resize(MAX_REQUEST_LINE + 10, start[start.len() - 1]);
            assert_eq!(classify(&line), Detected::Http1);
        }
    }

    #[tokio::test]
    async fn a_request_line_cut_by_the_timeout_is_http() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"GET /admin HT").await.unwrap();
        let (detected, timed_out, _) = detect(server, Duration::from_millis(20)).await;
        assert_eq!((detected, timed_out), (Detected::Http1, true));
    }

    #[tokio::test]
    async fn silent_clients_fall_back_to_tcp_at_the_timeout() {
        let (client, server) = tokio::io::duplex(64);
        let (detected, timed_out, _) = detect(server, Duration::from_millis(20)).await;
        assert_eq!((detected, timed_out), (Detected::Opaque, true));
        drop(client);
    }

    /// `watch_first_bytes` with a generous idle limit and a cancel signal that never fires.
    async fn watch<A: AsyncRead + Unpin>(
        sidecar_side: tokio::io::DuplexStream,
        app: &mut A,
    ) -> FirstBytes<tokio::io::DuplexStream> {
        let (_keep, mut cancelled) = tokio::sync::oneshot::channel();
        watch_first_bytes(
            sidecar_side,
            app,
            Duration::from_secs(5),
            Duration::from_millis(200),
            &mut cancelled,
        )
        .await
    }

    #[tokio::test]
    async fn after_a_silent_fallback_http_is_still_recognised() {
        use tokio::io::AsyncWriteExt;
        // (what the app greets with, what the caller then sends, the outcome)
        let cases: &[(&[u8], &[u8], &str)] = &[
            (b"", b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n", "http"),
            (b"", b"GET  /admin  HTTP/1.1 \r\nHost: x\r\n\r\n", "http"),
            (b"", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "http"),
            (b"220 ready\r\n", b"GET / HTTP/1.1\r\n\r\n", "refused"),
            (b"220 ready\r\n", b"EHLO me\r\n", "opaque"),
            // After a greeting, text that ends no line is relayed once patience runs out.
            (b"220 ready\r\n", b"after the banner", "opaque"),
            (b"220 ready\r\n", b"GET / HTTP/1.1", "refused"),
            (b"", b"\x16\x03\x01\x00\x05hello", "opaque"),
            (b"", b"", "opaque"), // a half-close before a word
        ];
        for (greeting, sent, want) in cases {
            let (mut caller, sidecar_side) = tokio::io::duplex(1024);
            let (mut app, mut app_side) = tokio::io::duplex(1024);
            app.write_all(greeting).await.unwrap();
            let watching = tokio::spawn(async move {
                let outcome = watch(sidecar_side, &mut app_side).await;
                (outcome, app_side)
            });
            // The greeting reaches the caller before the caller speaks.
            let mut seen = vec![0u8; greeting.len()];
            caller.read_exact(&mut seen).await.unwrap();
            assert_eq!(&seen, greeting);
            if sent.is_empty() {
                caller.shutdown().await.unwrap();
            } else {
                caller.write_all(sent).await.unwrap();
            }
            let (outcome, _) = watching.await.unwrap();
            let text = String::from_utf8_lossy(sent);
            assert_eq!(outcome_name(&outcome), *want, "{text:?}");
            drop(app);
        }
    }

    #[tokio::test]
    async fn a_cancelled_tunnel_stops_waiting_for_first_bytes() {
        let (_caller, sidecar_side) = tokio::io::duplex(64);
        let (_app, mut app_side) = tokio::io::duplex(64);
        let (cancel, mut cancelled) = tokio::sync::oneshot::channel();
        cancel.send(()).unwrap();
        let outcome = watch_first_bytes(
            sidecar_side,
            &mut app_side,
            Duration::from_secs(60),
            Duration::from_secs(60),
            &mut cancelled,
        )
        .await;
        assert_eq!(outcome_name(&outcome), "gone");
    }

    fn outcome_name<T>(outcome: &FirstBytes<T>) -> &'static str {
        match outcome {
            FirstBytes::Opaque { .. } => "opaque",
            FirstBytes::Http(_) => "http",
            FirstBytes::HttpAfterGreeting => "refused",
            FirstBytes::Gone => "gone",
        }
    }

    #[tokio::test]
    async fn the_bytes_read_are_replayed() {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        drop(client);
        let (detected, _, mut stream) = detect(server, Duration::from_secs(5)).await;
        assert_eq!(detected, Detected::Http1);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }
}
