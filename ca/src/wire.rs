//! What the CA's API and its clients agree on: the bodies of `POST /v1/svid` and the
//! CA's own identity. The sidecar links this and [`crate::client`], never the server or
//! the authority.

use airlock_identity::{SpiffeId, TrustDomain};
use serde::{Deserialize, Serialize};

/// The identity of the CA's own API endpoint; never issued to callers, and the one a
/// client pins when it dials the CA.
pub fn ca_server_id(trust_domain: &TrustDomain) -> SpiffeId {
    SpiffeId::for_service_account(trust_domain, "airlock", "ca").expect("valid literal path")
}

/// Body of `POST /v1/svid`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidRequest {
    /// PEM PKCS#10 request; only its public key is used.
    pub csr: String,
    /// Requested lifetime in seconds (default: the CA's `default_ttl`).
    #[serde(default)]
    pub ttl: Option<u64>,
}

/// Answer of `POST /v1/svid`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SvidResponse {
    /// The identity the SVID was issued for: the one the caller authenticated as.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then the intermediate, one PEM each.
    pub chain: Vec<String>,
    /// Trust bundle roots, one PEM each.
    pub bundle: Vec<String>,
    /// RFC 3339.
    pub expires_at: String,
}
