//! Which protocol the sidecar serves a port with, from what Kubernetes says of the port:
//! a Service port's `appProtocol`, or the port's name (`http`, `http-metrics`, `grpc-api`,
//! `redis`), following the naming convention Istio and Linkerd users already keep.
//!
//! `http` ports are authorized request by request; `tcp` ports once per connection;
//! `auto` detects from the caller's first bytes and is left for ports nothing names.
//! Guessing `http` for a port that is not would answer 400s, and guessing `tcp` for an
//! HTTP port would lose per-request authorization, so only explicit names decide.

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
pub fn protocol_of_port(app_protocol: Option<&str>, name: Option<&str>) -> &'static str {
    if let Some(app_protocol) = app_protocol {
        let app_protocol = app_protocol.to_ascii_lowercase();
        match app_protocol.as_str() {
            "kubernetes.io/h2c" | "kubernetes.io/ws" => return "http",
            "kubernetes.io/wss" => return "tcp",
            known if HTTP.contains(&known) => return "http",
            known if TCP.contains(&known) => return "tcp",
            _ => {}
        }
    }
    let Some(name) = name else {
        return "auto";
    };
    let name = name.to_ascii_lowercase();
    // `<protocol>` or `<protocol>-<anything>`; `grpc-web` is a protocol of its own but
    // reads the same either way.
    let protocol = name
        .split_once('-')
        .map_or(name.as_str(), |(first, _)| first);
    if HTTP.contains(&protocol) {
        "http"
    } else if TCP.contains(&protocol) {
        "tcp"
    } else {
        "auto"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_table() {
        let cases = [
            (None, Some("http"), "http"),
            (None, Some("http-metrics"), "http"),
            (None, Some("HTTP-API"), "http"),
            (None, Some("http2"), "http"),
            (None, Some("grpc"), "http"),
            (None, Some("grpc-web"), "http"),
            (None, Some("h2c-x"), "http"),
            (None, Some("tcp-db"), "tcp"),
            (None, Some("https"), "tcp"),
            (None, Some("tls-passthrough"), "tcp"),
            (None, Some("redis"), "tcp"),
            (None, Some("mysql-primary"), "tcp"),
            (None, Some("web"), "auto"),
            (None, Some("httpx"), "auto"),
            (None, Some("metrics"), "auto"),
            (None, None, "auto"),
            (Some("http"), Some("db"), "http"),
            (Some("kubernetes.io/h2c"), None, "http"),
            (Some("kubernetes.io/ws"), None, "http"),
            (Some("kubernetes.io/wss"), Some("http"), "tcp"),
            (Some("grpc"), None, "http"),
            (Some("TCP"), Some("http"), "tcp"),
            (Some("example.com/custom"), Some("http-x"), "http"),
            (Some("example.com/custom"), None, "auto"),
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
