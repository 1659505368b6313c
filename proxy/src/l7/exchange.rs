//! What one request leaves behind: its access log line (also what a tap sees) and its
//! metrics, written once when its response ends, however it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, StatusCode, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::headers::is_grpc;
use crate::Shared;
use crate::access_log::Record;
use crate::metrics::{Direction, DirectionLabels, Disposition, HttpLabels};
use crate::tunnels::Peer;

/// The access log line and metrics of one request, written when its response ends.
pub(super) struct Exchange {
    pub(super) shared: Arc<Shared>,
    pub(super) record: Record,
    pub(super) started: Instant,
    /// Request body bytes, counted by the body on its way to the app.
    pub(super) bytes_in: Arc<AtomicU64>,
    pub(super) decision: Disposition,
}

impl Exchange {
    pub(super) fn finish(mut self, status: StatusCode, bytes_out: u64) {
        let elapsed = self.started.elapsed();
        let metrics = &self.shared.metrics;
        metrics
            .http_requests
            .get_or_create(&HttpLabels {
                direction: Direction::Inbound,
                status_class: format!("{}xx", status.as_u16() / 100),
                decision: self.decision,
            })
            .inc();
        metrics
            .http_request_duration
            .get_or_create(&DirectionLabels {
                direction: Direction::Inbound,
            })
            .observe(elapsed.as_secs_f64());
        self.record.status = Some(status.as_u16());
        self.record.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        self.record.bytes_out = bytes_out;
        self.record.duration_ms = elapsed.as_secs_f64() * 1000.0;
        self.shared.record(&self.record);
    }
}

/// The parts of the log line known from the request head (masked).
pub(super) fn base_record(
    shared: &Shared,
    port: u16,
    peer: &Peer,
    request: &Request<Incoming>,
) -> Record {
    let protocol = if is_grpc(request.headers()) {
        "grpc"
    } else if request.version() == Version::HTTP_2 {
        "http2"
    } else {
        "http1"
    };
    let log = &shared.access_log;
    // No line will be written and nobody taps: skip the formatting and the masking
    // regexes, and keep only what the refusal and the metrics read.
    if !shared.recording() {
        return Record {
            protocol: Some(protocol),
            ..Record::default()
        };
    }
    let header = |name: &str| {
        request.headers().get(name).map(|v| {
            log.masker
                .header(name, &String::from_utf8_lossy(v.as_bytes()))
        })
    };
    Record {
        time: crate::lifecycle::rfc3339_now(),
        direction: "inbound",
        kind: "http",
        source: peer.identity.as_ref().map(ToString::to_string),
        destination: shared
            .identity
            .store
            .current()
            .map(|svid| svid.id.to_string()),
        source_addr: Some(peer.addr.to_string()),
        port,
        protocol: Some(protocol),
        method: Some(request.method().as_str().to_owned()),
        request_id: header("x-request-id"),
        traceparent: header("traceparent"),
        headers: log
            .headers
            .iter()
            .filter_map(|name| Some((name.clone(), header(name)?)))
            .collect(),
        ..Record::default()
    }
}
