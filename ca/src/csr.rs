//! Certificate signing requests: the CA takes exactly one thing from them, the public key,
//! and only after the CSR's self-signature proves the requester holds the private key.
//! Subject, SANs, extensions and basicConstraints in the CSR are never looked at.

use rcgen::SubjectPublicKeyInfo;
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

/// Why a CSR was refused. Messages are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// The text holds no PEM `CERTIFICATE REQUEST` block.
    #[error("the CSR is not a PEM \"CERTIFICATE REQUEST\": {0}")]
    NotPem(String),
    /// The PEM block is not PKCS#10 DER, or has bytes after the request.
    #[error("the CSR is not valid PKCS#10 DER: {0}")]
    Malformed(String),
    /// The self-signature does not verify, so the requester has not shown it holds the key.
    #[error("the CSR's signature does not verify: it was not signed by the key it carries")]
    BadSignature,
    /// The key is RSA, which the CA refuses at every size.
    #[error(
        "RSA keys are not accepted (this one has {bits} bits); use ECDSA P-256, ECDSA P-384 or Ed25519"
    )]
    RsaKey {
        /// The modulus size; 0 when it could not be read.
        bits: usize,
    },
    /// Any other key type, or an EC curve other than P-256 and P-384.
    #[error("unsupported key type ({0}); use ECDSA P-256, ECDSA P-384 or Ed25519")]
    UnsupportedKey(String),
}

/// Parses a PEM CSR, verifies its self-signature and returns only its public key.
pub fn public_key_from_csr(pem: &str) -> Result<SubjectPublicKeyInfo, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CsrError::NotPem(e.to_string()))?;
    let csr = match X509CertificationRequest::from_der(der.as_ref()) {
        Ok(([], csr)) => csr,
        Ok(_) => return Err(CsrError::Malformed("trailing bytes after the CSR".into())),
        Err(e) => return Err(CsrError::Malformed(e.to_string())),
    };
    let spki = &csr.certification_request_info.subject_pki;
    check_key_type(spki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| CsrError::UnsupportedKey(e.to_string()))
}

fn check_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => Err(CsrError::UnsupportedKey(format!("EC curve {c}"))),
            None => Err(CsrError::UnsupportedKey(
                "EC key without a named curve".into(),
            )),
        };
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => 0,
        };
        return Err(CsrError::RsaKey { bits });
    }
    Err(CsrError::UnsupportedKey(format!("algorithm {algorithm}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
        PublicKeyData,
    };

    fn csr_pem(key: &KeyPair) -> String {
        CertificateParams::default()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    #[test]
    fn accepts_ec_and_ed25519_and_returns_the_key() {
        for alg in [
            &PKCS_ECDSA_P256_SHA256,
            &PKCS_ECDSA_P384_SHA384,
            &PKCS_ED25519,
        ] {
            let key = KeyPair::generate_for(alg).unwrap();
            let spki = public_key_from_csr(&csr_pem(&key)).unwrap();
            assert_eq!(spki.der_bytes(), key.der_bytes());
        }
    }

    #[test]
    fn refuses_tampered_and_garbage() {
        let key = KeyPair::generate().unwrap();
        let pem = csr_pem(&key);
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01; // flip a bit of the signature
        let tampered = pem_of(&der);
        assert_eq!(public_key_from_csr(&tampered), Err(CsrError::BadSignature));
        assert!(matches!(
            public_key_from_csr("hello"),
            Err(CsrError::NotPem(_))
        ));
        assert!(matches!(
            public_key_from_csr(&pem_of(b"\x30\x03\x02\x01\x00")),
            Err(CsrError::Malformed(_))
        ));
    }

    fn pem_of(der: &[u8]) -> String {
        use base64::Engine;
        format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }
}
