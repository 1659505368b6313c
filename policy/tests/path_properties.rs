//! Properties of path normalization over generated paths (proptest).

use airlock_policy::http::{PathOptions, normalize_path};
use airlock_policy::matcher::StringMatch;
use proptest::prelude::*;

/// Paths built from the pieces that bypass tricks are made of.
fn tricky_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just("\\".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("..;x".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%41".to_owned()),
        Just("%7e".to_owned()),
        Just("%3b".to_owned()),
        Just("%25".to_owned()),
        Just(";".to_owned()),
        Just("admin".to_owned()),
        Just("é".to_owned()),
        Just("%C3%a9".to_owned()),
        Just("public".to_owned()),
        Just("v1".to_owned()),
        "[a-zA-Z0-9._~-]{1,4}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat()))
}

/// What a Tomcat-like server would take the path to mean: every escape decoded once,
/// backslashes as slashes, path parameters dropped, dot segments resolved, empty segments
/// gone.
fn meaning(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = std::str::from_utf8(bytes.get(i + 1..i + 3).unwrap_or(b"zz"))
            .ok()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if let (b'%', Some(value)) = (bytes[i], escaped) {
            decoded.push(value);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/').filter(|s| !s.is_empty()) {
        match segment.split(';').next().unwrap() {
            "" => {}
            "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name),
        }
    }
    format!("/{}", segments.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Normalization never changes what the path means, so a denied resource cannot be
    /// reached by a spelling that normalizes to something else.
    #[test]
    fn meaning_is_preserved(raw in tricky_path()) {
        if let Ok(n) = normalize_path(&raw, PathOptions::default()) {
            let (normalized, original) = (meaning(&n.path), meaning(&raw));
            prop_assert_eq!(normalized.trim_end_matches('/'), original.trim_end_matches('/'), "{} -> {}", raw, n.path);
        }
    }

    /// The other direction: a path that an ALLOW on `/public*` lets through really means
    /// something under /public.
    #[test]
    fn a_permitted_spelling_means_what_it_says(raw in tricky_path()) {
        let allowed = StringMatch::parse("/public*").unwrap();
        if let Ok(n) = normalize_path(&raw, PathOptions::default())
            && allowed.matches(&n.path)
        {
            prop_assert!(meaning(&raw).starts_with("/public"), "{} normalizes to {} but means {}", raw, n.path, meaning(&raw));
        }
    }

    #[test]
    fn a_denied_meaning_stays_denied(raw in tricky_path()) {
        let denied = StringMatch::parse("/admin*").unwrap();
        if let Ok(n) = normalize_path(&raw, PathOptions::default())
            && meaning(&raw).starts_with("/admin")
        {
            prop_assert!(denied.matches(&n.path), "{} means {} but normalizes to {}", raw, meaning(&raw), n.path);
        }
    }

    #[test]
    fn idempotent(raw in tricky_path()) {
        if let Ok(once) = normalize_path(&raw, PathOptions::default()) {
            let twice = normalize_path(&once.path, PathOptions::default()).expect("a normalized path normalizes");
            prop_assert_eq!(&twice.path, &once.path);
        }
    }

    #[test]
    fn no_dot_segments_or_empty_segments_or_backslashes(raw in tricky_path()) {
        if let Ok(n) = normalize_path(&raw, PathOptions::default()) {
            let path = n.path;
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains("//"), "{}", path);
            prop_assert!(!path.contains('\\'), "{}", path);
            for segment in path.split('/') {
                let bare = segment.split(';').next().unwrap();
                prop_assert!(bare != "." && bare != "..", "{} has a dot segment", path);
            }
        }
    }

    /// The proxy decides on normalize(p) and forwards normalize(p): deciding on the
    /// forwarded path again gives the same answer, so no spelling of a denied path can
    /// be authorized as something else and then reach the app as the denied one.
    #[test]
    fn forwarded_path_decides_like_the_request(raw in tricky_path(), prefix in prop_oneof![Just("/admin"), Just("/v1/admin"), Just("/")]) {
        let denied = StringMatch::parse(&format!("{prefix}*")).unwrap();
        if let Ok(n) = normalize_path(&raw, PathOptions::default()) {
            let forwarded = normalize_path(&n.request_target(), PathOptions::default()).unwrap();
            prop_assert_eq!(denied.matches(&n.path), denied.matches(&forwarded.path));
        }
    }

    /// Decoding only ever removes escapes of unreserved characters: the result has no
    /// escape of an unreserved character left, and every escape is upper-case.
    #[test]
    fn escapes_are_canonical(raw in tricky_path()) {
        if let Ok(n) = normalize_path(&raw, PathOptions::default()) {
            let bytes = n.path.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'%' {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                    prop_assert_eq!(hex, hex.to_ascii_uppercase());
                    let value = u8::from_str_radix(hex, 16).unwrap();
                    prop_assert!(!(value.is_ascii_alphanumeric() || b"-._~".contains(&value)));
                }
            }
        }
    }
}
