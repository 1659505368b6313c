//! Which protocol the sidecar serves a port with, from what Kubernetes says of the port:
//! a Service port's `appProtocol`, or the port's name (`http`, `http-metrics`, `grpc-api`,
//! `redis`), following the naming convention Istio and Linkerd users already keep.
//!
//! `http` ports are authorized request by request; `tcp` ports once per connection;
//! `auto` detects from the caller's first bytes and is left for ports nothing names.
//! Guessing `http` for a port that is not would answer 400s, and guessing `tcp` for an
//! HTTP port would lose per-request authorization, so only explicit names decide.

use airlock_config::PortProtocol;

/// Names (and `appProtocol` values) of HTTP, HTTP/2 and gRPC ports.
const HTTP: [&str; 5] = ["http", "http2", "h2c", "grpc", "grpc-web"];
/// Names of protocols that are not HTTP as the sidecar sees them (TLS of the app's own
/// is opaque too).
const TCP: [&str; 14] = [
    "tcp",
    "tls",
    "https",
    "mongo",
    "mongodb",
    "mysql",
    "redis",
    "postgres",
    "postgresql",
    "kafka",
    "zookeeper",
    "amqp",
    "mqtt",
    "nats",
];

/// `http`, `tcp` or `auto` for a port with this `appProtocol` and name.
pub fn protocol_of_port(app_protocol: Option<&str>, name: Option<&str>) -> PortProtocol {
    if let Some(app_protocol) = app_protocol {
        let app_protocol = app_protocol.to_ascii_lowercase();
        match app_protocol.as_str() {
            "kubernetes.io/h2c" | "kubernetes.io/ws" => return PortProtocol::Http,
            "kubernetes.io/wss" => return PortProtocol::Tcp,
            known if HTTP.contains(&known) => return PortProtocol::Http,
            known if TCP.contains(&known) => return PortProtocol::Tcp,
            _ => {}
        }
    }
    let Some(name) = name else {
        return PortProtocol::Auto;
    };
    let name = name.to_ascii_lowercase();
    // `<protocol>` or `<protocol>-<anything>`; `grpc-web` is a protocol of its own but
    // reads the same either way.
    let protocol = name
        .split_once('-')
        .map_or(name.as_str(), |(first, _)| first);
    if HTTP.contains(&protocol) {
        PortProtocol::Http
    } else if TCP.contains(&protocol) {
        PortProtocol::Tcp
    } else {
        PortProtocol::Auto
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PortProtocol::{Auto, Http, Tcp};

    #[test]
    fn protocol_table() {
        let cases = [
            (None, Some("http"), Http),
            (None, Some("http-metrics"), Http),
            (None, Some("HTTP-API"), Http),
            (None, Some("http2"), Http),
            (None, Some("grpc"), Http),
            (None, Some("grpc-web"), Http),
            (None, Some("h2c-x"), Http),
            (None, Some("tcp-db"), Tcp),
            (None, Some("https"), Tcp),
            (None, Some("tls-passthrough"), Tcp),
            (None, Some("redis"), Tcp),
            (None, Some("mysql-primary"), Tcp),
            (None, Some("web"), Auto),
            (None, Some("httpx"), Auto),
            (None, Some("metrics"), Auto),
            (None, None, Auto),
            (Some("http"), Some("db"), Http),
            (Some("kubernetes.io/h2c"), None, Http),
            (Some("kubernetes.io/ws"), None, Http),
            (Some("kubernetes.io/wss"), Some("http"), Tcp),
            (Some("grpc"), None, Http),
            (Some("TCP"), Some("http"), Tcp),
            (Some("example.com/custom"), Some("http-x"), Http),
            (Some("example.com/custom"), None, Auto),
        ];
        for (app_protocol, name, want) in cases {
            assert_eq!(
                protocol_of_port(app_protocol, name),
                want,
                "{app_protocol:?} {name:?}"
            );
        }
    }
}
