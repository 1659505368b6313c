//! A WebSocket upgrade on a routed port. After the switch the bytes are a stream, not
//! requests, so the upgrade cannot travel as an HTTP/2 request of its own: it goes the
//! way tunnels do, as one CONNECT stream to the endpoint the balancer picks, where the
//! callee's L7 authorizes the upgrade request and relays the bytes after its 101.

use std::net::SocketAddr;
use std::sync::Arc;

use airlock_identity::SpiffeId;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::RoutedTarget;
use super::attempt::Tried;
use super::balance::{Balancer, Outcome};
use crate::Shared;
use crate::l7::body::{BoxError, ProxyBody};
use crate::l7::headers::remove_hop_by_hop;
use crate::l7::refusal::Refusal;
use crate::mesh_request::remove_sidecar_headers;
use crate::metrics::Disposition;
use crate::pool::OpenError;

/// Sends the app's upgrade request through a CONNECT stream to one endpoint and, on
/// `101`, relays the app's connection to it until either side ends or idles out.
pub(super) async fn upgrade(
    shared: &Arc<Shared>,
    balancer: &Balancer,
    identity: &SpiffeId,
    target: RoutedTarget,
    mut request: Request<Incoming>,
    tried: &Tried,
) -> Result<Response<ProxyBody>, Refusal> {
    let in_flight = balancer.pick_for(target.pinned, &[]).ok_or_else(|| {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service has no endpoints".into(),
        )
    })?;
    let endpoint = in_flight.endpoint();
    tried
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(endpoint);
    let target = SocketAddr::new(endpoint.ip(), target.port);
    let opened = shared
        .pool
        .open(endpoint, identity, &target.to_string())
        .await;
    let stream = match opened {
        Ok(stream) => stream,
        Err(error) => {
            let outcome = match error {
                OpenError::Connect { .. } | OpenError::Tls { .. } => Outcome::Unreachable,
                _ => Outcome::Failure,
            };
            balancer.finish(&in_flight, outcome);
            let status = match error {
                OpenError::Refused { status, .. } => status,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return Err(refusal(status, error.to_string()));
        }
    };
    balancer.finish(&in_flight, Outcome::Success);
    let from_app = hyper::upgrade::on(&mut request);
    remove_sidecar_headers(request.headers_mut());
    remove_hop_by_hop(request.headers_mut(), true);
    let failed = |e: hyper::Error| refusal(StatusCode::BAD_GATEWAY, format!("{endpoint}: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(stream.io.into_inner())
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let mut response = sender.send_request(request).await.map_err(failed)?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let from_mesh = hyper::upgrade::on(&mut response);
        let shared = shared.clone();
        let slot = stream.slot;
        tokio::spawn(async move {
            let (Ok(app), Ok(mesh)) = (from_app.await, from_mesh.await) else {
                return;
            };
            // The callee re-checks its side of the relay; this side ends with either.
            crate::relay::relay(
                TokioIo::new(app),
                TokioIo::new(mesh),
                shared.config.limits.idle_timeout,
                std::future::pending(),
            )
            .await;
            // Outstanding at its endpoint, and a stream on its connection, until it ends.
            drop((in_flight, slot));
        });
    }
    Ok(response.map(|body| body.map_err(BoxError::from).boxed()))
}

fn refusal(status: StatusCode, reason: String) -> Refusal {
    Refusal {
        status,
        reason,
        decision: Disposition::Allow,
        limit: None,
    }
}
