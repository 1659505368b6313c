//! Trust bundles: the set of root certificates a trust domain's SVIDs chain to.
//!
//! A bundle holds several roots so a root can be rotated with overlap: the new root is
//! distributed (and trusted) before anything is signed under it, and the old one stays
//! until the last SVID it signed has expired.

use std::path::Path;

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde_json::{Value, json};
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::revocation::Revocations;
use crate::spiffe_id::TrustDomain;
use crate::svid::{SvidError, inspect_signing_cert};

/// Default `spiffe_refresh_hint`: how often (seconds) consumers should re-fetch.
pub const DEFAULT_REFRESH_HINT_SECS: u64 = 300;

/// Why a trust bundle could not be read, built or exported. `origin` fields name where
/// the roots came from (a file path, or a caller's label); `index` counts roots from 0.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file, as displayed.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// No roots: the PEM text has no CERTIFICATE block, or the DER list is empty.
    #[error("{origin}: no CERTIFICATE block found")]
    Empty {
        /// Where the roots came from.
        origin: String,
    },
    /// A PEM block could not be decoded.
    #[error("{origin}: unreadable PEM: {reason}")]
    Pem {
        /// Where the roots came from.
        origin: String,
        /// The PEM parser's message.
        reason: String,
    },
    /// A root breaks a signing-certificate rule: not a CA, no keyCertSign, unparsable, or
    /// a URI SAN that is not a bare trust domain.
    #[error("{origin}: root #{index} is not a valid SVID signing certificate: {reason}")]
    NotASigningCert {
        /// Where the roots came from.
        origin: String,
        /// Position of the offending root.
        index: usize,
        /// The signing-certificate rule it broke.
        reason: SvidError,
    },
    /// A root's SPIFFE ID names another trust domain than the bundle's.
    #[error("{origin}: root #{index} belongs to trust domain {found}, expected {expected}")]
    ForeignRoot {
        /// Where the roots came from.
        origin: String,
        /// Position of the offending root.
        index: usize,
        /// The trust domain the root names.
        found: String,
        /// The trust domain the bundle is for.
        expected: TrustDomain,
    },
    /// [`TrustBundle::to_jwks`] met a root whose key is neither EC P-256/P-384 nor RSA.
    #[error("root #{index} has a public key type that a SPIFFE bundle cannot express")]
    UnsupportedKey {
        /// Position of the offending root.
        index: usize,
    },
    /// webpki refused to make a trust anchor of a root.
    #[error("root #{index} cannot serve as a trust anchor: {reason}")]
    BadAnchor {
        /// Position of the offending root.
        index: usize,
        /// webpki's message.
        reason: String,
    },
}

/// The roots of one trust domain, the SPIFFE bundle metadata, and the deny list of
/// revoked SVIDs that travels with them.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    revocations: Arc<Revocations>,
    /// Increases whenever the set of roots changes (`spiffe_sequence`).
    pub sequence: u64,
    /// `spiffe_refresh_hint`, in seconds.
    pub refresh_hint_secs: u64,
}

impl TrustBundle {
    /// Builds a bundle from DER roots; each must be a CA certificate with keyCertSign whose
    /// SPIFFE ID, when it carries one, names `trust_domain`.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
        origin: &str,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty {
                origin: origin.to_owned(),
            });
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (index, root) in roots.iter().enumerate() {
            match inspect_signing_cert(root) {
                Ok(Some(found)) if found != trust_domain => {
                    return Err(BundleError::ForeignRoot {
                        origin: origin.to_owned(),
                        index,
                        found: found.to_string(),
                        expected: trust_domain,
                    });
                }
                Ok(_) => {}
                Err(reason) => {
                    return Err(BundleError::NotASigningCert {
                        origin: origin.to_owned(),
                        index,
                        reason,
                    });
                }
            }
            let anchor =
                webpki::anchor_from_trusted_cert(root).map_err(|e| BundleError::BadAnchor {
                    index,
                    reason: e.to_string(),
                })?;
            anchors.push(anchor.to_owned());
        }
        Ok(Self {
            trust_domain,
            roots,
            anchors,
            revocations: Arc::default(),
            sequence: 1,
            refresh_hint_secs: DEFAULT_REFRESH_HINT_SECS,
        })
    }

    /// Parses every CERTIFICATE block of a PEM text; `origin` names it in errors.
    pub fn from_pem(
        trust_domain: TrustDomain,
        pem: &[u8],
        origin: &str,
    ) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem {
                origin: origin.to_owned(),
                reason: e.to_string(),
            })?;
        Self::new(trust_domain, roots, origin)
    }

    /// Reads a PEM bundle file.
    pub fn load(trust_domain: TrustDomain, path: &Path) -> Result<Self, BundleError> {
        let pem = std::fs::read(path).map_err(|source| BundleError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(trust_domain, &pem, &path.display().to_string())
    }

    /// The trust domain every accepted SVID must belong to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificates (DER), in the order given; never empty.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors, for path validation.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The SVIDs that chain to these roots but are refused all the same.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The same roots with another deny list.
    pub fn with_revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Arc::new(revocations);
        self
    }

    /// All roots as concatenated PEM.
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|der| der_to_pem(der)).collect()
    }

    /// The SPIFFE bundle (a JWK set): one `x509-svid` key per root, each with its
    /// certificate as the only `x5c` entry, no `kid`, plus sequence and refresh hint.
    pub fn to_jwks(&self) -> Result<Value, BundleError> {
        let keys = self
            .roots
            .iter()
            .enumerate()
            .map(|(index, der)| {
                let mut jwk = public_jwk(der).ok_or(BundleError::UnsupportedKey { index })?;
                jwk["use"] = json!("x509-svid");
                jwk["x5c"] = json!([STANDARD.encode(der)]);
                Ok(jwk)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({
            "keys": keys,
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint_secs,
        }))
    }
}

/// PEM armor for one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The JWK public-key members (RFC 7518) of a certificate's key: EC P-256/P-384 or RSA.
fn public_jwk(der: &[u8]) -> Option<Value> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match cert.public_key().parsed().ok()? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, coordinate_len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                _ => return None,
            };
            // Uncompressed point: 0x04 || X || Y.
            if data[0] != 0x04 {
                return None;
            }
            Some(json!({
                "kty": "EC",
                "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&data[1..1 + coordinate_len]),
                "y": URL_SAFE_NO_PAD.encode(&data[1 + coordinate_len..]),
            }))
        }
        PublicKey::RSA(rsa) => Some(json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.modulus)),
            "e": URL_SAFE_NO_PAD.encode(strip_leading_zeros(rsa.exponent)),
        })),
        _ => None,
    }
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[first..]
}

/// The live trust bundle: verifiers read it on every handshake, a refresh swaps it
/// without locking out readers.
#[derive(Debug)]
pub struct BundleStore(ArcSwap<TrustBundle>);

impl BundleStore {
    /// A store that starts out serving `bundle`.
    pub fn new(bundle: TrustBundle) -> Arc<Self> {
        Arc::new(Self(ArcSwap::from_pointee(bundle)))
    }

    /// The bundle in force now; a snapshot that a later [`replace`](Self::replace) does
    /// not change.
    pub fn current(&self) -> Arc<TrustBundle> {
        self.0.load_full()
    }

    /// Makes `bundle` the one every following handshake verifies against (new roots or a
    /// new deny list); handshakes already past verification are unaffected.
    pub fn replace(&self, bundle: TrustBundle) {
        self.0.store(Arc::new(bundle));
    }
}
