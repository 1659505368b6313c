//! Canonical forms of HTTP request attributes, computed once before matching. The proxy
//! forwards exactly the normalized path, so what policy authorized is what the app sees.
//!
//! Path steps, in order: split off the fragment (dropped) and the query (kept for
//! forwarding, never matched); percent-decode unreserved characters (`A-Z a-z 0-9 - . _ ~`),
//! upper-case the hex of every other escape and percent-encode raw non-ASCII bytes; refuse `%2F`/`%5C` (encoded slashes,
//! unless allowed), `%00`, malformed escapes and raw control characters; turn `\` into `/`;
//! merge repeated slashes; drop path parameters (`;param`, `%3Bparam`) from every segment;
//! resolve `.` and `..` segments, never above the root.

use std::borrow::Cow;

/// Why a request's shape is refused (the proxy answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// The path (before the query) starts with neither `/` nor `\`, e.g. an empty,
    /// absolute-form or `*` target.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// The path holds `%2F` or `%5C` and [`PathOptions::allow_encoded_slashes`] is off.
    #[error("the path holds an encoded slash (%2F or %5C)")]
    EncodedSlash,
    /// The path holds `%00`, which is never allowed.
    #[error("the path holds an encoded NUL (%00)")]
    EncodedNul,
    /// A `%` is not followed by two hex digits.
    #[error("the path holds a malformed percent-escape")]
    BadEscape,
    /// The path holds a raw ASCII control character (tab, CR, NUL, …).
    #[error("the path holds a control character")]
    ControlCharacter,
    /// The method (here as received) is empty or holds a character outside the RFC 9110
    /// token set.
    #[error("{0:?} is not a valid HTTP method token")]
    BadMethod(String),
    /// The method is a standard method spelled in another case (`Get`), which frameworks
    /// would route as the standard one.
    #[error("{found:?} is a non-canonical spelling of {canonical}; methods are case-sensitive")]
    MethodSpelling {
        /// The method as received.
        found: String,
        /// The standard method it spells, e.g. `GET`.
        canonical: &'static str,
    },
    /// A method-override header names another method on a port that does not honour
    /// overrides.
    #[error(
        "{header} names method {named:?}, not the request's {method}; method overrides are off on this port"
    )]
    MethodOverride {
        /// The override header, lower-case, as in [`METHOD_OVERRIDE_HEADERS`].
        header: &'static str,
        /// The method the header names (trimmed).
        named: String,
        /// The request's own method.
        method: String,
    },
    /// Several method-override headers (or repeats of one) name different methods.
    #[error("the method-override headers disagree")]
    ConflictingOverrides,
}

/// The methods of RFC 9110 §9 and RFC 5789 (PATCH), the ones frameworks route whatever
/// their case: another spelling of one of them is refused, not passed on.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Headers with which frameworks (Rails, Express's method-override, ASP.NET, Symfony)
/// let a request claim another method than its own.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The method policy evaluates: the request's, or with `allow_overrides` the one its
/// method-override headers name. Without `allow_overrides` an override naming another
/// method is refused; an override that repeats the request's method is harmless.
pub fn effective_method<'a>(
    method: &'a str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    allow_overrides: bool,
) -> Result<&'a str, ShapeError> {
    let mut named: Option<&str> = None;
    let mut header_named = "";
    for (name, value) in headers {
        let Some(header) = METHOD_OVERRIDE_HEADERS
            .iter()
            .find(|h| header_name_matches(name, h))
        else {
            continue;
        };
        let value = value.trim();
        match named {
            Some(previous) if previous != value => return Err(ShapeError::ConflictingOverrides),
            _ => {
                named = Some(value);
                header_named = header;
            }
        }
    }
    let Some(named) = named.filter(|named| *named != method) else {
        return Ok(method);
    };
    if !allow_overrides {
        return Err(ShapeError::MethodOverride {
            header: header_named,
            named: named.to_owned(),
            method: method.to_owned(),
        });
    }
    check_method(named)?;
    Ok(named)
}

/// Header names as servers behind the proxy may read them: case-insensitive, and `_`
/// the same as `-` (CGI, WSGI and Rack map both to one `HTTP_X_NAME` key).
pub fn header_name_matches(name: &str, wanted: &str) -> bool {
    name.len() == wanted.len()
        && name.bytes().zip(wanted.bytes()).all(|(a, b)| {
            let fold = |c: u8| {
                if c == b'_' {
                    b'-'
                } else {
                    c.to_ascii_lowercase()
                }
            };
            fold(a) == fold(b)
        })
}

/// Options of path normalization.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Keep `%2F`/`%5C` (as opaque, upper-cased escapes) instead of refusing them.
    pub allow_encoded_slashes: bool,
}

