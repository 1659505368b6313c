//! The live SVID store: the sidecar's (or CA server's) current certificate and key.
//!
//! rustls asks the store for a certificate on every handshake, so installing a new SVID
//! takes effect on the next handshake while established connections keep the session
//! they already negotiated. Readers never block: the swap is one atomic pointer store.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::svid::{LeafSvid, SvidError, inspect_leaf};

/// Why [`SvidStore::install`] refused a certificate and key; the previous SVID stays.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The chain holds no certificate at all.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// The first certificate breaks an X.509-SVID leaf rule.
    #[error("the leaf is not an X.509-SVID: {0}")]
    NotAnSvid(#[from] SvidError),
    /// rustls could not load the key, or it is not the leaf's key.
    #[error("the private key does not fit the certificate: {0}")]
    Key(#[from] rustls::Error),
}

struct Installed {
    certified: Arc<CertifiedKey>,
    leaf: LeafSvid,
}

/// Holds at most one SVID at a time; starts empty.
pub struct SvidStore {
    current: ArcSwapOption<Installed>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for SvidStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the public facts: never the key.
        f.debug_struct("SvidStore")
            .field("current", &self.current().map(|leaf| leaf.id))
            .finish()
    }
}

impl SvidStore {
    /// An empty store; until the first [`install`](Self::install) it presents no
    /// certificate. `provider` loads the keys installed later.
    pub fn new(provider: Arc<CryptoProvider>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            provider,
        })
    }

    /// Validates the leaf's SVID shape and that `key` belongs to it, then makes it the
    /// certificate of every following handshake. Returns what the leaf says.
    pub fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<LeafSvid, StoreError> {
        let leaf = inspect_leaf(chain.first().ok_or(StoreError::EmptyChain)?)?;
        let certified = CertifiedKey::from_der(chain, key, &self.provider)?;
        self.current.store(Some(Arc::new(Installed {
            certified: Arc::new(certified),
            leaf: leaf.clone(),
        })));
        Ok(leaf)
    }

    /// The installed SVID's facts, if any.
    pub fn current(&self) -> Option<LeafSvid> {
        self.current.load().as_ref().map(|i| i.leaf.clone())
    }

    /// The certificate to present, unless it has expired: presenting an expired SVID
    /// only makes the peer refuse the handshake (and would spoil a token-authenticated
    /// request to the CA).
    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.current
            .load()
            .as_ref()
            .filter(|i| now < i.leaf.not_after)
            .map(|i| i.certified.clone())
    }
}

impl ResolvesServerCert for SvidStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }
}

impl ResolvesClientCert for SvidStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.certified_key().is_some()
    }
}
