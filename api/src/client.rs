//! The subscriber's side of the wire: one HTTP/2 connection to a controller over TLS 1.3
//! (the caller's rustls config: its SVID, the controller's identity pinned), and the
//! tonic client on it. The sidecar subscribes with it, and so does the scale benchmark.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::proto::discovery_client::DiscoveryClient;

/// HTTP/2 pings on an idle subscription find a controller that vanished without a FIN.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach a controller.
#[derive(Clone)]
pub struct Dial {
    /// Its host name or IP address.
    pub host: String,
    /// Its gRPC port.
    pub port: u16,
    /// The subscriber's TLS config: TLS 1.3, its SVID, the controller's SPIFFE ID pinned,
    /// ALPN `h2`.
    pub tls: Arc<rustls::ClientConfig>,
    /// For the TCP connection, and again for the TLS handshake.
    pub timeout: Duration,
}

/// A client of `Discovery` on one connection; it lives as long as the connection.
pub type Client = DiscoveryClient<Channel>;

/// Connects to the controller; the error says which step failed.
pub async fn connect(dial: &Dial) -> Result<Client, String> {
    let (host, port) = (dial.host.as_str(), dial.port);
    let tcp = tokio::time::timeout(dial.timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connect to {host}:{port} timed out"))?
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let server_name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let stream = tokio::time::timeout(
        dial.timeout,
        TlsConnector::from(dial.tls.clone()).connect(server_name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_owned())?
    .map_err(|e| format!("TLS: {e}"))?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "controller connection ended");
        }
    });
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let origin = format!("https://{authority}")
        .parse()
        .map_err(|e| format!("https://{authority}: {e}"))?;
    Ok(DiscoveryClient::with_origin(Channel { sender }, origin)
        .max_decoding_message_size(crate::pieces::MAX_MESSAGE_BYTES))
}

/// The one HTTP/2 connection a subscription runs on, as the service tonic's client
/// calls: no pool, no balancer, no buffer task.
#[derive(Clone)]
pub struct Channel {
    sender: SendRequest<tonic::body::Body>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}
