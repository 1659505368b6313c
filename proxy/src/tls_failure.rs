//! Why a TLS handshake failed, as a metrics label: read from the error's types (rustls's
//! and the SPIFFE verifiers' own), never from its message text, so that a reworded message
//! cannot move a failure to another label.

use airlock_identity::verifier::PeerRejected;
use rustls::{AlertDescription, CertificateError, Error, PeerIncompatible};

/// The `reason` label of `airlock_tls_handshake_errors_total` for a failed handshake.
pub(crate) fn reason(error: &std::io::Error) -> &'static str {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        Some(tls) => reason_of(tls),
        // The peer hung up mid-handshake, or a socket error.
        None => "other",
    }
}

fn reason_of(error: &Error) -> &'static str {
    match error {
        Error::InvalidCertificate(kind) => certificate_reason(kind),
        Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRevoked => "revoked",
            AlertDescription::CertificateExpired => "expired",
            AlertDescription::UnknownCA => "unknown_issuer",
            AlertDescription::CertificateRequired => "no_client_certificate",
            AlertDescription::ProtocolVersion => "protocol_version",
            AlertDescription::BadCertificate | AlertDescription::UnsupportedCertificate => {
                "bad_certificate"
            }
            _ => "other",
        },
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::PeerIncompatible(
            PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls13RequiredForQuic,
        ) => "protocol_version",
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "not_tls",
        _ => "other",
    }
}

fn certificate_reason(kind: &CertificateError) -> &'static str {
    match kind {
        CertificateError::Revoked => "revoked",
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not_yet_valid"
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_issuer",
        CertificateError::Other(other) => match other.0.downcast_ref::<PeerRejected>() {
            Some(PeerRejected::UnexpectedPeer { .. } | PeerRejected::ForeignTrustDomain { .. }) => {
                "unexpected_peer"
            }
            Some(PeerRejected::NotAnSvid(_)) => "not_an_svid",
            None => "bad_certificate",
        },
        _ => "bad_certificate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_identity::SpiffeId;
    use rustls::OtherError;
    use std::sync::Arc;

    fn io(error: Error) -> std::io::Error {
        // As tokio-rustls hands a failed handshake back.
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn reasons_come_from_the_error_types() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let rejected = |r: PeerRejected| {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
        };
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::Revoked),
                "revoked",
            ),
            (
                Error::AlertReceived(AlertDescription::CertificateRevoked),
                "revoked",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (
                Error::AlertReceived(AlertDescription::CertificateExpired),
                "expired",
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidYet),
                "not_yet_valid",
            ),
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_issuer",
            ),
            (
                Error::InvalidCertificate(CertificateError::BadSignature),
                "unknown_issuer",
            ),
            (
                rejected(PeerRejected::UnexpectedPeer {
                    found: id("spiffe://td/ns/a/sa/x"),
                    expected: id("spiffe://td/ns/a/sa/y"),
                }),
                "unexpected_peer",
            ),
            (
                rejected(PeerRejected::NotAnSvid(
                    airlock_identity::SvidError::NoUriSan,
                )),
                "not_an_svid",
            ),
            (Error::NoCertificatesPresented, "no_client_certificate"),
            (
                Error::AlertReceived(AlertDescription::CertificateRequired),
                "no_client_certificate",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::SupportedVersionsExtensionRequired),
                "protocol_version",
            ),
            (
                Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "not_tls",
            ),
            (Error::General("x".into()), "other"),
        ];
        for (error, want) in cases {
            let text = error.to_string();
            assert_eq!(reason(&io(error)), want, "{text}");
        }
        assert_eq!(
            reason(&std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            "other"
        );
    }
}
