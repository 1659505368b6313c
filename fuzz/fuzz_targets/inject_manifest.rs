//! `airlock inject` on any text: never panics, and injecting its own output again changes
//! nothing (idempotence).
#![no_main]

use airlock_inject::inject_manifest;
use libfuzzer_sys::fuzz_target;

mod inject_options;
use inject_options::inject_options;

fuzz_target!(|text: &str| {
    let options = inject_options();
    if let Ok(once) = inject_manifest(text, &options) {
        let twice =
            inject_manifest(&once.text, &options).expect("the injector reads its own output");
        assert_eq!(twice.text, once.text);
    }
});
