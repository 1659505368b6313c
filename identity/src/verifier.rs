//! rustls certificate verifiers for SPIFFE peers.
//!
//! Both sides do the same three-step check: full RFC 5280 path validation against the live
//! trust bundle (webpki: signatures, validity, CA constraints, EKU), then the X.509-SVID
//! leaf rules and the bundle's deny list of revoked SVIDs, then the expected-peer rule. DNS server names play no part: a SPIFFE peer is
//! named by its URI SAN, and the client states which SPIFFE ID it expects.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError};
use rustls::{CommonState, SignatureScheme};

use crate::bundle::BundleStore;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{LeafSvid, inspect_leaf};

/// Which SPIFFE IDs a verifier accepts once the chain is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    /// Exactly this identity (a client pinning the server it dials).
    Exactly(SpiffeId),
    /// Any identity of the bundle's trust domain (a server that authorizes later, by policy).
    AnyInTrustDomain,
}

/// Why a chain-valid certificate was still refused.
#[derive(thiserror::Error)]
pub enum PeerRejected {
    /// The chain is valid but the leaf breaks an X.509-SVID rule.
    #[error("peer certificate is not an X.509-SVID: {0}")]
    NotAnSvid(#[from] crate::svid::SvidError),
    #[error("peer {found} is outside trust domain {expected}")]
    /// The leaf names a workload of another trust domain than the bundle's (possible
    /// when the root that signed it carries no SPIFFE ID of its own).
    ForeignTrustDomain {
        /// The identity the peer presented.
        found: SpiffeId,
        /// The trust domain of the bundle that validated the chain.
        expected: TrustDomain,
    },
    #[error("peer presented {found}, expected {expected}")]
    /// A valid SVID of the trust domain, but not the identity [`PeerMatch::Exactly`] pins.
    UnexpectedPeer {
        /// The identity the peer presented.
        found: SpiffeId,
        /// The identity the client dialled for.
        expected: SpiffeId,
    },
}

// rustls prints wrapped errors with `{:?}`; make that the readable sentence.
impl std::fmt::Debug for PeerRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl From<PeerRejected> for Error {
    fn from(rejected: PeerRejected) -> Self {
        Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(rejected))))
    }
}

/// The shared core of both verifiers.
#[derive(Debug)]
struct SvidChainCheck {
    bundle: Arc<BundleStore>,
    expected: PeerMatch,
    provider: Arc<CryptoProvider>,
}

impl SvidChainCheck {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, Error> {
        let bundle = self.bundle.current();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(webpki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            bundle.anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(webpki_error)?;
        let leaf = inspect_leaf(end_entity).map_err(PeerRejected::from)?;
        if bundle.revocations().check(&leaf).is_some() {
            // The standard kind, so the peer gets a `certificate_revoked` alert.
            return Err(Error::InvalidCertificate(CertificateError::Revoked));
        }
        if leaf.id.trust_domain_name() != bundle.trust_domain().as_str() {
            return Err(PeerRejected::ForeignTrustDomain {
                found: leaf.id,
                expected: bundle.trust_domain().clone(),
            }
            .into());
        }
        match &self.expected {
            PeerMatch::Exactly(expected) if *expected != leaf.id => {
                Err(PeerRejected::UnexpectedPeer {
                    found: leaf.id,
                    expected: expected.clone(),
                }
                .into())
            }
            _ => Ok(leaf.id),
        }
    }

    fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Maps webpki's verdicts onto rustls's error kinds so logs and alerts stay precise.
fn webpki_error(error: webpki::Error) -> Error {
    use webpki::Error as E;
    let kind = match error {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    Error::InvalidCertificate(kind)
}

/// Client side: verifies the server's SVID chain and that it is the expected identity.
#[derive(Debug)]
pub struct SpiffeServerVerifier(SvidChainCheck);

impl SpiffeServerVerifier {
    /// A verifier that validates server chains against the live `bundle` (read again on
    /// every handshake) and accepts only identities that `expected` allows.
    pub fn new(
        bundle: Arc<BundleStore>,
        expected: PeerMatch,
        provider: Arc<CryptoProvider>,
    ) -> Arc<Self> {
        Arc::new(Self(SvidChainCheck {
            bundle,
            expected,
            provider,
        }))
    }
}

// Declared boilerplate: the two rustls verifier traits ask for the same three signature
// methods; both impls hand them, and the chain check, to the one `SvidChainCheck`.
impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.0.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Server side: verifies a client's SVID chain (any identity of the trust domain; the
/// caller authorizes the identity afterwards).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    check: SvidChainCheck,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    /// `mandatory: false` lets clients without a certificate through the handshake (the
    /// CA's API, where a bearer token may authenticate instead); a certificate that is
    /// presented is always fully verified.
    pub fn new(
        bundle: Arc<BundleStore>,
        provider: Arc<CryptoProvider>,
        mandatory: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            check: SvidChainCheck {
                bundle,
                expected: PeerMatch::AnyInTrustDomain,
                provider,
            },
            mandatory,
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check.verify(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.check.schemes()
    }
}

/// The SVID of the peer of a finished handshake (already verified by one of the
/// verifiers above); `None` when the peer sent no certificate.
pub fn peer_svid(connection: &CommonState) -> Option<LeafSvid> {
    inspect_leaf(connection.peer_certificates()?.first()?).ok()
}

/// The SPIFFE ID of the peer of a finished handshake; `None` without a certificate.
pub fn peer_id(connection: &CommonState) -> Option<SpiffeId> {
    peer_svid(connection).map(|svid| svid.id)
}
