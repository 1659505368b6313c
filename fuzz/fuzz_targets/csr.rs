//! CSR intake at the CA: arbitrary PEM or DER never panics, and a CSR that is accepted
//! yields only a public key of an accepted type.
#![no_main]

use airlock_ca::csr::public_key_from_csr;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use rcgen::PublicKeyData;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
    // The same bytes as the DER body of a PEM block.
    let body = base64::engine::general_purpose::STANDARD.encode(data);
    check(&format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
    ));
});

fn check(pem: &str) {
    if let Ok(key) = public_key_from_csr(pem) {
        let accepted = [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ];
        assert!(
            accepted.contains(&key.algorithm()),
            "accepted a key of another type"
        );
    }
}
