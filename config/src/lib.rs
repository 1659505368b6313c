//! The sidecar's one configuration file (YAML). Every setting has a safe default; unknown
//! fields and bad values are one error naming file:line:column, and nothing starts.
//!
//! ```yaml
//! identity:
//!   trust_domain: demo.airlock
//!   ca_url: https://127.0.0.1:15012
//!   ca_bundle: ca/bundle.pem          # roots the CA's certificate must chain to
//!   token_file: token                 # join token or service-account JWT
//! inbound:
//!   listen: 127.0.0.2:15008           # mesh transport (the pod IP)
//!   ports:
//!   - {port: 8080, protocol: tcp, app: 127.0.0.1:8080}
//! outbound:
//!   upstreams:
//!   - {listen: 127.0.0.1:9001, service: payments, port: 8080}
//! registry:
//!   payments:
//!     identity: spiffe://demo.airlock/ns/pay/sa/payments
//!     endpoints: [127.0.0.3:15008]
//! policy:
//!   paths: [policies/]
//!   default: deny
//! ```
//!
//! Relative paths are resolved against the config file's directory.
//!
//! One crate holds the schema, so that the sidecar that reads the file and everything
//! that writes one (the injector, the demo, the tests) agree by construction: writers
//! build a [`Config`] and call [`Config::to_yaml`].

mod access_log;
mod file;
pub mod ports;
pub mod routes;
mod sidecar;

pub use access_log::{AccessLogConfig, FileSinkConfig, Redaction, SECRET_HEADERS, SinkKind};
pub use file::{Dialed, service_at};
pub use sidecar::*;
