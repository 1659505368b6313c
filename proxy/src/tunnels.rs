//! The live inbound tunnels and HTTP requests in flight, so that a policy change, a
//! lapsing grant or a revocation can re-check each one and cut those that are no longer
//! allowed (a long-lived gRPC stream or WebSocket as much as a TCP tunnel), and so drain
//! knows when it is done.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use airlock_identity::{LeafSvid, Revocations, Revoked, SpiffeId};
use airlock_policy::eval::HttpRequest;
use airlock_policy::{Decision, DefaultMode, PolicySet, Request};
use tokio::sync::{oneshot, watch};

/// Why a revoked peer is refused or cut, in the words of the refusal and the log.
pub(crate) fn revoked_reason(revoked: Revoked) -> &'static str {
    match revoked {
        Revoked::Identity => "the peer's identity is revoked",
        Revoked::Serial => "the peer's certificate is revoked",
    }
}

/// Who is on the other end of an inbound stream.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// `None` for a plaintext (permissive) peer.
    pub identity: Option<SpiffeId>,
    /// The certificate the peer's handshake presented (`None` for plaintext), so that a
    /// revocation published later can end what it was let in for.
    pub svid: Option<Arc<LeafSvid>>,
    pub addr: SocketAddr,
}

impl Peer {
    /// The live-table key of this peer's tunnel to `port`, or of its request `http`.
    pub(crate) fn key(&self, port: u16, http: Option<Arc<HttpRequest>>) -> TunnelKey {
        TunnelKey {
            source: self.identity.clone(),
            source_svid: self.svid.clone(),
            source_ip: self.addr.ip(),
            port,
            http,
        }
    }
}

/// What a tunnel or request was authorized on.
#[derive(Debug, Clone)]
pub(crate) struct TunnelKey {
    pub source: Option<SpiffeId>,
    /// The peer's certificate, checked against the deny list on every re-check.
    pub source_svid: Option<Arc<LeafSvid>>,
    pub source_ip: IpAddr,
    pub port: u16,
    /// The request, for an HTTP request; `None` for a TCP tunnel.
    pub http: Option<Arc<HttpRequest>>,
}

impl TunnelKey {
    /// The peer's identity for log lines ("unauthenticated" for a plaintext peer).
    pub(crate) fn source_text(&self) -> String {
        self.source
            .as_ref()
            .map_or_else(|| "unauthenticated".to_owned(), ToString::to_string)
    }

    /// Decides this tunnel or request (again).
    pub(crate) fn decide(
        &self,
        set: &PolicySet,
        target: &SpiffeId,
        default: DefaultMode,
        now: i64,
    ) -> Decision {
        let request = Request {
            target,
            port: self.port,
            source: self.source.as_ref(),
            source_ip: Some(self.source_ip),
            http: self.http.as_deref(),
            now,
        };
        set.evaluate(&request, default)
    }
}

struct Entry {
    key: TunnelKey,
    close: oneshot::Sender<()>,
}

#[derive(Default)]
pub(crate) struct Tunnels {
    next_id: Mutex<u64>,
    live: Mutex<HashMap<u64, Entry>>,
    /// The number of live tunnels, for drain.
    count: watch::Sender<usize>,
}

/// Removes its tunnel from the registry when dropped.
pub(crate) struct TunnelGuard {
    tunnels: Arc<Tunnels>,
    id: u64,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let mut live = self.tunnels.live.lock().expect("tunnels lock poisoned");
        live.remove(&self.id);
        self.tunnels.count.send_replace(live.len());
    }
}

impl Tunnels {
    /// Registers a tunnel; the receiver fires when it must be closed.
    pub(crate) fn register(
        self: &Arc<Self>,
        key: TunnelKey,
    ) -> (TunnelGuard, oneshot::Receiver<()>) {
        let (close, closed) = oneshot::channel();
        let id = {
            let mut next = self.next_id.lock().expect("tunnels lock poisoned");
            *next += 1;
            *next
        };
        let mut live = self.live.lock().expect("tunnels lock poisoned");
        live.insert(id, Entry { key, close });
        self.count.send_replace(live.len());
        (
            TunnelGuard {
                tunnels: self.clone(),
                id,
            },
            closed,
        )
    }

    /// Re-decides every live tunnel; closes and returns those now denied, or whose peer's
    /// certificate or identity `revocations` now lists, with the reason. (A peer's
    /// certificate expiring does not end its tunnels: rotation must not drop connections.
    /// The inbound side stops new streams on that connection instead.)
    pub(crate) fn recheck(
        &self,
        set: &PolicySet,
        target: &SpiffeId,
        default: DefaultMode,
        now: i64,
        revocations: &Revocations,
    ) -> Vec<(TunnelKey, String)> {
        self.close_where(|key| {
            if let Some(revoked) = key
                .source_svid
                .as_deref()
                .and_then(|s| revocations.check(s))
            {
                return Some(revoked_reason(revoked).to_owned());
            }
            let decision = key.decide(set, target, default, now);
            (!decision.allowed).then(|| decision.reason.to_string())
        })
    }

    /// Closes every live tunnel (this sidecar can no longer vouch for itself).
    pub(crate) fn close_all(&self, reason: &str) -> Vec<(TunnelKey, String)> {
        self.close_where(|_| Some(reason.to_owned()))
    }

    fn close_where(
        &self,
        verdict: impl Fn(&TunnelKey) -> Option<String>,
    ) -> Vec<(TunnelKey, String)> {
        let mut live = self.live.lock().expect("tunnels lock poisoned");
        let doomed: Vec<(u64, String)> = live
            .iter()
            .filter_map(|(id, entry)| verdict(&entry.key).map(|reason| (*id, reason)))
            .collect();
        let closed = doomed
            .into_iter()
            .filter_map(|(id, reason)| {
                let entry = live.remove(&id)?;
                let _ = entry.close.send(());
                Some((entry.key, reason))
            })
            .collect();
        self.count.send_replace(live.len());
        closed
    }

    /// Follows the number of live tunnels.
    pub(crate) fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}
