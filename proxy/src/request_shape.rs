//! The shape of an inbound HTTP request, checked before policy sees it: sizes and counts
//! (414, 431, 413), the method's spelling, the target's form and path normalization, one
//! consistent authority, and which header names may pass at all. Pure functions of the
//! request head, so l7 stays about forwarding.

use airlock_policy::http::{
    PathOptions, check_method, header_name_matches, normalize_host, normalize_path,
};
use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode, Version};

use crate::config::{HttpLimits, UnderscoreHeaders};

/// The verified peer identity, as the app receives it.
pub const PEER_IDENTITY_HEADER: &str = "x-airlock-peer-identity";
/// The standard client-certificate header (`By=<this workload>;URI=<peer>`).
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";
/// Headers only this sidecar writes; no spelling of them may reach the app from a caller.
pub const PROTECTED_HEADERS: [&str; 2] = [PEER_IDENTITY_HEADER, XFCC_HEADER];

/// Why a request head is refused: its status, its reason, and the limit it broke (for
/// `airlock_http_limit_rejections`), if it was one.
#[derive(Debug)]
pub struct ShapeRefusal {
    /// The answer's status: 400 for a malformed head, 413, 414 or 431 for a broken limit.
    pub status: StatusCode,
    /// What was wrong, in words for the caller (the response body) and the access log.
    pub reason: String,
    /// The `limit` label of `airlock_http_limit_rejections` (`uri_bytes`, `headers`,
    /// `body_bytes`); `None` when the head is malformed rather than too big.
    pub limit: Option<&'static str>,
}

impl ShapeRefusal {
    /// A malformed or ambiguous head: 400, no limit.
    pub fn shape(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
            limit: None,
        }
    }

    /// A head over one of the port's `limits`: `status`, counted under `limit`.
    pub fn limit(status: StatusCode, limit: &'static str, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            limit: Some(limit),
        }
    }
}

/// Applies the port's rule for header names holding `_`, which CGI, WSGI and Rack stacks
/// read as the dashed name (the Puma CVE-2024-45614 class): `drop` them (nginx's default),
/// `reject` the request, or `allow` them, except where the dashed form is a header only
/// this sidecar may set.
pub fn screen_header_names(
    headers: &mut HeaderMap,
    rule: UnderscoreHeaders,
) -> Result<(), ShapeRefusal> {
    let underscored: Vec<header::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in underscored {
        let protected = PROTECTED_HEADERS
            .iter()
            .any(|p| header_name_matches(name.as_str(), p));
        match rule {
            UnderscoreHeaders::Drop => {
                headers.remove(&name);
            }
            UnderscoreHeaders::Reject => {
                return Err(ShapeRefusal::shape(format!(
                    "the header name {:?} holds an underscore (headers_with_underscores: reject)",
                    name.as_str()
                )));
            }
            UnderscoreHeaders::Allow if protected => {
                return Err(ShapeRefusal::shape(format!(
                    "the header name {:?} is a spelling of a header only the sidecar sets",
                    name.as_str()
                )));
            }
            UnderscoreHeaders::Allow => {}
        }
    }
    Ok(())
}

/// The normalized attributes of an acceptable request.
pub struct Shape {
    /// The normalized path, without query: what policies match and what the app gets.
    pub path: String,
    /// The query (without `?`), forwarded untouched; `None` when the target has none.
    pub query: Option<String>,
    /// Lower case, without port.
    pub host: String,
    /// What the forwarded request's URI authority is.
    pub authority: Option<http::uri::Authority>,
}

