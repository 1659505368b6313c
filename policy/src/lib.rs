//! airlock's authorization policies.
//!
//! - [`model`]: the YAML documents, validated as they are read;
//! - [`values`]: their scalar values (principals, CIDRs, ports, patterns, times), each with
//!   its own parser;
//! - [`load`]: files and directories → policies and test suites, errors at file:line:column;
//! - [`set`]: the compiled set, indexed by target workload;
//! - [`eval`]: pure decisions (time is an input) with their reasons;
//! - [`http`]: path, host and method normalization done once before matching;
//! - [`lint`], [`suite`]: `airlock policy check` and `airlock policy test`;
//! - [`store`]: the hot-reloading live set for the proxy.
//!
//! Evaluation reads no clock and opens no socket, so every rule is table-testable.

pub mod eval;
pub mod http;
pub mod lint;
pub mod load;
pub mod matcher;
pub mod model;
pub mod set;
pub mod store;
pub mod suite;
pub mod values;

pub use eval::{Decision, DefaultMode, Reason, Request};
pub use set::{Policy, PolicyId, PolicySet};
