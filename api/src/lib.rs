//! The control plane's wire API (`proto/airlock/control/v1/discovery.proto`): the types
//! and gRPC stubs generated from it, the conversions between its `Service` and the
//! sidecar's registry entry ([`airlock_config::Service`]), and the canonical version of a
//! mesh view.
//!
//! `airlock control` serves [`proto::discovery_server::Discovery`]; the sidecar
//! subscribes with [`client::connect`], a tonic client on one mTLS HTTP/2 connection
//! that the caller's own TLS config sets up. Neither side links Kubernetes types: they
//! meet here.

pub mod client;
mod convert;
pub mod pieces;
mod version;

pub use convert::{ConvertError, service_from_wire, service_to_wire};
pub use version::view_version;

/// The generated protobuf types and gRPC stubs. Their documentation is the `.proto`
/// file's comments.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("airlock.control.v1");
}
