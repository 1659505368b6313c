//! The certificate authority itself: creating a CA directory, loading it, and building
//! SVIDs from the CA's own template.
//!
//! Layout of a CA directory (all secrets mode 0600, keys encrypted):
//!
//! | file          | what                                                    |
//! |---------------|---------------------------------------------------------|
//! | `ca.yaml`     | settings ([`CaConfig`])                                 |
//! | `root.pem`    | self-signed root certificate                            |
//! | `root.key`    | root key (encrypted PKCS#8); only `ca init` uses it     |
//! | `issuing.pem` | intermediate that signs SVIDs                           |
//! | `issuing.key` | its key (encrypted PKCS#8)                              |
//! | `bundle.pem`  | trust bundle: every root that is currently trusted      |
//! | `tokens.json` | join tokens, as hashes ([`crate::tokens`])             |
//! | `revocations.json` | the deny list ([`crate::revocations`])            |
//! | `previous-issuing.pem` | after `ca rotate --keep-renewals`: the retired issuer whose SVIDs may still renew |
//! | `rotation.json` | retired roots and when they leave the bundle ([`crate::rotation`]) |

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_identity::bundle::der_to_pem;
use airlock_identity::{Revocations, SpiffeId, TrustBundle, TrustDomain};
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::config::CaConfig;
use crate::csr::{CsrError, public_key_from_csr};
use crate::keys::{
    KeyError, KeyFileAccess, Passphrase, read_encrypted_key, write_atomic, write_encrypted_key,
};
use crate::revocations::RevocationStore;
use crate::rotation::{PREVIOUS_ISSUING, RetiredRoots};
use crate::wire::ca_server_id;

/// How far NotBefore is backdated, to absorb clock skew between CA and peers.
pub const BACKDATE: Duration = Duration::from_secs(30);
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ISSUING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long an SVID signed now may still be valid: the CA's `max_ttl`, but never less
/// than the 24 hours it once defaulted to (an SVID issued before an operator lowered
/// `max_ttl` may live that long), plus the backdating. Retired roots and revoked serials
/// are kept this long.
pub fn longest_svid_life(max_ttl: Duration) -> Duration {
    max_ttl.max(Duration::from_secs(24 * 3600)) + BACKDATE
}

/// Why a CA directory could not be created, loaded or rotated.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `ca init` found a `ca.yaml` or `root.key` in the directory; nothing was written.
    #[error("{0} already holds a CA; refusing to overwrite it (choose another --dir)")]
    AlreadyExists(PathBuf),
    /// The directory has no `ca.yaml`, so it is not (yet) a CA.
    #[error("{0} is not a CA directory (no ca.yaml); create one with `airlock ca init`")]
    NotACaDir(PathBuf),
    /// A file of the CA directory could not be read, written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory at fault.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// `ca.yaml` or `rotation.json` is invalid, or `ca rotate` misses `root.key`; the
    /// message names the file.
    #[error("{0}")]
    Config(String),
    /// A CA key or the passphrase could not be read, decrypted, checked or written.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate of the directory is unreadable, is no signing certificate, or does
    /// not belong to its key (or, for `ca rotate`, `bundle.pem` lacks `root.pem`).
    #[error("{path}: {reason}")]
    BadCertificate {
        /// The certificate file: `issuing.pem`, `root.pem` or `previous-issuing.pem`.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `bundle.pem` does not load as a trust bundle of the CA's trust domain.
    #[error(transparent)]
    Bundle(#[from] airlock_identity::bundle::BundleError),
    /// rcgen could not generate a key, sign a root or intermediate, or take the issuing
    /// certificate and key as a signer.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Why a request for an SVID was refused. Each maps to one API status.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR is not PEM PKCS#10, its self-signature does not verify, or its key type is
    /// refused (API: 400 `csr_rejected`).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The lifetime asked for (or `default_ttl`) is above `max_ttl` (API: 400
    /// `ttl_rejected`).
    #[error("requested ttl {requested}s exceeds the CA maximum of {max}s (max_ttl in ca.yaml)")]
    TtlTooLong {
        /// The lifetime that would have been granted, in seconds.
        requested: u64,
        /// `max_ttl`, in seconds.
        max: u64,
    },
    /// The lifetime asked for is under one second (API: 400 `ttl_rejected`).
    #[error("requested ttl must be at least 1 second")]
    TtlZero,
    /// The identity belongs to another trust domain (API: 403 `identity_not_permitted`).
    #[error("{id} is outside this CA's trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// The identity asked for.
        id: SpiffeId,
        /// This CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// The identity is the CA's own API identity (`spiffe://<td>/ns/airlock/sa/ca`),
    /// which no caller or operator may obtain (API: 403 `identity_not_permitted`).
    #[error("{0} is reserved for the CA itself")]
    ReservedIdentity(SpiffeId),
    /// The issuing certificate's NotAfter has passed; nothing is issued until `ca rotate`
    /// (API: 500 `internal`).
    #[error("the issuing certificate has expired; rotate the CA")]
    IssuerExpired,
    /// The identity is on the deny list (API: 403 `identity_revoked`).
    #[error("{0} is revoked (airlock ca revoke); no SVID is issued for it")]
    Revoked(SpiffeId),
    /// rcgen could not build or sign the leaf (API: 500 `internal`).
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A freshly issued SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The identity in the leaf's URI SAN: the one the caller authenticated as.
    pub id: SpiffeId,
    /// Leaf first, then the issuing intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's 128-bit random serial, lower-case hex, as the audit log records it and
    /// `ca revoke --serial` takes it.
    pub serial_hex: String,
    /// The leaf's NotAfter, in whole seconds: now + ttl, never past the issuer's NotAfter.
    pub not_after: OffsetDateTime,
}

impl IssuedSvid {
    /// The chain as PEM blocks, leaf first, as `POST /v1/svid` answers and `ca issue`
    /// prints it.
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(|der| der_to_pem(der)).collect()
    }
}

