//! `airlock ca serve`'s listener: the connections to the API (through the one accept
//! loop, with per-address limits), and the API's own certificate.
//!
//! It speaks TLS 1.3 only and presents an SVID for `spiffe://<td>/ns/airlock/sa/ca`
//! (plus DNS/IP names so `curl --cacert bundle.pem` works), renewed at half its lifetime.
//! A client certificate is optional; when one is presented it is fully verified and can
//! authenticate a renewal.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_identity::{SvidStore, tls};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rcgen::{KeyPair, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::authority::CertificateAuthority;
use crate::ratelimit::ConnectionsPerIp;
use crate::server::{CaApi, PeerCertificate};
use crate::wire::ca_server_id;

/// Lifetime of the API's own certificate (capped by `max_ttl`).
const SERVER_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest request head hyper buffers before answering 431.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Issues the API's own certificate into `store`; returns its lifetime.
fn renew_server_svid(
    ca: &CertificateAuthority,
    store: &SvidStore,
    listen: SocketAddr,
) -> Result<Duration, String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut names: Vec<SanType> = ca
        .config()
        .server_names
        .iter()
        .chain(host_name().as_ref())
        .filter_map(|n| n.as_str().try_into().ok().map(SanType::DnsName))
        .collect();
    if !listen.ip().is_unspecified() {
        names.push(SanType::IpAddress(listen.ip()));
    }
    let ttl = SERVER_CERT_TTL.min(ca.config().max_ttl);
    let issued = ca
        .issue(&key, &ca_server_id(ca.trust_domain()), Some(ttl), &names)
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    store
        .install(issued.chain, key)
        .map_err(|e| e.to_string())?;
    Ok(ttl)
}

/// The machine's host name, when it is a valid DNS name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    rustls::pki_types::DnsName::try_from(name.as_str()).ok()?;
    Some(name)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    api: CaApi,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let api = Arc::new(api);
    let provider = tls::provider();
    let store = SvidStore::new(provider);
    let lifetime =
        renew_server_svid(&api.live.ca(), &store, local).map_err(std::io::Error::other)?;
    let tls_config =
        tls::server_config(store.clone(), api.live.tls_bundle(), false, &[b"http/1.1"]);
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));
    let renewal = tokio::spawn(keep_server_svid_fresh(api.clone(), store, local, lifetime));
    let reload = tokio::spawn(crate::reload::watch(api.live.clone()));

    // Limits are fixed for the process's life (a restart applies new ones).
    let limits = api.live.ca().config().limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(ConnectionsPerIp::new(limits.max_connections_per_ip));
    airlock_listen::accept_loop(
        "ca",
        listener,
        connections,
        shutdown,
        |peer| tracing::warn!(peer = %peer, "connection limit reached; closing connection"),
        |tcp, peer| {
            // The per-address slot is taken here, in the accept loop, right after the
            // global one; a connection beyond it is closed at once (`tcp` dropped).
            let admitted = match per_ip.clone().acquire(peer.ip()) {
                Some(ip_slot) => Some((ip_slot, tcp)),
                None => {
                    tracing::warn!(peer = %peer, "per-address connection limit reached; closing connection");
                    None
                }
            };
            let acceptor = acceptor.clone();
            let api = api.clone();
            let limits = limits.clone();
            async move {
                let Some((_ip_slot, tcp)) = admitted else {
                    return;
                };
                let Some(stream) =
                    airlock_listen::tls_handshake(&acceptor, tcp, limits.handshake_timeout, peer)
                        .await
                else {
                    return;
                };
                let peer_cert = peer_certificate(stream.get_ref().1);
                let service = service_fn(move |request| {
                    let api = api.clone();
                    let peer_cert = peer_cert.clone();
                    async move { Ok::<_, Infallible>(api.handle(request, peer, peer_cert).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(connection);
                // Bound the connection's age: a client must reconnect (and show its current
                // certificate again) at least this often.
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    () = tokio::time::sleep(limits.max_connection_age) => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
            }
        },
    )
    .await;
    renewal.abort();
    reload.abort();
    Ok(())
}

/// The client certificate of a finished handshake (verified by then), if one was sent.
fn peer_certificate(connection: &rustls::ServerConnection) -> Option<PeerCertificate> {
    let der = connection
        .peer_certificates()?
        .first()?
        .clone()
        .into_owned();
    let svid = airlock_identity::svid::inspect_leaf(&der).ok()?;
    Some(PeerCertificate { svid, der })
}

/// Renews the API certificate at half its lifetime; retries every minute on failure.
async fn keep_server_svid_fresh(
    api: Arc<CaApi>,
    store: Arc<SvidStore>,
    listen: SocketAddr,
    lifetime: Duration,
) {
    let mut wait = lifetime / 2;
    loop {
        tokio::time::sleep(wait).await;
        wait = match renew_server_svid(&api.live.ca(), &store, listen) {
            Ok(lifetime) => lifetime / 2,
            Err(e) => {
                tracing::error!(error = %e, "renewing the CA API certificate failed; retrying in 60s");
                Duration::from_secs(60)
            }
        };
    }
}
