//! Workload identity for airlock: SPIFFE IDs, X.509-SVID rules, trust bundles, the rustls
//! verifiers that enforce them, and the live SVID store that rotation swaps into.
//!
//! Every other airlock crate names and checks workloads through this one.

pub mod bundle;
pub mod revocation;
pub mod spiffe_id;
pub mod store;
pub mod svid;
pub mod tls;
pub mod verifier;

pub use bundle::{BundleStore, TrustBundle};
pub use revocation::{Revocations, Revoked};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use store::SvidStore;
pub use svid::{LeafSvid, SvidError, hex};
pub use verifier::{PeerMatch, peer_id, peer_svid};
