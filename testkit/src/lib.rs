//! What the end-to-end tests and benchmarks share: the real `airlock` binary and the
//! independent tools (openssl, curl, Python `cryptography`, `grpcio`) run as processes,
//! a CA and sidecars for a test, network namespaces, and the small HTTP app that the
//! tests, the benchmarks and `airlock demo` put behind a sidecar.

mod ca;
mod control;
pub mod fake_kube;
pub mod http_app;
mod injector;
mod netns;
mod policy;
mod process;
mod sidecar;

pub use ca::*;
pub use control::*;
pub use injector::*;
pub use netns::*;
pub use policy::*;
pub use process::*;
pub use sidecar::*;
