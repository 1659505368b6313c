//! airlock's workload certificate authority: encrypted key storage, SVID issuance from the
//! CA's own template, caller authentication (join tokens, Kubernetes service-account
//! JWTs, SVID renewal), the HTTPS API, and the client sidecars use to call it.

pub mod authority;
pub mod client;
pub mod config;
pub mod csr;
pub mod json_file;
pub mod jwt;
#[allow(unsafe_code)] // getegid/getgroups: whether a key file's group is ours
pub mod keys;
pub mod listener;
pub mod ratelimit;
pub mod reload;
pub mod revocations;
pub mod rotation;
pub mod server;
pub mod tokens;
pub mod wire;
pub mod workload;

pub use authority::{CertificateAuthority, IssuedSvid};
pub use config::CaConfig;
