//! Pooled mesh connections: TLS 1.3 mTLS with ALPN `h2` to a destination sidecar, each
//! carrying many HTTP/2 streams: CONNECT tunnels (one per application connection on a
//! TCP port) and routed requests (one per request on an HTTP port).
//!
//! A pool entry is keyed by destination endpoint *and* expected peer identity, so streams
//! for different identities never share a connection. The client verifies that the server
//! presents exactly the expected SPIFFE ID. Closed connections are dropped and replaced on
//! the next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_identity::{PeerMatch, SpiffeId, tls};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::lifecycle::Identity;
use crate::mesh_body::MeshBody;
use crate::metrics::Metrics;

/// Header the inbound side uses to say why it refused a CONNECT.
pub(crate) const DENY_REASON_HEADER: &str = "airlock-deny-reason";

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("cannot reach {endpoint}: {reason}")]
    Connect {
        endpoint: SocketAddr,
        reason: String,
    },
    #[error("TLS with {endpoint} failed: {reason}")]
    Tls {
        endpoint: SocketAddr,
        reason: String,
    },
    #[error("{endpoint} refused the tunnel ({status}): {reason}")]
    Refused {
        endpoint: SocketAddr,
        status: StatusCode,
        reason: String,
    },
    #[error("HTTP/2 with {endpoint} failed: {reason}")]
    Http2 {
        endpoint: SocketAddr,
        reason: String,
    },
}

impl OpenError {
    /// A short label for metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::Tls { .. } => "tls",
            Self::Refused { status, .. } if *status == StatusCode::FORBIDDEN => "denied",
            Self::Refused { .. } => "refused",
            Self::Http2 { .. } => "http2",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    endpoint: SocketAddr,
    identity: SpiffeId,
}

struct Connection {
    sender: http2::SendRequest<MeshBody>,
    streams: Arc<AtomicUsize>,
    /// Serial of the local SVID this connection authenticated with. After a rotation new
    /// streams go to connections made with the new SVID; older ones only finish theirs
    /// (the server stops accepting streams on them when the old SVID expires).
    local_serial: String,
}

/// An open CONNECT stream; holds its connection's stream slot until dropped.
pub(crate) struct Stream {
    pub io: TokioIo<Upgraded>,
    pub(crate) slot: StreamSlot,
}

/// A routed request that did not go out: the request comes back, so it can go to
/// another endpoint whatever its method.
pub(crate) struct NotSent {
    pub(crate) error: OpenError,
    pub(crate) request: Request<MeshBody>,
}

/// How sending a routed request failed.
pub(crate) enum SendError {
    /// Nothing reached the endpoint.
    NotSent(Box<NotSent>),
    /// The request went out (part or whole) and then the stream failed.
    Failed(hyper::Error),
}

/// A routed request's answer; holds its connection's stream slot until dropped.
pub(crate) struct Answer {
    pub(crate) response: http::Response<Incoming>,
    pub(crate) slot: StreamSlot,
}

