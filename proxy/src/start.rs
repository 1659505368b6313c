//! What [`run`](crate::run) does first: bind every listener, each named by its role in
//! errors, and report the addresses bound (a configured port 0 included); and the errors
//! that stop the sidecar before it serves.

use std::net::SocketAddr;

use airlock_ca::client::ClientError;
use airlock_identity::bundle::BundleError;
use airlock_policy::load::LoadError;
use tokio::net::TcpListener;

use crate::access_log::AccessLogError;
use crate::outbound;

/// Why [`run`] could not start the sidecar. Each message names the setting, listener or
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `identity.ca_bundle` is unreadable or holds no valid trust bundle.
    #[error("identity.ca_bundle: {0}")]
    CaBundle(#[source] BundleError),
    /// `identity.ca_url` is no `https://host:port` URL of the CA.
    #[error("identity.ca_url: {0}")]
    CaUrl(#[source] ClientError),
    /// The policy files do not load: every problem found, one per line.
    #[error("{}", one_per_line(.0))]
    Policy(Vec<LoadError>),
    /// A listener could not bind its configured address.
    #[error("cannot listen on {addr} ({role}): {source}")]
    Bind {
        /// The configured address (port 0 included) that could not be bound.
        addr: SocketAddr,
        /// Which listener it was for.
        role: ListenerRole,
        /// The system's reason (address in use, permission denied, ...).
        #[source]
        source: std::io::Error,
    },
    /// The system did not say where a listener is bound.
    #[error("reading a bound address: {0}")]
    BoundAddress(#[source] std::io::Error),
    /// The access log's sink could not be opened.
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
    /// The registry (the config file's services and `registry_file`'s) is invalid; the
    /// message is the configuration's own.
    #[error("{0}")]
    Registry(String),
}

fn one_per_line(errors: &[LoadError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Which of the sidecar's listeners, in the words errors name it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerRole {
    /// `inbound.listen`.
    InboundMesh,
    /// `inbound.permissive_listen`.
    InboundPermissive,
    /// `admin.listen`.
    Admin,
    /// `admin.health_listen`.
    Health,
    /// One of `outbound.upstreams`, by its service.
    Upstream(String),
    /// `outbound.transparent`.
    TransparentOutbound,
}

impl std::fmt::Display for ListenerRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InboundMesh => f.write_str("inbound mesh transport"),
            Self::InboundPermissive => f.write_str("inbound permissive plaintext"),
            Self::Admin => f.write_str("admin"),
            Self::Health => f.write_str("health"),
            Self::Upstream(service) => write!(f, "upstream {service}"),
            Self::TransparentOutbound => f.write_str("transparent outbound"),
        }
    }
}

pub(crate) async fn bind(role: ListenerRole, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, role, source })
}

/// The addresses the sidecar's listeners actually bound: a configured port 0 shows here
/// as the port the system picked.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The mesh transport.
    pub inbound: SocketAddr,
    /// The permissive plaintext listener, when one is configured.
    pub permissive: Option<SocketAddr>,
    /// The admin API.
    pub admin: SocketAddr,
    /// The health listener.
    pub health: SocketAddr,
    /// Each explicit upstream listener: (service, destination port, bound address).
    pub upstreams: Vec<(String, u16, SocketAddr)>,
    /// The transparent outbound listener, when one is configured.
    pub transparent: Option<SocketAddr>,
}

impl std::fmt::Display for Bound {
    /// `inbound A admin B health C`, then the optional listeners that are there.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "inbound {} admin {} health {}",
            self.inbound, self.admin, self.health
        )?;
        if let Some(addr) = self.permissive {
            write!(f, " permissive {addr}")?;
        }
        if let Some(addr) = self.transparent {
            write!(f, " transparent {addr}")?;
        }
        for (service, port, addr) in &self.upstreams {
            write!(f, " upstream {service}:{port}={addr}")?;
        }
        Ok(())
    }
}

/// Reads back where each listener is bound.
pub(crate) fn bound_addresses(
    inbound: &TcpListener,
    permissive: Option<&TcpListener>,
    admin: &TcpListener,
    health: &TcpListener,
    upstreams: &[(TcpListener, outbound::Route)],
) -> Result<Bound, StartError> {
    let addr = |listener: &TcpListener| listener.local_addr().map_err(StartError::BoundAddress);
    let mut bound = Bound {
        inbound: addr(inbound)?,
        permissive: permissive.map(addr).transpose()?,
        admin: addr(admin)?,
        health: addr(health)?,
        upstreams: Vec::new(),
        transparent: None,
    };
    for (listener, route) in upstreams {
        match route {
            outbound::Route::Service { name, port } => {
                bound.upstreams.push((name.clone(), *port, addr(listener)?));
            }
            outbound::Route::OriginalDestination => bound.transparent = Some(addr(listener)?),
        }
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_that_cannot_bind_is_named_by_address_and_role() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind(ListenerRole::Upstream("payments".into()), addr)
            .await
            .unwrap_err();
        let text = error.to_string();
        let expected = format!("cannot listen on {addr} (upstream payments): ");
        assert!(text.starts_with(&expected), "{text}");
        assert!(std::error::Error::source(&error).is_some());
        let roles = [
            (ListenerRole::InboundMesh, "inbound mesh transport"),
            (
                ListenerRole::InboundPermissive,
                "inbound permissive plaintext",
            ),
            (ListenerRole::Admin, "admin"),
            (ListenerRole::Health, "health"),
            (ListenerRole::TransparentOutbound, "transparent outbound"),
        ];
        for (role, text) in roles {
            assert_eq!(role.to_string(), text);
        }
    }
}
