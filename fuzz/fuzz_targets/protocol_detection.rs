//! Protocol detection on `auto` ports: never panics, and a decision never changes as more
//! bytes arrive (detection may stop reading at the first decisive prefix).
#![no_main]

use airlock_proxy::detect::{Detected, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|stream: &[u8]| {
    let whole = classify(stream);
    let mut first_decision = None;
    for end in 0..=stream.len().min(4096) {
        let decided = classify(&stream[..end]);
        if decided != Detected::NeedMore {
            first_decision = Some((end, decided));
            break;
        }
    }
    if let Some((end, decided)) = first_decision {
        assert_eq!(
            decided, whole,
            "decided {decided:?} at byte {end}, then {whole:?}"
        );
    }
    if whole == Detected::Http2 {
        assert!(stream.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    }
});
