//! The tap hub: a live, bounded and lossy fan-out of the records the access log would
//! write, to the operators streaming `GET /tap` on the admin listener (`airlock tap`).
//!
//! - **Free when idle.** Callers ask [`Tap::active`] (one relaxed atomic load) before they
//!   build a record, and [`Tap::publish`] returns on the same load, so without a tap no
//!   record is built, masked or serialized on its behalf.
//! - **The access log's view.** A tap receives the finished [`Record`], built and masked
//!   by the access log's own code (`access_log::Masker`), whether or not the access log
//!   writes it anywhere: the tap cannot show what the log would hide.
//! - **Bounded.** At most [`MAX_TAPS`] streams at once (more get 429), each with a queue
//!   of [`QUEUE`] lines. A tap that falls behind loses the lines that do not fit, never
//!   slows a request, and is told in-band how many it lost (`{"event":"dropped"}`).
//! - **Filtered here.** A stream names what it wants (peer, path prefix, decision, port);
//!   everything else is skipped before it is serialized, let alone sent.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_identity::SpiffeId;
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame};
use serde::Serialize;
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::access_log::{Record, percent_decode};
use crate::metrics::Disposition;

/// Streams at once; a few operators, not a telemetry pipeline.
pub(crate) const MAX_TAPS: usize = 8;

/// Lines waiting for one tap client; beyond this they are dropped and counted.
pub(crate) const QUEUE: usize = 1024;

/// An idle stream sends an empty line this often, so a client can tell a quiet sidecar
/// from a dead one, and a vanished client is noticed (its slot freed) on the write.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The body of an admin response: a whole text or a tap stream.
pub(crate) type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

/// Which moment of a record's life a tap line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// An allowed TCP tunnel starts relaying (its `end` follows when it closes).
    Open,
    /// A request or tunnel is over: the access log line.
    End,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::End => "end",
        }
    }
}

/// The hub: every tap stream of this sidecar. Cheap to clone.
#[derive(Default, Clone)]
pub(crate) struct Tap {
    hub: Arc<Hub>,
}

#[derive(Default)]
struct Hub {
    /// `taps.len()`, readable without the lock: the hot path's only cost when idle.
    count: AtomicUsize,
    taps: RwLock<Vec<Arc<Slot>>>,
    /// Every line any tap stream lost (`airlock_tap_dropped_total`).
    dropped: prometheus_client::metrics::counter::Counter,
}

/// One stream's place in the hub.
struct Slot {
    filter: Filter,
    lines: mpsc::Sender<Bytes>,
    /// Lines that did not fit since the stream last said so.
    dropped: AtomicU64,
}

/// Too many taps are streaming already.
#[derive(Debug)]
pub(crate) struct Busy;

impl Tap {
    /// Registers `airlock_tap_dropped_total`, the lines slow tap clients lost.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.sub_registry_with_prefix("airlock").register(
            "tap_dropped",
            "Tap lines dropped because a tap client fell behind",
            self.hub.dropped.clone(),
        );
    }

    /// True while at least one tap streams: callers build records for it only then.
    pub(crate) fn active(&self) -> bool {
        self.hub.count.load(Ordering::Relaxed) != 0
    }

    /// Offers `record` to every tap whose filter it passes; returns how many queued it.
    /// A record begun while nobody recorded (no `time`: the cheap stub) is not shown.
    pub(crate) fn publish(&self, event: Event, record: &Record) -> usize {
        if !self.active() || record.time.is_empty() {
            return 0;
        }
        let taps = self.hub.taps.read().unwrap_or_else(PoisonError::into_inner);
        let mut line = None;
        let mut queued = 0;
        for slot in taps.iter().filter(|slot| slot.filter.matches(record)) {
            let line = line.get_or_insert_with(|| encode(event, record));
            match slot.lines.try_send(line.clone()) {
                Ok(()) => queued += 1,
                Err(TrySendError::Full(_)) => {
                    slot.dropped.fetch_add(1, Ordering::Relaxed);
                    self.hub.dropped.inc();
                }
                // The stream is ending; its subscription leaves the hub when dropped.
                Err(TrySendError::Closed(_)) => {}
            }
        }
        queued
    }

    /// Adds a stream that sees what `filter` lets through, unless [`MAX_TAPS`] stream.
    pub(crate) fn subscribe(&self, filter: Filter) -> Result<Subscription, Busy> {
        let mut taps = self
            .hub
            .taps
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if taps.len() >= MAX_TAPS {
            return Err(Busy);
        }
        let (lines, receiver) = mpsc::channel(QUEUE);
        let slot = Arc::new(Slot {
            filter,
            lines,
            dropped: AtomicU64::new(0),
        });
        taps.push(slot.clone());
        self.hub.count.store(taps.len(), Ordering::Relaxed);
        Ok(Subscription {
            hub: self.hub.clone(),
            slot,
            receiver,
        })
    }
}

