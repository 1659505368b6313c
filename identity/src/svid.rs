//! X.509-SVID inspection: the SPIFFE rules a certificate must meet on top of ordinary
//! path validation (which the verifiers in [`crate::verifier`] leave to webpki).

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a certificate is not an acceptable X.509-SVID (or SVID signing certificate).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The bytes are not one DER certificate (or an extension could not be decoded); holds
    /// the parser's message.
    #[error("not a parsable X.509 certificate: {0}")]
    Malformed(String),
    /// A leaf without any URI SAN, so without an identity.
    #[error("an SVID must carry exactly one URI SAN, this one has none")]
    NoUriSan,
    /// More than one URI SAN (the count), which would make the identity ambiguous.
    #[error("an SVID must carry exactly one URI SAN, this one has {0}")]
    SeveralUriSans(usize),
    #[error("the URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    /// A leaf's URI SAN is not a workload SPIFFE ID.
    BadSpiffeId {
        /// The URI SAN as found in the certificate.
        uri: String,
        /// The SPIFFE-ID rule it broke.
        reason: SpiffeIdError,
    },
    /// A leaf with basicConstraints `cA=true`.
    #[error("a leaf SVID must not be a CA (basicConstraints cA=true)")]
    LeafIsCa,
    /// A leaf with no keyUsage extension at all.
    #[error("a leaf SVID must carry the keyUsage extension")]
    LeafWithoutKeyUsage,
    /// A leaf whose keyUsage lacks digitalSignature, so it cannot sign a TLS handshake.
    #[error("a leaf SVID must have keyUsage digitalSignature")]
    LeafWithoutDigitalSignature,
    /// A leaf whose keyUsage allows signing certificates or CRLs.
    #[error("a leaf SVID must not have keyUsage keyCertSign or cRLSign")]
    LeafCanSign,
    /// A would-be root or intermediate that is not a CA.
    #[error("a signing certificate must have basicConstraints cA=true")]
    SigningCertNotCa,
    /// A CA certificate whose keyUsage is missing or lacks keyCertSign.
    #[error("a signing certificate must have keyUsage keyCertSign")]
    SigningCertWithoutKeyCertSign,
    /// A CA certificate whose URI SAN is a workload ID (it has a path) rather than the
    /// trust domain's own `spiffe://td`.
    #[error("a signing certificate's SPIFFE ID must not have a path (found {0})")]
    SigningCertWithPath(SpiffeId),
    #[error("the URI SAN {uri:?} is not a SPIFFE trust domain: {reason}")]
    /// A CA certificate's URI SAN is neither a workload ID nor a valid trust domain URI.
    BadTrustDomain {
        /// The URI SAN as found in the certificate.
        uri: String,
        /// The SPIFFE-ID rule it broke.
        reason: SpiffeIdError,
    },
}

/// What an accepted leaf SVID says, in plain types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSvid {
    /// The identity named by the one URI SAN.
    pub id: SpiffeId,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
    /// Serial number as lowercase colon-free hex.
    pub serial_hex: String,
}

/// Checks a leaf certificate (DER) against the X.509-SVID rules: exactly one URI SAN that
/// is a valid workload SPIFFE ID (so never the bare trust domain, §5.2), not a CA,
/// keyUsage present with digitalSignature and without keyCertSign/cRLSign.
pub fn inspect_leaf(der: &[u8]) -> Result<LeafSvid, SvidError> {
    let cert = parse(der)?;
    let uri = single_uri_san(&cert)?.ok_or(SvidError::NoUriSan)?;
    let id = SpiffeId::parse(uri).map_err(|reason| SvidError::BadSpiffeId {
        uri: uri.to_owned(),
        reason,
    })?;
    let basic = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if basic.is_some_and(|b| b.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let usage = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?
        .ok_or(SvidError::LeafWithoutKeyUsage)?;
    if usage.value.key_cert_sign() || usage.value.crl_sign() {
        return Err(SvidError::LeafCanSign);
    }
    if !usage.value.digital_signature() {
        return Err(SvidError::LeafWithoutDigitalSignature);
    }
    Ok(LeafSvid {
        id,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial_hex: hex(cert.raw_serial()),
    })
}

/// Checks a CA certificate that signs SVIDs: cA=true, keyCertSign, and if it carries a
/// SPIFFE ID, that ID names a trust domain only. Returns that trust domain when present.
pub fn inspect_signing_cert(der: &[u8]) -> Result<Option<TrustDomain>, SvidError> {
    let cert = parse(der)?;
    if !cert.is_ca() {
        return Err(SvidError::SigningCertNotCa);
    }
    let can_sign = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?
        .is_some_and(|u| u.value.key_cert_sign());
    if !can_sign {
        return Err(SvidError::SigningCertWithoutKeyCertSign);
    }
    let Some(uri) = single_uri_san(&cert)? else {
        return Ok(None);
    };
    if let Ok(id) = SpiffeId::parse(uri) {
        return Err(SvidError::SigningCertWithPath(id));
    }
    let name = uri
        .strip_prefix("spiffe://")
        .ok_or(SvidError::BadTrustDomain {
            uri: uri.to_owned(),
            reason: SpiffeIdError::WrongScheme,
        })?;
    TrustDomain::parse(name)
        .map(Some)
        .map_err(|reason| SvidError::BadTrustDomain {
            uri: uri.to_owned(),
            reason,
        })
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Malformed(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(SvidError::Malformed(e.to_string())),
    }
}

/// The certificate's only URI SAN; `None` without URI SANs.
fn single_uri_san<'a>(cert: &X509Certificate<'a>) -> Result<Option<&'a str>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Ok(None),
        [uri] => Ok(Some(uri)),
        several => Err(SvidError::SeveralUriSans(several.len())),
    }
}

