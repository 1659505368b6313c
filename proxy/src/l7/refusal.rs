//! Refusals of the request path and how they are answered: plain text with the reason for
//! HTTP callers, a gRPC status for gRPC callers, the reason in `x-airlock-deny-reason`
//! for both.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use super::body::ProxyBody;
use crate::metrics::Disposition;
use crate::pool::DENY_REASON_HEADER;
use crate::request_shape::ShapeRefusal;

/// A refusal before or instead of forwarding.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
    pub(crate) decision: Disposition,
    /// Counted under `airlock_http_limit_rejections` with this name.
    pub(crate) limit: Option<&'static str>,
}

impl Refusal {
    /// 400: the request cannot be authorized as it is.
    pub(super) fn shape(reason: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
            decision: Disposition::Rejected,
            limit: None,
        }
    }

    /// A limit of the port or the sidecar, counted under `limit`.
    pub(crate) fn limit(
        status: StatusCode,
        limit: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            status,
            reason: reason.into(),
            decision: Disposition::Rejected,
            limit: Some(limit),
        }
    }
}

impl From<ShapeRefusal> for Refusal {
    fn from(refusal: ShapeRefusal) -> Self {
        Self {
            status: refusal.status,
            reason: refusal.reason,
            decision: Disposition::Rejected,
            limit: refusal.limit,
        }
    }
}

/// The gRPC status a gRPC caller gets for a refusal with `status`, where the HTTP status
/// alone would be read wrongly (gRPC reads a 504 as `UNAVAILABLE`, not as a deadline).
fn grpc_status(status: StatusCode) -> Option<&'static str> {
    match status {
        StatusCode::FORBIDDEN => Some("7"),       // PERMISSION_DENIED
        StatusCode::GATEWAY_TIMEOUT => Some("4"), // DEADLINE_EXCEEDED
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY => Some("14"), // UNAVAILABLE
        _ => None,
    }
}

/// The answer to `refusal`: text with the reason, or for a gRPC caller refused by
/// policy, unavailable or out of time, the gRPC status in a trailers-only answer (a gRPC
/// client reads no HTTP status).
pub(crate) fn refusal_response(refusal: &Refusal, grpc: bool) -> Response<ProxyBody> {
    let reason = refusal.reason.as_str();
    let grpc_status = grpc.then(|| grpc_status(refusal.status)).flatten();
    let mut response = if let Some(grpc_status) = grpc_status {
        // gRPC: HTTP 200 with trailers only.
        let mut response = Response::new(empty());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from_static(grpc_status));
        if let Ok(message) = HeaderValue::from_str(&grpc_percent_encode(reason)) {
            response.headers_mut().insert("grpc-message", message);
        }
        response
    } else {
        let mut response = Response::new(full(format!("{reason}\n")));
        *response.status_mut() = refusal.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if let Ok(value) = HeaderValue::from_str(reason) {
        response.headers_mut().insert(DENY_REASON_HEADER, value);
    }
    response
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, the rest `%XX`.
fn grpc_percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

fn full(text: String) -> ProxyBody {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(status: StatusCode, reason: &str) -> Refusal {
        Refusal {
            status,
            reason: reason.to_owned(),
            decision: Disposition::Deny,
            limit: None,
        }
    }

    async fn body_text(response: Response<ProxyBody>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn each_caller_reads_the_refusal_in_its_own_protocol() {
        let reason = "denied by pay/deny";
        // (status, grpc caller, HTTP status, grpc-status, body, why)
        let cases = [
            (
                StatusCode::FORBIDDEN,
                false,
                403,
                None,
                "denied by pay/deny\n",
                "HTTP: status and reason",
            ),
            (
                StatusCode::FORBIDDEN,
                true,
                200,
                Some("7"),
                "",
                "gRPC: PERMISSION_DENIED in trailers-only",
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                true,
                200,
                Some("14"),
                "",
                "gRPC unavailable: UNAVAILABLE in trailers-only",
            ),
            (
                StatusCode::GATEWAY_TIMEOUT,
                true,
                200,
                Some("4"),
                "",
                "gRPC out of time: DEADLINE_EXCEEDED, not the UNAVAILABLE a 504 reads as",
            ),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                true,
                413,
                None,
                "denied by pay/deny\n",
                "gRPC over another limit: the HTTP status",
            ),
        ];
        for (status, grpc, http_status, grpc_status, body, why) in cases {
            let response = refusal_response(&refusal(status, reason), grpc);
            assert_eq!(response.status().as_u16(), http_status, "{why}");
            let headers = response.headers();
            assert_eq!(
                headers.get("grpc-status").map(|v| v.to_str().unwrap()),
                grpc_status,
                "{why}"
            );
            assert_eq!(headers[DENY_REASON_HEADER], reason, "{why}");
            assert_eq!(body_text(response).await, body, "{why}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        let cases = [
            ("denied by pay/deny", "denied by pay/deny"),
            ("100% sure", "100%25 sure"),
            ("line\nbreak", "line%0Abreak"),
            ("café", "caf%C3%A9"),
            ("", ""),
        ];
        for (text, encoded) in cases {
            assert_eq!(grpc_percent_encode(text), encoded, "{text:?}");
        }
    }

    #[test]
    fn a_reason_that_cannot_be_a_header_is_left_to_the_body() {
        let response = refusal_response(&refusal(StatusCode::FORBIDDEN, "bad\nline"), false);
        assert!(response.headers().get(DENY_REASON_HEADER).is_none());
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
