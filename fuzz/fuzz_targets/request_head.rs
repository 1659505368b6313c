//! The request-head checks that guard identity headers and policy: a method line and
//! header lines (`name: value`) from arbitrary bytes. Never panics; whatever passes the
//! underscore rule holds no spelling of a sidecar-only header; without overrides allowed,
//! the method policy sees is the request's own.
#![no_main]

use airlock_policy::http::{check_method, effective_method, header_name_matches};
use airlock_proxy::config::UnderscoreHeaders;
use airlock_proxy::request_shape::{PROTECTED_HEADERS, screen_header_names};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split('\n');
    let method = lines.next().unwrap_or_default().trim_end_matches('\r');
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let pairs: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    if check_method(method).is_ok() {
        let seen = effective_method(method, pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())), false);
        if let Ok(seen) = seen {
            assert_eq!(seen, method, "without overrides policy sees the request's method");
        }
        let _ = effective_method(method, pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())), true);
    }
    for rule in [UnderscoreHeaders::Drop, UnderscoreHeaders::Reject, UnderscoreHeaders::Allow] {
        let mut screened = headers.clone();
        if screen_header_names(&mut screened, rule).is_ok() {
            for name in screened.keys() {
                let name = name.as_str();
                assert!(rule == UnderscoreHeaders::Allow || !name.contains('_'), "{name}");
                assert!(
                    !name.contains('_') || !PROTECTED_HEADERS.iter().any(|p| header_name_matches(name, p)),
                    "{name} passed as a spelling of a sidecar-only header"
                );
            }
        }
    }
});