/// Refuses malformed or oversized request heads; normalizes the rest.
pub fn check_shape<B>(request: &Request<B>, limits: &HttpLimits) -> Result<Shape, ShapeRefusal> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or("", |p| p.as_str());
    if target.len() > limits.max_uri_bytes {
        return Err(ShapeRefusal::limit(
            StatusCode::URI_TOO_LONG,
            "uri_bytes",
            "the request target is too long",
        ));
    }
    let headers = request.headers();
    if headers.len() > limits.max_headers {
        return Err(ShapeRefusal::limit(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers",
            "too many request headers",
        ));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + target.len();
    if header_bytes > limits.max_header_bytes {
        return Err(ShapeRefusal::limit(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers",
            "the request headers are too large",
        ));
    }
    check_method(request.method().as_str()).map_err(|e| ShapeRefusal::shape(e.to_string()))?;
    if request.method() == Method::CONNECT || uri.path_and_query().is_none() {
        return Err(ShapeRefusal::shape(
            "only origin-form request targets are served",
        ));
    }
    let options = PathOptions {
        allow_encoded_slashes: limits.allow_encoded_slashes,
    };
    let normalized =
        normalize_path(target, options).map_err(|e| ShapeRefusal::shape(e.to_string()))?;
    if let (Some(max), Some(length)) = (limits.max_body_bytes, declared_length(headers)?)
        && length > max
    {
        return Err(ShapeRefusal::limit(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_bytes",
            "the request body is too large",
        ));
    }
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err(ShapeRefusal::shape("more than one Host header"));
    }
    let host_header = headers
        .get(header::HOST)
        .map(|host| {
            host.to_str()
                .ok()
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .ok_or_else(|| ShapeRefusal::shape("the Host header is malformed"))
        })
        .transpose()?;
    // The absolute form's authority (and HTTP/2's :authority) names the target (RFC 9112
    // §3.2.2); a Host header that says otherwise would let the app route on a name
    // policy never saw.
    let authority = match (uri.authority(), host_header) {
        (Some(target), Some(host)) if !target.as_str().eq_ignore_ascii_case(host.as_str()) => {
            return Err(ShapeRefusal::shape(
                "the Host header and the request authority differ",
            ));
        }
        (Some(target), _) => Some(target.clone()),
        (None, Some(host)) => Some(host),
        (None, None) if request.version() == Version::HTTP_11 => {
            return Err(ShapeRefusal::shape(
                "an HTTP/1.1 request needs a Host header",
            ));
        }
        (None, None) => None,
    };
    // Userinfo (`user:pw@host`) has no place in a request authority (RFC 9110 §4.2.4),
    // and would blur what `hosts` rules match.
    if authority.as_ref().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ShapeRefusal::shape("the request authority holds userinfo"));
    }
    Ok(Shape {
        host: authority
            .as_ref()
            .map(|a| normalize_host(a.host()))
            .unwrap_or_default(),
        path: normalized.path,
        query: normalized.query,
        authority,
    })
}

fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, ShapeRefusal> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ShapeRefusal::shape("the Content-Length header is malformed"))
        })
        .transpose()
}

/// Request trailers arrive after the decision, so no rule about them could have been
/// checked: the sidecar-only headers and every name holding `_` are removed from them,
/// whatever the port allows in the head.
pub fn screen_trailers(trailers: &mut HeaderMap) {
    let removed: Vec<header::HeaderName> = trailers
        .keys()
        .filter(|name| {
            name.as_str().contains('_')
                || PROTECTED_HEADERS
                    .iter()
                    .any(|p| header_name_matches(name.as_str(), p))
        })
        .cloned()
        .collect();
    for name in removed {
        trailers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_rules() {
        let request = || {
            let mut headers = HeaderMap::new();
            for name in ["x-tenant", "x_tenant", "x_airlock_peer_identity"] {
                headers.insert(header::HeaderName::from_static(name), "v".parse().unwrap());
            }
            headers
        };
        let names = |headers: &HeaderMap| {
            let mut names: Vec<String> = headers.keys().map(|n| n.to_string()).collect();
            names.sort();
            names
        };
        let mut dropped = request();
        screen_header_names(&mut dropped, UnderscoreHeaders::Drop).unwrap();
        assert_eq!(names(&dropped), ["x-tenant"]);

        let err = screen_header_names(&mut request(), UnderscoreHeaders::Reject).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);

        let err = screen_header_names(&mut request(), UnderscoreHeaders::Allow).unwrap_err();
        assert!(
            err.reason.contains("only the sidecar sets"),
            "{}",
            err.reason
        );
        let mut allowed = HeaderMap::new();
        allowed.insert("x_tenant", "v".parse().unwrap());
        screen_header_names(&mut allowed, UnderscoreHeaders::Allow).unwrap();
        assert_eq!(names(&allowed), ["x_tenant"]);

        let mut trailers = request();
        trailers.insert("x-forwarded-client-cert", "v".parse().unwrap());
        screen_trailers(&mut trailers);
        assert_eq!(names(&trailers), ["x-tenant"]);
    }
}