/// One tap stream's queue; leaves the hub when dropped.
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    slot: Arc<Slot>,
    receiver: mpsc::Receiver<Bytes>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut taps = self
            .hub
            .taps
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        taps.retain(|slot| !Arc::ptr_eq(slot, &self.slot));
        self.hub.count.store(taps.len(), Ordering::Relaxed);
    }
}

/// One tap line: the access log record, and which moment of it this is.
#[derive(Serialize)]
struct Line<'a> {
    event: &'static str,
    #[serde(flatten)]
    record: &'a Record,
}

fn encode(event: Event, record: &Record) -> Bytes {
    let line = Line {
        event: event.name(),
        record,
    };
    json_line(&line)
}

fn json_line(value: &impl Serialize) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// What one tap wants to see; an absent field lets everything through.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Filter {
    /// The peer's SPIFFE ID: the caller of an inbound record, the callee of an outbound.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    /// Matched against the path as shown, masked: a filter cannot probe a masked value.
    #[serde(skip_serializing_if = "Option::is_none")]
    path_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<Disposition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
}

/// A query parameter of `GET /tap` that cannot be a filter: the 400's body.
#[derive(Debug, thiserror::Error)]
#[error("bad tap filter `{parameter}`: {problem}")]
pub(crate) struct FilterError {
    parameter: String,
    problem: String,
}

/// Longest parameter name echoed in an error (the rest is the caller's noise).
const MAX_ECHOED: usize = 64;

impl Filter {
    /// Reads `peer`, `path_prefix`, `decision` and `port` from a query string.
    pub(crate) fn parse(query: Option<&str>) -> Result<Self, FilterError> {
        let mut filter = Self::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (key, value) = (percent_decode(key), percent_decode(value));
            let bad = |problem: &str| FilterError {
                parameter: key.chars().take(MAX_ECHOED).collect(),
                problem: problem.to_owned(),
            };
            let twice = || bad("given more than once");
            match key.as_str() {
                "peer" => {
                    SpiffeId::parse(&value)
                        .map_err(|e| bad(&format!("{value:?} is not a SPIFFE ID: {e}")))?;
                    set_once(&mut filter.peer, value).map_err(|()| twice())?;
                }
                "path_prefix" => {
                    if !value.starts_with('/') {
                        return Err(bad("a path prefix starts with /"));
                    }
                    set_once(&mut filter.path_prefix, value).map_err(|()| twice())?;
                }
                "decision" => {
                    let decision = match value.as_str() {
                        "allow" => Disposition::Allow,
                        "deny" => Disposition::Deny,
                        "rejected" => Disposition::Rejected,
                        _ => return Err(bad("expected allow, deny or rejected")),
                    };
                    set_once(&mut filter.decision, decision).map_err(|()| twice())?;
                }
                "port" => {
                    let port = value
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| bad("expected a port number, 1 to 65535"))?;
                    set_once(&mut filter.port, port).map_err(|()| twice())?;
                }
                _ => {
                    return Err(bad(
                        "unknown parameter; the filters are peer, path_prefix, decision and port",
                    ));
                }
            }
        }
        Ok(filter)
    }

    fn matches(&self, record: &Record) -> bool {
        let peer = if record.direction == "outbound" {
            &record.destination
        } else {
            &record.source
        };
        self.peer
            .as_ref()
            .is_none_or(|want| peer.as_ref() == Some(want))
            && self.path_prefix.as_ref().is_none_or(|prefix| {
                record
                    .path
                    .as_ref()
                    .is_some_and(|path| path.starts_with(prefix.as_str()))
            })
            && self.decision.is_none_or(|want| want == record.decision)
            && self.port.is_none_or(|want| want == record.port)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), ()> {
    match slot {
        Some(_) => Err(()),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// `GET /tap?…`: a stream of JSON lines (chunked), or 400 naming the bad parameter, or
/// 429 when [`MAX_TAPS`] stream already.
pub(crate) fn respond(tap: &Tap, query: Option<&str>) -> Response<AdminBody> {
    let filter = match Filter::parse(query) {
        Ok(filter) => filter,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // The first line says the tap is live: a client knows from then on it misses nothing.
    let first = json_line(&serde_json::json!({
        "event": "tapping",
        "filter": &filter,
        "queue": QUEUE,
    }));
    let Ok(subscription) = tap.subscribe(filter) else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "{MAX_TAPS} taps are streaming from this sidecar already; try again when one ends\n"
            ),
        );
    };
    let body = TapBody {
        first: Some(first),
        subscription,
        heartbeat: tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT),
    };
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    response
}

