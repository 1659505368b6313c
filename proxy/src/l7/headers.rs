//! Header rules of the request path, pure functions of a header map: which headers are
//! hop-by-hop (and go), when an upgrade may pass, what marks gRPC, and the identity
//! headers only this sidecar writes.

use airlock_identity::SpiffeId;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::request_shape::{PEER_IDENTITY_HEADER, XFCC_HEADER};

/// gRPC, by its content type (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC proper, whose status comes in HTTP trailers; not gRPC-Web, which puts it in the
/// body (and which [`is_grpc`] includes).
pub(crate) fn is_grpc_with_trailers(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        value == b"application/grpc"
            || value.starts_with(b"application/grpc+")
            || value.starts_with(b"application/grpc;")
    })
}

/// A WebSocket upgrade (the one protocol switch relayed). Any other `Upgrade`, such as
/// `h2c`, is dropped as a hop-by-hop header: after a switch the bytes are no longer
/// authorized request by request, so only a protocol meant for it may switch.
pub(crate) fn wants_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the headers that belong to one hop (RFC 9110 §7.6.1), keeping `Upgrade` and
/// `Connection: upgrade` for a protocol switch and `TE: trailers` (gRPC needs it).
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !(upgrading && t.eq_ignore_ascii_case("upgrade")))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        header::TRANSFER_ENCODING.as_str(),
        header::TRAILER.as_str(),
    ] {
        headers.remove(name);
    }
    if !upgrading {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    } else {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(header::TE);
    }
}

/// The verified peer for the app: `x-airlock-peer-identity` and `x-forwarded-client-cert`
/// (none for a plaintext peer; both were stripped from the incoming request).
pub(super) fn set_identity_headers(
    headers: &mut HeaderMap,
    peer: Option<&SpiffeId>,
    own_id: &SpiffeId,
) {
    let Some(identity) = peer else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(identity.as_str()) {
        headers.insert(PEER_IDENTITY_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("By={own_id};URI={identity}")) {
        headers.insert(XFCC_HEADER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header lines, as a test case writes them.
    type Lines<'a> = &'a [(&'a str, &'a str)];

    fn map(pairs: Lines<'_>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<String> {
        let mut names: Vec<String> = headers.keys().map(|n| n.as_str().to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn hop_by_hop_headers_stop_at_this_hop() {
        // (headers in, upgrading, names left, why)
        let cases: &[(Lines, bool, &[&str], &str)] = &[
            (
                &[("accept", "*/*")],
                false,
                &["accept"],
                "end-to-end headers pass",
            ),
            (
                &[
                    ("connection", "keep-alive"),
                    ("keep-alive", "timeout=5"),
                    ("accept", "*/*"),
                ],
                false,
                &["accept"],
                "connection and keep-alive go",
            ),
            (
                &[
                    ("connection", "x-secret, close"),
                    ("x-secret", "1"),
                    ("x-kept", "1"),
                ],
                false,
                &["x-kept"],
                "a header named by Connection goes with it",
            ),
            (
                &[
                    ("connection", "x-a"),
                    ("connection", "x-b"),
                    ("x-a", "1"),
                    ("x-b", "1"),
                ],
                false,
                &[],
                "every Connection line counts",
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("trailer", "x-sum"),
                    ("proxy-connection", "keep-alive"),
                ],
                false,
                &[],
                "framing headers belong to the hop",
            ),
            (
                &[("te", "trailers")],
                false,
                &["te"],
                "TE: trailers stays for gRPC",
            ),
            (&[("te", "gzip")], false, &[], "any other TE goes"),
            (
                &[("upgrade", "websocket"), ("connection", "upgrade")],
                false,
                &[],
                "no upgrade: Upgrade goes",
            ),
            (
                &[
                    ("upgrade", "websocket"),
                    ("connection", "Upgrade, x-secret"),
                    ("x-secret", "1"),
                ],
                true,
                &["connection", "upgrade"],
                "upgrading: Upgrade and Connection stay, what Connection names still goes",
            ),
        ];
        for (headers, upgrading, left, why) in cases {
            let mut headers = map(headers);
            remove_hop_by_hop(&mut headers, *upgrading);
            assert_eq!(names(&headers), *left, "{why}");
            if *upgrading {
                assert_eq!(headers[header::CONNECTION], "upgrade", "{why}");
            }
        }
    }

    #[test]
    fn only_a_websocket_upgrade_over_http1_1_may_switch() {
        let ws = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        // (version, headers, wants, why)
        let cases: &[(Version, Lines, bool, &str)] = &[
            (Version::HTTP_11, &ws, true, "a WebSocket handshake"),
            (
                Version::HTTP_11,
                &[("upgrade", "WebSocket"), ("connection", "upgrade")],
                true,
                "any case",
            ),
            (Version::HTTP_10, &ws, false, "HTTP/1.0 has no upgrade"),
            (Version::HTTP_2, &ws, false, "HTTP/2 has no upgrade"),
            (
                Version::HTTP_11,
                &[("upgrade", "h2c"), ("connection", "upgrade")],
                false,
                "h2c would leave per-request checks",
            ),
            (
                Version::HTTP_11,
                &[("upgrade", "websocket")],
                false,
                "Connection must name it",
            ),
        ];
        for (version, headers, wants, why) in cases {
            assert_eq!(wants_upgrade(*version, &map(headers)), *wants, "{why}");
        }
    }

    #[test]
    fn grpc_is_known_by_its_content_type() {
        for (content_type, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/json", false),
            ("text/application/grpc", false),
        ] {
            assert_eq!(
                is_grpc(&map(&[("content-type", content_type)])),
                grpc,
                "{content_type}"
            );
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn identity_headers_name_the_verified_peer_only() {
        let own = SpiffeId::parse("spiffe://td/ns/pay/sa/api").unwrap();
        let caller = SpiffeId::parse("spiffe://td/ns/shop/sa/checkout").unwrap();
        let mut headers = HeaderMap::new();
        set_identity_headers(&mut headers, Some(&caller), &own);
        assert_eq!(headers[PEER_IDENTITY_HEADER], caller.as_str());
        assert_eq!(
            headers[XFCC_HEADER],
            "By=spiffe://td/ns/pay/sa/api;URI=spiffe://td/ns/shop/sa/checkout"
        );
        let mut plaintext = HeaderMap::new();
        set_identity_headers(&mut plaintext, None, &own);
        assert!(
            plaintext.is_empty(),
            "a plaintext peer has no identity to pass on"
        );
    }
}
