//! Routed HTTP on the mesh transport: a request the caller's sidecar sends as its own
//! HTTP/2 request (not inside a CONNECT tunnel) carries the target port and the calling
//! app's protocol in two headers that only sidecars write. The caller's sidecar removes
//! every `airlock-` header its app sent before writing them, and the callee's sidecar
//! reads and removes every `airlock-` header of each mesh request (routed or CONNECT), so
//! no app can speak for a sidecar.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// The port on the destination workload.
pub(crate) const TARGET_PORT_HEADER: HeaderName = HeaderName::from_static("airlock-target-port");
/// `http1` or `http2`: what the calling app spoke, and so what the callee's app gets.
pub(crate) const APP_PROTOCOL_HEADER: HeaderName = HeaderName::from_static("airlock-app-protocol");
/// Every header whose name starts with this is the mesh's own.
const SIDECAR_PREFIX: &str = "airlock-";

/// The protocol the calling app spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppProtocol {
    Http1,
    Http2,
}

impl AppProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

/// Where a routed request goes on the callee's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteTarget {
    pub(crate) port: u16,
    pub(crate) protocol: AppProtocol,
}

/// Removes every header an app might use to pose as a sidecar (`airlock-*`).
pub(crate) fn remove_sidecar_headers(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(SIDECAR_PREFIX))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// The caller's side: removes what the app sent under the mesh's names, then writes the
/// target.
pub(crate) fn stamp(headers: &mut HeaderMap, target: RouteTarget) {
    remove_sidecar_headers(headers);
    headers.insert(TARGET_PORT_HEADER, HeaderValue::from(target.port));
    headers.insert(
        APP_PROTOCOL_HEADER,
        HeaderValue::from_static(target.protocol.as_str()),
    );
}

/// The callee's side: `None` for a request without routing metadata (not a routed
/// request); an error for malformed metadata. Either way no `airlock-` header remains.
pub(crate) fn take(headers: &mut HeaderMap) -> Option<Result<RouteTarget, String>> {
    let port = headers.remove(TARGET_PORT_HEADER);
    let protocol = headers.remove(APP_PROTOCOL_HEADER);
    remove_sidecar_headers(headers);
    let port = port?;
    let parsed = (|| {
        let port = port
            .to_str()
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .ok_or("airlock-target-port is not a port")?;
        let protocol = match protocol.as_ref().map(HeaderValue::as_bytes) {
            Some(b"http1") => AppProtocol::Http1,
            Some(b"http2") => AppProtocol::Http2,
            _ => return Err("airlock-app-protocol must be http1 or http2"),
        };
        Ok(RouteTarget { port, protocol })
    })();
    Some(parsed.map_err(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (n.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn an_app_cannot_set_the_routing_metadata() {
        let mut sent = headers(&[
            ("airlock-target-port", "22"),
            ("airlock-app-protocol", "http2"),
            ("airlock-anything", "x"),
            ("accept", "*/*"),
        ]);
        let target = RouteTarget {
            port: 8080,
            protocol: AppProtocol::Http1,
        };
        stamp(&mut sent, target);
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(take(&mut sent), Some(Ok(target)));
        assert_eq!(sent.len(), 1, "only accept is left: {sent:?}");
    }

    #[test]
    fn the_callee_reads_only_well_formed_metadata() {
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<Result<RouteTarget, String>>,
        );
        let cases: [Case; 5] = [
            (&[("accept", "*/*")], None),
            (&[("airlock-app-protocol", "http1")], None),
            (
                &[
                    ("airlock-target-port", "0"),
                    ("airlock-app-protocol", "http1"),
                ],
                Some(Err("airlock-target-port is not a port".into())),
            ),
            (
                &[
                    ("airlock-target-port", "80"),
                    ("airlock-app-protocol", "h3"),
                ],
                Some(Err("airlock-app-protocol must be http1 or http2".into())),
            ),
            (
                &[
                    ("airlock-target-port", "80"),
                    ("airlock-app-protocol", "http2"),
                ],
                Some(Ok(RouteTarget {
                    port: 80,
                    protocol: AppProtocol::Http2,
                })),
            ),
        ];
        for (pairs, expected) in cases {
            let mut map = headers(pairs);
            assert_eq!(take(&mut map), expected, "{pairs:?}");
            assert!(map.keys().all(|n| !n.as_str().starts_with("airlock-")));
        }
    }
}