/// A normalized request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedPath {
    /// What policies match against: normalized, without query or fragment.
    pub path: String,
    /// The query (without `?`), forwarded untouched.
    pub query: Option<String>,
}

impl NormalizedPath {
    /// Path and query as the app should receive them.
    pub fn request_target(&self) -> Cow<'_, str> {
        match &self.query {
            Some(query) => Cow::Owned(format!("{}?{query}", self.path)),
            None => Cow::Borrowed(&self.path),
        }
    }
}

/// Normalizes a request target (origin form: `/path?query#fragment`).
pub fn normalize_path(raw: &str, options: PathOptions) -> Result<NormalizedPath, ShapeError> {
    let without_fragment = raw.split_once('#').map_or(raw, |(before, _)| before);
    let (path, query) = match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (without_fragment, None),
    };
    if !path.starts_with('/') && !path.starts_with('\\') {
        return Err(ShapeError::NotAbsolute);
    }
    let decoded = decode_unreserved(path, options)?;
    let slashed = decoded.replace('\\', "/");
    Ok(NormalizedPath {
        path: resolve_segments(&slashed),
        query,
    })
}

fn decode_unreserved(path: &str, options: PathOptions) -> Result<String, ShapeError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_control() {
            return Err(ShapeError::ControlCharacter);
        }
        if b >= 0x80 {
            // Raw non-ASCII has one spelling only: percent-encoded, as backends decode it.
            push_escape(&mut out, b);
            i += 1;
            continue;
        }
        if b != b'%' {
            out.push(b as char);
            i += 1;
            continue;
        }
        let hex = bytes.get(i + 1..i + 3).ok_or(ShapeError::BadEscape)?;
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(ShapeError::BadEscape);
        }
        let value = u8::from_str_radix(std::str::from_utf8(hex).expect("hex digits are ASCII"), 16)
            .expect("two hex digits");
        match value {
            0 => return Err(ShapeError::EncodedNul),
            b'/' | b'\\' if !options.allow_encoded_slashes => return Err(ShapeError::EncodedSlash),
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                out.push(v as char)
            }
            v => push_escape(&mut out, v),
        }
        i += 3;
    }
    Ok(out)
}

fn push_escape(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(byte >> 4)] as char);
    out.push(HEX[usize::from(byte & 0xF)] as char);
}