/// A stream's claim on its connection's count, given back when dropped.
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Pool {
    identity: Arc<Identity>,
    connections: Mutex<HashMap<Key, Vec<Arc<Connection>>>>,
    dialing: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    per_endpoint: usize,
    streams_per_connection: usize,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Pool {
    pub(crate) fn new(
        identity: Arc<Identity>,
        per_endpoint: usize,
        streams_per_connection: usize,
        connect_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            identity,
            connections: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
            per_endpoint,
            streams_per_connection,
            connect_timeout,
            metrics,
        }
    }

    /// Opens a CONNECT stream to `authority` (`ip:port` of the target workload) through the
    /// sidecar at `endpoint`, which must be `expected`.
    pub(crate) async fn open(
        &self,
        endpoint: SocketAddr,
        expected: &SpiffeId,
        authority: &str,
    ) -> Result<Stream, OpenError> {
        // One deadline for the whole open: dial, a stream slot from the server, the answer.
        tokio::time::timeout(
            self.connect_timeout * 2,
            self.open_stream(endpoint, expected, authority),
        )
        .await
        .map_err(|_| OpenError::Http2 {
            endpoint,
            reason: "opening the stream timed out".into(),
        })?
    }

    async fn open_stream(
        &self,
        endpoint: SocketAddr,
        expected: &SpiffeId,
        authority: &str,
    ) -> Result<Stream, OpenError> {
        let (mut sender, slot) = self.ready_sender(endpoint, expected).await?;
        let http2_error = |e: hyper::Error| OpenError::Http2 {
            endpoint,
            reason: e.to_string(),
        };
        let request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(MeshBody::empty())
            .map_err(|e| OpenError::Http2 {
                endpoint,
                reason: e.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(http2_error)?;
        if response.status() != StatusCode::OK {
            let reason = response
                .headers()
                .get(DENY_REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            return Err(OpenError::Refused {
                endpoint,
                status: response.status(),
                reason,
            });
        }
        let upgraded = hyper::upgrade::on(response).await.map_err(http2_error)?;
        self.metrics.pool_streams.inc();
        Ok(Stream {
            io: TokioIo::new(upgraded),
            slot,
        })
    }

    /// Sends one routed request to the sidecar at `endpoint`, which must be `expected`.
    /// If no byte of it went out (no connection, a refused handshake, a connection that
    /// closed first), the request comes back in [`SendError::NotSent`].
    pub(crate) async fn send(
        &self,
        endpoint: SocketAddr,
        expected: &SpiffeId,
        request: Request<MeshBody>,
    ) -> Result<Answer, SendError> {
        let ready = tokio::time::timeout(
            self.connect_timeout * 2,
            self.ready_sender(endpoint, expected),
        )
        .await
        .unwrap_or_else(|_| {
            Err(OpenError::Http2 {
                endpoint,
                reason: "no stream within the connect timeout".into(),
            })
        });
        let (mut sender, slot) = match ready {
            Ok(ready) => ready,
            Err(error) => return Err(SendError::NotSent(Box::new(NotSent { error, request }))),
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok(Answer { response, slot }),
            Err(mut failed) => match failed.take_message() {
                Some(request) => Err(SendError::NotSent(Box::new(NotSent {
                    error: OpenError::Http2 {
                        endpoint,
                        reason: failed.error().to_string(),
                    },
                    request,
                }))),
                None => Err(SendError::Failed(failed.into_error())),
            },
        }
    }

    /// A connection to `endpoint` (pooled or new) ready for one more stream, and that
    /// stream's slot.
    async fn ready_sender(
        &self,
        endpoint: SocketAddr,
        expected: &SpiffeId,
    ) -> Result<(http2::SendRequest<MeshBody>, StreamSlot), OpenError> {
        let key = Key {
            endpoint,
            identity: expected.clone(),
        };
        let connection = match self.pick(&key) {
            Some(connection) => connection,
            None => {
                // One dial at a time per destination: a burst of new app connections
                // shares the first new mesh connection instead of each dialing its own.
                let dial_lock = self.dial_lock(&key);
                let _dialing = dial_lock.lock().await;
                match self.pick(&key) {
                    Some(connection) => connection,
                    None => self.dial(&key).await?,
                }
            }
        };
        connection.streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(connection.streams.clone());
        let mut sender = connection.sender.clone();
        sender.ready().await.map_err(|e| OpenError::Http2 {
            endpoint,
            reason: e.to_string(),
        })?;
        Ok((sender, slot))
    }

    /// A live connection with a free stream slot, dropping closed ones on the way.
    fn pick(&self, key: &Key) -> Option<Arc<Connection>> {
        let mut connections = self.connections.lock().expect("pool lock poisoned");
        let list = connections.get_mut(key)?;
        list.retain(|c| !c.sender.is_closed());
        let current = self.identity.store.current()?.serial_hex;
        let least_loaded = list
            .iter()
            .filter(|c| c.local_serial == current)
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))?;
        let has_room = least_loaded.streams.load(Ordering::Relaxed) < self.streams_per_connection;
        let current_count = list.iter().filter(|c| c.local_serial == current).count();
        (has_room || current_count >= self.per_endpoint).then(|| least_loaded.clone())
    }

    fn dial_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        self.dialing
            .lock()
            .expect("pool lock poisoned")
            .entry(key.clone())
            .or_default()
            .clone()
    }

    async fn dial(&self, key: &Key) -> Result<Arc<Connection>, OpenError> {
        let endpoint = key.endpoint;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| OpenError::Connect {
                endpoint,
                reason: "timed out".into(),
            })?
            .map_err(|e| OpenError::Connect {
                endpoint,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let local_serial = self
            .identity
            .store
            .current()
            .map(|svid| svid.serial_hex)
            .unwrap_or_default();
        let config = tls::client_config(
            self.identity.store.clone(),
            self.identity.bundle.clone(),
            PeerMatch::Exactly(key.identity.clone()),
            &[b"h2"],
        );
        let server_name = ServerName::IpAddress(endpoint.ip().into());
        let tls = tokio::time::timeout(
            self.connect_timeout,
            TlsConnector::from(Arc::new(config)).connect(server_name, tcp),
        )
        .await
        .map_err(|_| OpenError::Tls {
            endpoint,
            reason: "handshake timed out".into(),
        })?
        .map_err(|e| {
            crate::metrics::Metrics::reason(
                &self.metrics.tls_handshake_errors,
                crate::tls_failure::reason(&e),
            );
            OpenError::Tls {
                endpoint,
                reason: e.to_string(),
            }
        })?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .max_frame_size(crate::MESH_MAX_FRAME_SIZE)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| OpenError::Http2 {
                endpoint,
                reason: e.to_string(),
            })?;
        let metrics = self.metrics.clone();
        metrics.pool_connections.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%endpoint, error = %e, "mesh connection ended");
            }
            metrics.pool_connections.dec();
        });
        let connection = Arc::new(Connection {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
            local_serial,
        });
        self.connections
            .lock()
            .expect("pool lock poisoned")
            .entry(key.clone())
            .or_default()
            .push(connection.clone());
        Ok(connection)
    }
}
