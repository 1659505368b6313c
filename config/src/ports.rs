//! The ports a sidecar listens on by default, which `airlock init-capture` steers
//! traffic to and around, and which the injector keeps free of app ports; and the
//! sidecar's UID, whose traffic capture leaves alone.

/// The admin API (loopback only).
pub const ADMIN: u16 = 15000;
/// The transparent outbound listener: captured application connections.
pub const OUTBOUND: u16 = 15001;
/// The plaintext capture listener of permissive ports.
pub const INBOUND_PLAINTEXT: u16 = 15006;
/// The mesh transport: mTLS HTTP/2 CONNECT from other sidecars.
pub const MESH: u16 = 15008;
/// `/live`, `/ready`, `/metrics` and the app's probes.
pub const HEALTH: u16 = 15020;
/// All of them.
pub const ALL: [u16; 5] = [ADMIN, OUTBOUND, INBOUND_PLAINTEXT, MESH, HEALTH];

/// The UID the sidecar runs as: capture never redirects its own connections.
pub const PROXY_UID: u32 = 1337;