/// Merges slashes, drops path parameters and resolves dot segments.
fn resolve_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        // Path parameters are dropped, whether written `;` or `%3B`: servers such as
        // Tomcat and Jetty strip them before routing (`/admin;x/secret` is `/admin/secret`
        // to them, `..%3Bx` is `..`), so matching and forwarding must not keep them.
        let name_end = [segment.find(';'), segment.find("%3B")]
            .into_iter()
            .flatten()
            .min();
        let name = name_end.map_or(segment, |end| &segment[..end]);
        match name {
            "" => {}
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => {
                segments.push(name);
                trailing_slash = false;
            }
        }
    }
    if path.ends_with('/') {
        trailing_slash = true;
    }
    let mut out = String::with_capacity(path.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

/// Host for matching: lower-case, port stripped (`[v6]:port` too), trailing dot dropped.
pub fn normalize_host(host: &str) -> String {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(inside, _)| inside)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// A method is an RFC 9110 token; anything else is refused.
pub fn check_method(method: &str) -> Result<(), ShapeError> {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(ShapeError::BadMethod(method.to_owned()));
    }
    if let Some(canonical) = STANDARD_METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(method) && **m != method)
    {
        return Err(ShapeError::MethodSpelling {
            found: method.to_owned(),
            canonical,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_spellings_and_overrides() {
        for (method, ok) in [
            ("DELETE", true),
            ("delete", false),
            ("Delete", false),
            ("gEt", false),
            ("PROPFIND", true),
            ("propfind", true), // not a standard method: passed on as written
            ("M-SEARCH", true),
        ] {
            assert_eq!(check_method(method).is_ok(), ok, "{method}");
        }
        let headers = |pairs: &'static [(&'static str, &'static str)]| pairs.iter().copied();
        type Headers = &'static [(&'static str, &'static str)];
        // (override headers, overrides allowed, the method policy sees or a refusal)
        let cases: &[(Headers, bool, Result<&str, ()>)] = &[
            (&[], false, Ok("POST")),
            (&[("x-http-method-override", "POST")], false, Ok("POST")),
            (&[("x-http-method-override", "DELETE")], false, Err(())),
            (&[("X-HTTP-Method", "DELETE")], false, Err(())),
            (&[("x_method_override", "DELETE")], false, Err(())),
            (&[("x-http-method-override", "DELETE")], true, Ok("DELETE")),
            (&[("x-http-method-override", "delete")], true, Err(())),
            (
                &[("x-http-method", "DELETE"), ("x-method-override", "PUT")],
                true,
                Err(()),
            ),
            (&[("x-forwarded-method", "DELETE")], false, Ok("POST")),
        ];
        for (pairs, allow, want) in cases {
            let got = effective_method("POST", headers(pairs), *allow).map_err(drop);
            assert_eq!(got, *want, "{pairs:?} allow={allow}");
        }
    }

    #[test]
    fn header_names_fold_case_and_underscores() {
        assert!(header_name_matches("X_Debug", "x-debug"));
        assert!(header_name_matches("x-debug", "x_debug"));
        assert!(!header_name_matches("x-debugs", "x-debug"));
        assert!(!header_name_matches("xdebug", "x-debug"));
    }

    fn norm(raw: &str) -> Result<String, ShapeError> {
        normalize_path(raw, PathOptions::default()).map(|n| n.path)
    }

    #[test]
    fn normalization_table() {
        let cases = [
            // (raw, normalized) — each case names a bypass trick it neutralizes
            ("/v1/charges", "/v1/charges"),
            ("/v1//charges", "/v1/charges"),
            ("//v1///charges", "/v1/charges"),
            ("/v1/./charges", "/v1/charges"),
            ("/v1/admin/../charges", "/v1/charges"),
            ("/v1/admin/..;jsessionid=1/charges", "/v1/charges"),
            ("/v1/admin/.;x/charges", "/v1/admin/charges"),
            ("/public/..%3bx/admin", "/admin"),
            ("/public/..%3B/admin", "/admin"),
            ("/public/%2e%2e%3b/admin", "/admin"),
            ("/admin;x/secret", "/admin/secret"),
            ("/;x/admin", "/admin"),
            ("/a%3Bb/c", "/a/c"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/v1\\admin\\..\\charges", "/v1/charges"),
            ("/v1/%63harges", "/v1/charges"),
            ("/v1/%2e%2e/admin", "/admin"),
            ("/v1/%2E%2e/admin", "/admin"),
            ("/a%7eb", "/a~b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%25b", "/a%25b"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/v1/charges?id=1#frag", "/v1/charges"),
            ("/v1/charges#frag?x", "/v1/charges"),
            ("/dir/", "/dir/"),
            ("/dir/.", "/dir/"),
            ("/dir/..", "/"),
            ("/", "/"),
            ("/V1/Charges", "/V1/Charges"),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn refusals_table() {
        let cases = [
            ("/v1%2Fcharges", ShapeError::EncodedSlash),
            ("/v1%2fcharges", ShapeError::EncodedSlash),
            ("/v1%5Ccharges", ShapeError::EncodedSlash),
            ("/v1%00.json", ShapeError::EncodedNul),
            ("/v1%zz", ShapeError::BadEscape),
            ("/v1%2", ShapeError::BadEscape),
            ("/v1%+5", ShapeError::BadEscape),
            ("/v1%+0", ShapeError::BadEscape),
            ("/v1\u{0}", ShapeError::ControlCharacter),
            ("/v1\tx", ShapeError::ControlCharacter),
            ("v1/charges", ShapeError::NotAbsolute),
            ("", ShapeError::NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(norm(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn encoded_slashes_can_be_kept_opaque() {
        let options = PathOptions {
            allow_encoded_slashes: true,
        };
        let n = normalize_path("/files/a%2fb/../c", options).unwrap();
        assert_eq!(n.path, "/files/c");
        let n = normalize_path("/files/a%2fb", options).unwrap();
        assert_eq!(n.path, "/files/a%2Fb");
        assert_eq!(
            normalize_path("/x%00", options),
            Err(ShapeError::EncodedNul)
        );
    }

    #[test]
    fn query_is_kept_for_forwarding() {
        let n = normalize_path("/a/../b?x=1&y=%2F#f", PathOptions::default()).unwrap();
        assert_eq!(n.request_target(), "/b?x=1&y=%2F");
    }

    #[test]
    fn hosts_and_methods() {
        for (raw, want) in [
            ("Payments.Internal", "payments.internal"),
            ("payments:8080", "payments"),
            ("payments.internal.:443", "payments.internal"),
            ("[::1]:8080", "::1"),
            ("[::1]", "::1"),
        ] {
            assert_eq!(normalize_host(raw), want, "{raw}");
        }
        assert!(check_method("POST").is_ok());
        assert!(check_method("M-SEARCH").is_ok());
        for bad in ["", "GET /", "PO\"ST", "GÉT", "GET\r\n"] {
            assert!(check_method(bad).is_err(), "{bad:?}");
        }
    }
}