/// Lower-case hex, the way serials and digests are shown.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, KeyUsagePurpose,
        SanType,
    };

    fn cert(sans: &[&str], ca: bool, usages: &[KeyUsagePurpose]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn leaf_rules_table() {
        use KeyUsagePurpose::*;
        let id = "spiffe://td/ns/a/sa/b";
        let ok = cert(&[id], false, &[DigitalSignature]);
        assert_eq!(inspect_leaf(&ok).unwrap().id.as_str(), id);

        let cases: Vec<(Vec<u8>, SvidError)> = vec![
            (cert(&[], false, &[DigitalSignature]), SvidError::NoUriSan),
            (
                cert(&[id, "spiffe://td/x"], false, &[DigitalSignature]),
                SvidError::SeveralUriSans(2),
            ),
            (cert(&[id], true, &[DigitalSignature]), SvidError::LeafIsCa),
            (cert(&[id], false, &[]), SvidError::LeafWithoutKeyUsage),
            (
                cert(&[id], false, &[KeyEncipherment]),
                SvidError::LeafWithoutDigitalSignature,
            ),
            (
                cert(&[id], false, &[DigitalSignature, KeyCertSign]),
                SvidError::LeafCanSign,
            ),
            (
                cert(&[id], false, &[DigitalSignature, CrlSign]),
                SvidError::LeafCanSign,
            ),
        ];
        for (der, want) in cases {
            assert_eq!(inspect_leaf(&der), Err(want));
        }
        let bad = cert(&["spiffe://TD/x"], false, &[DigitalSignature]);
        assert!(matches!(
            inspect_leaf(&bad),
            Err(SvidError::BadSpiffeId { .. })
        ));
        // X509-SVID §5.2: the trust domain's own ID is never a leaf's identity.
        let root_path = cert(&["spiffe://td"], false, &[DigitalSignature]);
        assert_eq!(
            inspect_leaf(&root_path),
            Err(SvidError::BadSpiffeId {
                uri: "spiffe://td".into(),
                reason: SpiffeIdError::NoPath
            })
        );
        assert!(matches!(
            inspect_leaf(b"junk"),
            Err(SvidError::Malformed(_))
        ));
    }

    #[test]
    fn signing_cert_rules() {
        use KeyUsagePurpose::*;
        let root = cert(&["spiffe://td"], true, &[KeyCertSign, CrlSign]);
        assert_eq!(inspect_signing_cert(&root).unwrap().unwrap().as_str(), "td");
        let no_id = cert(&[], true, &[KeyCertSign]);
        assert_eq!(inspect_signing_cert(&no_id), Ok(None));
        assert_eq!(
            inspect_signing_cert(&cert(&[], false, &[KeyCertSign])),
            Err(SvidError::SigningCertNotCa)
        );
        assert_eq!(
            inspect_signing_cert(&cert(&[], true, &[DigitalSignature])),
            Err(SvidError::SigningCertWithoutKeyCertSign)
        );
        assert!(matches!(
            inspect_signing_cert(&cert(&["spiffe://td/x"], true, &[KeyCertSign])),
            Err(SvidError::SigningCertWithPath(_))
        ));
        assert!(matches!(
            inspect_signing_cert(&cert(&["spiffe://TD"], true, &[KeyCertSign])),
            Err(SvidError::BadTrustDomain { .. })
        ));
    }
}