/// A loaded CA: settings, trust bundle and the issuing key (the root key stays on disk).
pub struct CertificateAuthority {
    dir: PathBuf,
    config: CaConfig,
    bundle: TrustBundle,
    issuing_cert: CertificateDer<'static>,
    issuing_not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
    /// Retired issuers whose SVIDs may still renew (`ca rotate --keep-renewals`).
    previous_issuers: Vec<CertificateDer<'static>>,
    /// When the next retired root leaves the bundle, if one is waiting to.
    next_root_drop: Option<i64>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("trust_domain", &self.config.trust_domain)
            .finish_non_exhaustive()
    }
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

impl CertificateAuthority {
    /// Creates a CA directory: root and issuing intermediate (ECDSA P-256), encrypted keys,
    /// bundle and `ca.yaml`. Refuses a directory that already holds a CA.
    pub fn init(
        dir: &Path,
        trust_domain: TrustDomain,
        passphrase: &Passphrase,
    ) -> Result<Self, CaError> {
        passphrase.check_strong_enough()?;
        if dir.join("ca.yaml").exists() || dir.join("root.key").exists() {
            return Err(CaError::AlreadyExists(dir.to_owned()));
        }
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let now = OffsetDateTime::now_utc();
        let (root_key, root_params, root_cert) = new_root(&trust_domain, now)?;
        let root_not_after = root_params.not_after;
        let root_issuer = Issuer::new(root_params, &root_key);
        let (issuing_key, issuing_cert) =
            new_issuing(&trust_domain, &root_issuer, now, root_not_after)?;

        // Keys first: a crash part-way leaves no ca.yaml, so the directory is not a CA yet.
        write_encrypted_key(&dir.join("root.key"), &root_key, passphrase)?;
        write_encrypted_key(&dir.join("issuing.key"), &issuing_key, passphrase)?;
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes(), mode).map_err(io_at(&path))
        };
        write("root.pem", &root_cert.pem(), 0o644)?;
        write("issuing.pem", &issuing_cert.pem(), 0o644)?;
        write("bundle.pem", &root_cert.pem(), 0o644)?;
        write("ca.yaml", &CaConfig::new(trust_domain).to_yaml(), 0o644)?;
        Self::load(dir, passphrase, KeyFileAccess::OwnerOnly)
    }

    /// Loads a CA directory; needs the passphrase for the issuing key, which `access`
    /// says who may read.
    pub fn load(
        dir: &Path,
        passphrase: &Passphrase,
        access: KeyFileAccess,
    ) -> Result<Self, CaError> {
        Self::load_with_config(dir, Self::load_config(dir)?, passphrase, access)
    }

    /// Loads the keys, certificates and bundle of `dir` under settings already read.
    pub fn load_with_config(
        dir: &Path,
        config: CaConfig,
        passphrase: &Passphrase,
        access: KeyFileAccess,
    ) -> Result<Self, CaError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let retired = RetiredRoots::load(dir)?;
        let bundle_path = dir.join("bundle.pem");
        let written = TrustBundle::load(config.trust_domain.clone(), &bundle_path)?;
        let mut bundle = TrustBundle::new(
            config.trust_domain.clone(),
            retired.still_trusted(written.roots(), now),
            &bundle_path.display().to_string(),
        )?;
        // spiffe_sequence must grow whenever the roots change; rotation rewrites
        // bundle.pem, and a retired root leaves at its drop time, so the later of the two
        // is such a number.
        let modified = fs::metadata(&bundle_path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(1, |d| d.as_secs());
        bundle.sequence = modified.max(retired.last_drop_before(now).unwrap_or(0));
        let issuing_path = dir.join("issuing.pem");
        let issuing_cert =
            CertificateDer::from_pem_file(&issuing_path).map_err(|e| CaError::BadCertificate {
                path: issuing_path.clone(),
                reason: e.to_string(),
            })?;
        airlock_identity::svid::inspect_signing_cert(&issuing_cert).map_err(|e| {
            CaError::BadCertificate {
                path: issuing_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let issuing_not_after =
            not_after_of(&issuing_cert).ok_or_else(|| CaError::BadCertificate {
                path: issuing_path.clone(),
                reason: "unreadable validity".into(),
            })?;
        let key = read_encrypted_key(&dir.join("issuing.key"), passphrase, access)?;
        if key.subject_public_key_info() != public_key_of(&issuing_cert).unwrap_or_default() {
            return Err(CaError::BadCertificate {
                path: issuing_path,
                reason: "issuing.key does not belong to this certificate".into(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&issuing_cert, key)?;
        let previous_path = dir.join(PREVIOUS_ISSUING);
        let previous_issuers = if previous_path.exists() {
            CertificateDer::pem_file_iter(&previous_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| CaError::BadCertificate {
                    path: previous_path,
                    reason: e.to_string(),
                })?
        } else {
            Vec::new()
        };
        Ok(Self {
            dir: dir.to_owned(),
            config,
            bundle,
            issuing_cert,
            issuing_not_after,
            issuer,
            previous_issuers,
            next_root_drop: retired.next_drop_after(now),
        })
    }

    /// The deny list of this CA (`revocation_file` in ca.yaml).
    pub fn revocation_store(&self) -> RevocationStore {
        RevocationStore::new(self.dir.join(&self.config.revocation_file))
    }

    /// When a retired root is due to leave the bundle; a server reloads then.
    pub fn next_root_drop(&self) -> Option<i64> {
        self.next_root_drop
    }

    /// Whether a renewal may present `leaf`: it must be signed by the current issuing
    /// certificate, or by one an operator kept with `ca rotate --keep-renewals`. An SVID
    /// of a retired issuer chains to a trusted root, but rotating is how an operator cuts
    /// off whoever holds one.
    pub fn may_renew(&self, leaf: &[u8]) -> bool {
        use x509_parser::prelude::FromDer;
        let Ok((_, leaf)) = x509_parser::certificate::X509Certificate::from_der(leaf) else {
            return false;
        };
        std::iter::once(&self.issuing_cert)
            .chain(&self.previous_issuers)
            .any(|issuer| {
                x509_parser::certificate::X509Certificate::from_der(issuer).is_ok_and(
                    |(_, issuer)| leaf.verify_signature(Some(issuer.public_key())).is_ok(),
                )
            })
    }

    /// Reads `ca.yaml` alone (no secrets needed), e.g. for token management.
    pub fn load_config(dir: &Path) -> Result<CaConfig, CaError> {
        let path = dir.join("ca.yaml");
        if !path.exists() {
            return Err(CaError::NotACaDir(dir.to_owned()));
        }
        let text = fs::read_to_string(&path).map_err(io_at(&path))?;
        CaConfig::parse(&text, &path).map_err(CaError::Config)
    }

    /// The settings this CA was loaded with (`ca.yaml` as it was at load).
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The CA directory; relative paths in `ca.yaml` resolve against it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trust bundle: the roots of `bundle.pem`, less retired roots whose drop time had
    /// passed at load.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// When the current issuing certificate expires.
    pub fn issuing_not_after(&self) -> OffsetDateTime {
        self.issuing_not_after
    }

    /// The trust domain of every SVID this CA issues.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.config.trust_domain
    }

    /// Issues an SVID for `id` to the key in `csr_pem`. `id` must come from how the caller
    /// authenticated (or from the operator), never from the CSR.
    pub fn issue_from_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Option<Duration>,
        revocations: &Revocations,
    ) -> Result<IssuedSvid, IssueError> {
        let public_key = public_key_from_csr(csr_pem)?;
        self.issue_workload(&public_key, id, ttl, revocations)
    }

    /// Issues a workload SVID (no DNS or IP names). The CA's own identity and identities
    /// on the deny list are refused.
    pub fn issue_workload(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        ttl: Option<Duration>,
        revocations: &Revocations,
    ) -> Result<IssuedSvid, IssueError> {
        self.check_workload(id, revocations)?;
        self.issue(public_key, id, ttl, &[])
    }

    /// The identity checks of [`Self::issue_workload`], for a caller that must know the
    /// answer before it spends a credential.
    pub fn check_workload(
        &self,
        id: &SpiffeId,
        revocations: &Revocations,
    ) -> Result<(), IssueError> {
        if *id == ca_server_id(self.trust_domain()) {
            return Err(IssueError::ReservedIdentity(id.clone()));
        }
        if revocations.revokes_identity(id) {
            return Err(IssueError::Revoked(id.clone()));
        }
        Ok(())
    }

    /// Refuses early when nothing can be issued at all (so a caller's one-time token is not
    /// spent on a request that would fail anyway).
    pub fn ensure_can_issue(&self) -> Result<(), IssueError> {
        if OffsetDateTime::now_utc() >= self.issuing_not_after {
            return Err(IssueError::IssuerExpired);
        }
        Ok(())
    }

    /// The lifetime a request gets: `requested` or the default, refused above `max_ttl`.
    pub fn effective_ttl(&self, requested: Option<Duration>) -> Result<Duration, IssueError> {
        let ttl = requested.unwrap_or(self.config.default_ttl);
        if ttl > self.config.max_ttl {
            return Err(IssueError::TtlTooLong {
                requested: ttl.as_secs(),
                max: self.config.max_ttl.as_secs(),
            });
        }
        if ttl < Duration::from_secs(1) {
            return Err(IssueError::TtlZero);
        }
        Ok(ttl)
    }

    /// Builds and signs an SVID from the CA's template: empty subject, one URI SAN
    /// (critical), `extra_sans` (DNS/IP names of a server), cA=false, keyUsage digitalSignature (critical),
    /// EKU serverAuth+clientAuth, 128-bit random serial, SKI/AKI, NotBefore backdated,
    /// NotAfter = now + ttl capped at the issuer's NotAfter.
    pub fn issue(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        ttl: Option<Duration>,
        extra_sans: &[SanType],
    ) -> Result<IssuedSvid, IssueError> {
        if id.trust_domain_name() != self.trust_domain().as_str() {
            return Err(IssueError::ForeignTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain().clone(),
            });
        }
        let ttl = self.effective_ttl(ttl)?;
        let now = OffsetDateTime::now_utc();
        if now >= self.issuing_not_after {
            return Err(IssueError::IssuerExpired);
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.as_str().try_into().expect("SPIFFE IDs are ASCII"),
        )];
        params.subject_alt_names.extend_from_slice(extra_sans);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut serial);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = now - BACKDATE;
        // X.509 times have whole seconds; report exactly what the certificate says.
        params.not_after = (now + ttl)
            .min(self.issuing_not_after)
            .replace_nanosecond(0)
            .expect("0 is a valid nanosecond");

        let leaf = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedSvid {
            id: id.clone(),
            chain: vec![leaf.der().clone(), self.issuing_cert.clone()],
            serial_hex: airlock_identity::hex(&serial),
            not_after: params.not_after,
        })
    }
}

