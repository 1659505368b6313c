//! SPIFFE ID parsing: never panics; whatever it accepts re-parses to itself and keeps
//! every rule (so literal comparison stays sound).
#![no_main]

use airlock_identity::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
        assert!(text.len() <= 2048);
        let td = id.trust_domain_name();
        assert!(!td.is_empty() && td.len() <= 255);
        assert!(
            td.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        );
        for segment in id.path().split('/').skip(1) {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
        }
        assert!(!text.contains(['%', '?', '#', '@']));
    }
    let _ = TrustDomain::parse(text);
});
