//! Serving the view: the gRPC `Discovery` service on TLS 1.3 with client certificates
//! required. Each connection's peer SPIFFE ID, from its verified certificate, is put into
//! every request's extensions as a [`Subscriber`]; nothing a client sends can name it.
//!
//! One task per subscription follows the view: a full snapshot first (or an empty
//! update when the subscriber already holds the current version), then the difference
//! from what it last sent, each in messages of at most `PER_MESSAGE` (32) services and policies (so no
//! stream's encoding buffer grows to the size of the mesh). Sending waits for the
//! subscriber (a channel of one), so a slow one gets the changes that piled up as one
//! update instead of a queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_api::proto::discovery_server::{Discovery, DiscoveryServer};
use airlock_api::proto::{Ack, MeshUpdate};
use airlock_ca::workload::Identity;
use airlock_identity::{SpiffeId, tls};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::view::{MeshView, Messages, SubscriberView};

/// The verified identity of the connection a request came on.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber(pub(crate) SpiffeId);

/// How long a new subscription may take to send its first message.
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The biggest message a subscriber may send (an `Ack`: a version and an error text).
const MAX_ACK_BYTES: usize = 16 * 1024;
/// HTTP/2 pings on idle connections find subscribers that vanished without a FIN.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Subscriptions per connection: a sidecar needs one.
const MAX_STREAMS_PER_CONNECTION: u32 = 4;
/// Bytes of a stream's updates buffered for its subscriber beyond the flow-control
/// window (hyper's default, 400 KiB, times 2,000 subscribers is most of a gigabyte).
const MAX_SEND_BUFFER: usize = 16 * 1024;

/// The listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 20_000,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// The `Discovery` service: every subscription follows `views`.
#[derive(Clone)]
pub(crate) struct DiscoveryService {
    pub(crate) views: watch::Receiver<Arc<MeshView>>,
    pub(crate) metrics: Arc<Metrics>,
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = ReceiverStream<Result<MeshUpdate, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<Ack>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Some(Subscriber(subscriber)) = request.extensions().get::<Subscriber>().cloned() else {
            return Err(Status::unauthenticated("no verified client certificate"));
        };
        let (updates, stream) = mpsc::channel(1);
        tokio::spawn(subscription(
            subscriber,
            request.into_inner(),
            self.views.clone(),
            updates,
            self.metrics.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Keeps one subscriber up to date until either side closes the stream.
async fn subscription(
    subscriber: SpiffeId,
    mut acks: Streaming<Ack>,
    mut views: watch::Receiver<Arc<MeshView>>,
    updates: mpsc::Sender<Result<MeshUpdate, Status>>,
    metrics: Arc<Metrics>,
) {
    let _live = metrics.subscribed();
    let held_version = match tokio::time::timeout(FIRST_ACK_TIMEOUT, acks.message()).await {
        Ok(Ok(Some(first))) => first.version,
        _ => {
            tracing::info!(%subscriber, "subscription closed before its first message");
            return;
        }
    };
    tracing::info!(%subscriber, held_version = %held_version, "subscribed");
    // Until the source produced its first view there is nothing true to send: an empty
    // snapshot would wipe what the subscriber knows.
    if views
        .wait_for(|view| !view.version.is_empty())
        .await
        .is_err()
    {
        return;
    }
    let mut sent: Option<SubscriberView> = None;
    loop {
        let view = views.borrow_and_update().clone();
        let cut = view.for_subscriber(&subscriber);
        let per_message = airlock_api::pieces::PER_MESSAGE;
        {
            let messages = match &sent {
                // It restarted from its cache, which is the current view: say so, send nothing.
                None if held_version == cut.version => Some(Box::new(std::iter::once(MeshUpdate {
                    version: cut.version.clone(),
                    ..MeshUpdate::default()
                })) as Messages<'_>),
                None => Some(cut.snapshot(per_message)),
                Some(before) => cut.update_from(before, per_message),
            };
            if let Some(messages) = messages {
                for message in messages {
                    if updates.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                metrics.updates_sent.inc();
            }
        }
        sent = Some(cut);
        // Acks are read while waiting for the next view, so a subscriber that acks
        // never blocks on a full window.
        loop {
            tokio::select! {
                changed = views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => metrics.acked(&subscriber, &ack),
                    Ok(None) | Err(_) => {
                        tracing::info!(%subscriber, "subscription closed");
                        return;
                    }
                },
            }
        }
    }
}

/// Serves `service` on `listener` until `stop` turns true: TLS 1.3 with this
/// controller's SVID, client certificates required, HTTP/2 only.
pub(crate) async fn serve(
    listener: TcpListener,
    identity: Arc<Identity>,
    service: DiscoveryService,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let tls = tls::server_config(
        identity.store.clone(),
        identity.bundle.clone(),
        true,
        &[b"h2"],
    );
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let server = DiscoveryServer::new(service).max_decoding_message_size(MAX_ACK_BYTES);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    airlock_listen::accept_loop(
        "control",
        listener,
        slots,
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        },
        |peer| tracing::warn!(%peer, "connection limit reached; closing connection"),
        |tcp, peer| {
            let acceptor = acceptor.clone();
            let server = server.clone();
            let identity = identity.clone();
            async move {
                let _ = tcp.set_nodelay(true);
                let Some(stream) =
                    airlock_listen::tls_handshake(&acceptor, tcp, limits.handshake_timeout, peer)
                        .await
                else {
                    return;
                };
                connection(stream, peer, server, identity).await;
            }
        },
    )
    .await;
}

/// One subscriber's connection, closed when its SVID lands on the deny list.
async fn connection(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: SocketAddr,
    server: DiscoveryServer<DiscoveryService>,
    identity: Arc<Identity>,
) {
    let (Some(subscriber), Some(svid)) = (
        airlock_identity::peer_id(stream.get_ref().1),
        airlock_identity::peer_svid(stream.get_ref().1),
    ) else {
        // A mandatory client certificate makes this unreachable; refuse all the same.
        return;
    };
    let named = subscriber.clone();
    let service = tower::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(Subscriber(named.clone()));
        let mut server = server.clone();
        async move { tower::Service::call(&mut server, request).await }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // A subscriber that reads slowly holds at most this much of its stream here; the
        // rest waits as one coalesced update in its subscription task.
        .max_send_buf_size(MAX_SEND_BUFFER);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    let mut bundle_changes = identity.bundle_changes.subscribe();
    // Checked once before the first change too: a deny list that changed between the
    // handshake and this subscription would otherwise wait for the next change.
    let revoked = async {
        loop {
            if let Some(revoked) = identity.revoked(&svid) {
                return revoked;
            }
            if bundle_changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                tracing::debug!(%peer, %subscriber, error = %e, "connection ended");
            }
        }
        revoked = revoked => {
            tracing::warn!(%peer, %subscriber, ?revoked, "subscriber's SVID revoked; closing its connection");
        }
    }
}