/// A new self-signed root (ECDSA P-256, 10 years): key, parameters, certificate.
pub(crate) fn new_root(
    trust_domain: &TrustDomain,
    now: OffsetDateTime,
) -> Result<(KeyPair, CertificateParams, rcgen::Certificate), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = signing_params(trust_domain, "root", 1);
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    let cert = params.self_signed(&key)?;
    Ok((key, params, cert))
}

/// A new issuing intermediate signed by `root`, valid a year but never past `root_not_after`.
pub(crate) fn new_issuing(
    trust_domain: &TrustDomain,
    root: &Issuer<'_, impl rcgen::SigningKey>,
    now: OffsetDateTime,
    root_not_after: OffsetDateTime,
) -> Result<(KeyPair, rcgen::Certificate), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = signing_params(trust_domain, "issuing", 0);
    params.not_before = now - BACKDATE;
    params.not_after = (now + ISSUING_LIFETIME).min(root_not_after);
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, root)?;
    Ok((key, cert))
}

/// Parameters shared by the root and the issuing intermediate.
fn signing_params(trust_domain: &TrustDomain, role: &str, path_len: u8) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "airlock");
    name.push(
        DnType::CommonName,
        format!("airlock {role} CA {trust_domain}"),
    );
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(trust_domain.uri().try_into().expect("ASCII"))];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut serial = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut serial);
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

pub(crate) fn not_after_of(der: &[u8]) -> Option<OffsetDateTime> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}

pub(crate) fn public_key_of(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}
