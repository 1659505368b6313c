//! The one TLS setup of the whole tree: rustls with the *ring* provider, TLS 1.3 only.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};

use crate::bundle::BundleStore;
use crate::store::SvidStore;
use crate::verifier::{PeerMatch, SpiffeClientVerifier, SpiffeServerVerifier};

/// The crypto provider every airlock TLS endpoint uses (ring; see docs/ARCHITECTURE.md).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 server config that presents the store's SVID and verifies client SVIDs.
pub fn server_config(
    store: Arc<SvidStore>,
    bundle: Arc<BundleStore>,
    client_cert_mandatory: bool,
    alpn: &[&[u8]],
) -> ServerConfig {
    let provider = provider();
    let verifier = SpiffeClientVerifier::new(bundle, provider.clone(), client_cert_mandatory);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store);
    // No resumption: every connection runs the verifier against the current bundle and
    // presents a live SVID, so an expired or rotated-out certificate cannot ride on a
    // ticket. Mesh connections are pooled, so full handshakes are rare anyway.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS 1.3 client config that pins the server's SPIFFE ID and presents the store's
/// SVID when it holds one.
pub fn client_config(
    store: Arc<SvidStore>,
    bundle: Arc<BundleStore>,
    expected_server: PeerMatch,
    alpn: &[&[u8]],
) -> ClientConfig {
    let provider = provider();
    let verifier = SpiffeServerVerifier::new(bundle, expected_server, provider.clone());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(store);
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}
