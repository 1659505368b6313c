//! Path normalization invariants: never panics; idempotent; no `//`, `\` or dot segments
//! left; escapes canonical; and the path forwarded decides like the one matched.
#![no_main]

use airlock_policy::http::{PathOptions, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, bool)| {
    let (raw, allow_encoded_slashes) = input;
    let options = PathOptions {
        allow_encoded_slashes,
    };
    let Ok(once) = normalize_path(raw, options) else {
        return;
    };
    let path = &once.path;
    assert!(path.starts_with('/'));
    assert!(!path.contains("//") && !path.contains('\\'), "{path}");
    assert!(path.is_ascii(), "{path}");
    for segment in path.split('/') {
        assert!(segment != "." && segment != "..", "{path}");
        assert!(!segment.contains(';') && !segment.contains("%3B"), "{path}");
    }
    let twice = normalize_path(path, options).expect("normalized paths normalize");
    assert_eq!(&twice.path, path, "idempotent");
    let forwarded =
        normalize_path(&once.request_target(), options).expect("forwarded target normalizes");
    assert_eq!(
        &forwarded.path, path,
        "the forwarded request decides like the matched one"
    );
});