fn text(status: StatusCode, body: String) -> Response<AdminBody> {
    let mut response = Response::new(Full::from(body).boxed_unsync());
    *response.status_mut() = status;
    response
}

/// A tap stream's body: the start line, then queued lines, drop notices and heartbeats,
/// until the client goes away.
struct TapBody {
    first: Option<Bytes>,
    subscription: Subscription,
    heartbeat: tokio::time::Interval,
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let data = |bytes| Poll::Ready(Some(Ok(Frame::data(bytes))));
        if let Some(first) = this.first.take() {
            return data(first);
        }
        // Drops happen only while the queue is full, so the client is reading and comes
        // back here soon: the notice goes out before the lines that did fit after them.
        let dropped = this.subscription.slot.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            return data(json_line(&serde_json::json!({
                "event": "dropped",
                "dropped": dropped,
                "message": format!("{dropped} events dropped: this tap fell behind"),
            })));
        }
        match this.subscription.receiver.poll_recv(cx) {
            Poll::Ready(Some(line)) => {
                this.heartbeat.reset();
                return data(line);
            }
            // The slot holds the sender, so this does not happen; end the stream if it does.
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        if this.heartbeat.poll_tick(cx).is_ready() {
            return data(Bytes::from_static(b"\n"));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, decision: Disposition) -> Record {
        Record {
            time: "2026-12-03T08:00:00.000Z".into(),
            direction: "inbound",
            kind: "http",
            source: Some("spiffe://td/ns/shop/sa/checkout".into()),
            port: 8080,
            path: Some(path.into()),
            decision,
            ..Record::default()
        }
    }

    fn lines(subscription: &mut Subscription) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| subscription.receiver.try_recv().ok())
            .map(|line| serde_json::from_slice(&line).unwrap())
            .collect()
    }

    #[test]
    fn without_a_subscriber_nothing_is_queued() {
        let tap = Tap::default();
        assert!(!tap.active());
        let allowed = record("/a", Disposition::Allow);
        assert_eq!(tap.publish(Event::End, &allowed), 0);
        let mut subscription = tap.subscribe(Filter::default()).unwrap();
        assert!(tap.active());
        assert!(lines(&mut subscription).is_empty(), "nothing from before");
        assert_eq!(tap.publish(Event::End, &allowed), 1, "control: now it is");
        assert_eq!(lines(&mut subscription)[0]["path"], "/a");
        drop(subscription);
        assert!(!tap.active(), "the last stream left");
        assert_eq!(tap.publish(Event::End, &allowed), 0);
    }

    #[test]
    fn a_stub_record_is_not_shown() {
        let tap = Tap::default();
        let mut subscription = tap.subscribe(Filter::default()).unwrap();
        let stub = Record {
            time: String::new(),
            ..record("/a", Disposition::Allow)
        };
        assert_eq!(tap.publish(Event::End, &stub), 0);
        assert!(lines(&mut subscription).is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_drops_counts_and_says_so() {
        let tap = Tap::default();
        let response = respond(&tap, None);
        assert_eq!(response.status(), StatusCode::OK);
        let allowed = record("/a", Disposition::Allow);
        for _ in 0..QUEUE + 5 {
            tap.publish(Event::End, &allowed);
        }
        let mut body = response.into_body();
        let mut next = async || {
            let frame = body.frame().await.unwrap().unwrap();
            let bytes = frame.into_data().unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        assert_eq!(next().await["event"], "tapping");
        let notice = next().await;
        assert_eq!(notice["event"], "dropped");
        assert_eq!(notice["dropped"], 5);
        assert_eq!(tap.hub.dropped.get(), 5, "counted for /metrics too");
        for _ in 0..QUEUE {
            assert_eq!(next().await["event"], "end");
        }
        // Room again: the next line gets through, with no second notice.
        tap.publish(Event::End, &record("/b", Disposition::Allow));
        assert_eq!(next().await["path"], "/b");
    }

    #[test]
    fn at_most_max_taps_stream() {
        let tap = Tap::default();
        let taps: Vec<_> = (0..MAX_TAPS)
            .map(|_| tap.subscribe(Filter::default()).unwrap())
            .collect();
        assert!(tap.subscribe(Filter::default()).is_err());
        assert_eq!(respond(&tap, None).status(), StatusCode::TOO_MANY_REQUESTS);
        drop(taps);
        assert!(tap.subscribe(Filter::default()).is_ok());
    }

    #[test]
    fn filters_are_parsed_and_bad_ones_named() {
        let filter = Filter::parse(Some(
            "peer=spiffe%3A%2F%2Ftd%2Fns%2Fshop%2Fsa%2Fcheckout&path_prefix=/admin&decision=deny&port=8080",
        ))
        .unwrap();
        assert_eq!(
            filter.peer.as_deref(),
            Some("spiffe://td/ns/shop/sa/checkout")
        );
        assert_eq!(filter.path_prefix.as_deref(), Some("/admin"));
        assert_eq!(filter.decision, Some(Disposition::Deny));
        assert_eq!(filter.port, Some(8080));
        assert_eq!(Filter::parse(None).unwrap(), Filter::default());
        for (query, parameter) in [
            ("peer=checkout", "`peer`"),
            ("path_prefix=admin", "`path_prefix`"),
            ("decision=maybe", "`decision`"),
            ("port=0", "`port`"),
            ("port=70000", "`port`"),
            ("port=1&port=2", "`port`"),
            ("colour=red", "`colour`"),
        ] {
            let error = Filter::parse(Some(query)).unwrap_err().to_string();
            assert!(error.contains(parameter), "{query}: {error}");
        }
        assert_eq!(
            respond(&Tap::default(), Some("port=x")).status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn filters_select_records() {
        let parse = |query| Filter::parse(Some(query)).unwrap();
        let allowed = record("/v1/charges?token=***", Disposition::Allow);
        let denied = record("/admin/users", Disposition::Deny);
        let tcp = Record {
            kind: "tcp",
            path: None,
            port: 5432,
            ..record("", Disposition::Allow)
        };
        let outbound = Record {
            direction: "outbound",
            source: Some("spiffe://td/ns/pay/sa/api".into()),
            destination: Some("spiffe://td/ns/shop/sa/checkout".into()),
            ..record("/x", Disposition::Allow)
        };
        // (filter, record, passes)
        let cases = [
            ("decision=deny", &denied, true),
            ("decision=deny", &allowed, false),
            ("path_prefix=/admin", &denied, true),
            ("path_prefix=/admin", &allowed, false),
            ("path_prefix=/admin", &tcp, false),
            ("path_prefix=/v1/charges?token=***", &allowed, true),
            ("path_prefix=/v1/charges?token=abc", &allowed, false),
            ("port=5432", &tcp, true),
            ("port=5432", &allowed, false),
            ("peer=spiffe://td/ns/shop/sa/checkout", &allowed, true),
            ("peer=spiffe://td/ns/shop/sa/other", &allowed, false),
            ("peer=spiffe://td/ns/shop/sa/checkout", &outbound, true),
            ("peer=spiffe://td/ns/pay/sa/api", &outbound, false),
            ("decision=allow&port=8080&path_prefix=/v1", &allowed, true),
            ("decision=allow&port=8081&path_prefix=/v1", &allowed, false),
        ];
        for (query, record, passes) in cases {
            assert_eq!(
                parse(query).matches(record),
                passes,
                "{query} on {record:?}"
            );
        }
        let tap = Tap::default();
        let mut denials = tap.subscribe(parse("decision=deny")).unwrap();
        let mut everything = tap.subscribe(Filter::default()).unwrap();
        tap.publish(Event::End, &allowed);
        tap.publish(Event::End, &denied);
        let seen = lines(&mut denials);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["decision"], "deny");
        assert_eq!(
            lines(&mut everything).len(),
            2,
            "control: both were published"
        );
    }
}
