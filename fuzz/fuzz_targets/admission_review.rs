//! The webhook's review handler: whatever the body, the answer is an AdmissionReview with
//! a response that says allowed or not, and any patch is base64 of a JSON Patch array.
#![no_main]

use airlock_inject::review;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

mod inject_options;
use inject_options::inject_options;

fuzz_target!(|body: &[u8]| {
    let options = inject_options();
    let (status, answer) = review(body, &options);
    assert!(status == 200 || status == 400);
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert!(response["allowed"].is_boolean());
    assert!(response["uid"].is_string());
    if let Some(patch) = response.get("patch") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().unwrap())
            .unwrap();
        let operations: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(operations.as_array().is_some_and(|ops| !ops.is_empty()));
    }
});
