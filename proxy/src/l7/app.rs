//! The app side of an HTTP port: a pooled HTTP/1.1 client per port, and one HTTP/2
//! connection per caller connection, both dialing the app's loopback address whatever
//! the request names.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::body::{BoxError, RequestBody};
use crate::config::{HttpLimits, InboundPort};

/// Idle HTTP/1 connections kept to the app of one port; more are closed when they idle.
const MAX_IDLE_APP_CONNECTIONS: usize = 64;

/// One HTTP port of this workload: its limits and a pooled client to the app.
pub(crate) struct HttpPort {
    pub port: u16,
    pub limits: HttpLimits,
    pub(super) in_flight: Arc<Semaphore>,
    /// HTTP/1.1 requests go to the app as HTTP/1.1 through this pool; HTTP/2 ones (gRPC)
    /// as HTTP/2 with prior knowledge, through the caller connection's [`AppHttp2`].
    http1: Client<AppConnector, RequestBody>,
    pub(super) app: SocketAddr,
    connect_timeout: Duration,
}

impl HttpPort {
    pub(crate) fn new(port: &InboundPort, connect_timeout: Duration) -> Self {
        let connector = AppConnector {
            app: port.app_addr(),
            timeout: connect_timeout,
        };
        let http1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(MAX_IDLE_APP_CONNECTIONS)
            .build(connector);
        Self {
            port: port.port,
            limits: port.http.clone(),
            in_flight: Arc::new(Semaphore::new(port.http.max_concurrent_requests)),
            http1,
            app: port.app_addr(),
            connect_timeout,
        }
    }

    /// Sends an HTTP/1.1 request to the app through the port's pool.
    pub(super) async fn send_http1(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        Ok(self.http1.request(request).await?)
    }
}

/// The HTTP/2 connections to the app that carry one caller connection's requests: one per
/// app port, opened at the first HTTP/2 request to that port and closed with the caller's
/// connection. Callers never queue behind one another on a single shared connection, the
/// app sees as many connections as it would without the mesh, and a request always
/// reaches the port it was authorized for (a mesh connection's routed requests may name
/// several).
pub(crate) struct AppHttp2 {
    senders: tokio::sync::Mutex<Vec<(u16, SendRequest<RequestBody>)>>,
}

impl AppHttp2 {
    /// No connection yet: the first HTTP/2 request to a port opens its connection.
    pub(crate) fn new() -> Self {
        Self {
            senders: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    pub(super) async fn send(
        &self,
        port: &HttpPort,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, BoxError> {
        let mut sender = {
            let mut senders = self.senders.lock().await;
            senders.retain(|(_, sender)| !sender.is_closed());
            match senders.iter().find(|(to, _)| *to == port.port) {
                Some((_, sender)) => sender.clone(),
                None => {
                    let sender = Self::connect(port).await?;
                    senders.push((port.port, sender.clone()));
                    sender
                }
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(request).await?)
    }

    async fn connect(port: &HttpPort) -> Result<SendRequest<RequestBody>, BoxError> {
        let stream = tokio::time::timeout(port.connect_timeout, TcpStream::connect(port.app))
            .await
            .map_err(|_| "connecting to the app timed out")??;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection to the app ended");
            }
        });
        Ok(sender)
    }
}

/// Connects to the app's address whatever the request URI says: the port's pool has one
/// key, and an HTTP/2 URI can keep the caller's authority.
#[derive(Clone)]
struct AppConnector {
    app: SocketAddr,
    timeout: Duration,
}

impl tower_service::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (app, timeout) = (self.app, self.timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(app))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}
