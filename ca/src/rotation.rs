//! `airlock ca rotate`: a new issuing CA, and with `--root` a new root, in one command.
//!
//! - The new issuing certificate replaces the old one at once. SVIDs signed by the old one
//!   stay valid until they expire, but may not renew (an operator rotates to cut off
//!   whoever holds one) unless `--keep-renewals` keeps the old issuer in
//!   `previous-issuing.pem`. No SVID of the old issuer outlives
//!   [`longest_svid_life`] from now, so keeping it needs no end date.
//! - A new root joins `bundle.pem` beside the old one. The old root is retired: it leaves
//!   the bundle once every SVID it signed has expired ([`longest_svid_life`] from now),
//!   recorded in `rotation.json`, which every load of the CA honours.

use std::fs;
use std::path::Path;

use airlock_identity::TrustBundle;

use rcgen::{Issuer, PublicKeyData};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::authority::{
    CaError, CertificateAuthority, io_at, longest_svid_life, new_issuing, new_root, not_after_of,
    public_key_of,
};
use crate::keys::{
    KeyFileAccess, Passphrase, read_encrypted_key, write_atomic, write_encrypted_key,
};

/// The retired issuing certificate whose SVIDs may still renew.
pub const PREVIOUS_ISSUING: &str = "previous-issuing.pem";
const ROTATION_FILE: &str = "rotation.json";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotationFile {
    #[serde(default)]
    retired_roots: Vec<RetiredRoot>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetiredRoot {
    /// SHA-256 of the root's DER, lower-case hex.
    sha256: String,
    /// Unix seconds from which the root is no longer trusted.
    drop_after: i64,
}

/// The roots that `rotation.json` says are on their way out.
#[derive(Debug, Default)]
pub(crate) struct RetiredRoots(Vec<RetiredRoot>);

impl RetiredRoots {
    pub(crate) fn load(dir: &Path) -> Result<Self, CaError> {
        let path = dir.join(ROTATION_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<RotationFile>(&bytes)
                .map(|file| Self(file.retired_roots))
                .map_err(|e| CaError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(CaError::Io { path, source }),
        }
    }

    /// `roots` without those whose drop time has come.
    pub(crate) fn still_trusted(
        &self,
        roots: &[CertificateDer<'static>],
        now: i64,
    ) -> Vec<CertificateDer<'static>> {
        roots
            .iter()
            .filter(|root| {
                let digest = fingerprint(root);
                !self
                    .0
                    .iter()
                    .any(|retired| retired.sha256 == digest && retired.drop_after <= now)
            })
            .cloned()
            .collect()
    }

    /// The next drop time after `now`.
    pub(crate) fn next_drop_after(&self, now: i64) -> Option<i64> {
        self.0
            .iter()
            .map(|r| r.drop_after)
            .filter(|t| *t > now)
            .min()
    }

    /// The latest drop time that has passed.
    pub(crate) fn last_drop_before(&self, now: i64) -> Option<u64> {
        self.0
            .iter()
            .map(|r| r.drop_after)
            .filter(|t| *t <= now)
            .max()
            .and_then(|t| u64::try_from(t).ok())
    }
}

fn fingerprint(der: &[u8]) -> String {
    airlock_identity::hex(&Sha256::digest(der))
}

/// What a rotation did, for the operator.
#[derive(Debug)]
pub struct Rotation {
    /// Serial of the new issuing certificate, lower-case hex.
    pub issuing_serial: String,
    /// When the new issuing certificate expires (a year, never past its root's NotAfter).
    pub issuing_not_after: OffsetDateTime,
    /// With `--keep-renewals`: SVIDs of the old issuer renew until at most this time.
    pub renewals_kept_until: Option<OffsetDateTime>,
    /// With `--root`: the old root stays in the bundle until then.
    pub previous_root_until: Option<OffsetDateTime>,
    /// Retired roots whose time had come, removed from `bundle.pem` now.
    pub dropped_roots: usize,
}

/// Rotates the CA in `dir` (see the module documentation). Needs `root.key` and the
/// passphrase, but not the current issuing key, so a rotation that was cut short (a
/// crash between two files) is repaired by running it again.
pub fn rotate(
    dir: &Path,
    passphrase: &Passphrase,
    rotate_root: bool,
    keep_renewals: bool,
) -> Result<Rotation, CaError> {
    let config = CertificateAuthority::load_config(dir)?;
    let trust_domain = config.trust_domain.clone();
    let now = OffsetDateTime::now_utc();
    let unix_now = now.unix_timestamp();
    let last_svid_expiry = now
        .checked_add(
            longest_svid_life(config.max_ttl)
                .try_into()
                .unwrap_or(time::Duration::MAX),
        )
        .unwrap_or(OffsetDateTime::new_utc(
            time::Date::MAX,
            time::Time::MIDNIGHT,
        ));
    let root_key_path = dir.join("root.key");
    if !root_key_path.exists() {
        return Err(CaError::Config(format!(
            "{} is missing: ca rotate signs the new issuing CA with the root key; bring it back from offline storage",
            root_key_path.display()
        )));
    }
    let root_pem_path = dir.join("root.pem");
    let bad_root = |reason: String| CaError::BadCertificate {
        path: root_pem_path.clone(),
        reason,
    };
    let current_root =
        CertificateDer::from_pem_file(&root_pem_path).map_err(|e| bad_root(e.to_string()))?;
    let current_root_key =
        read_encrypted_key(&root_key_path, passphrase, KeyFileAccess::OwnerOnly)?;
    if public_key_of(&current_root).as_deref()
        != Some(current_root_key.subject_public_key_info().as_slice())
    {
        return Err(bad_root(
            "root.key does not belong to this certificate".into(),
        ));
    }

    let mut retired = RetiredRoots::load(dir)?;
    let bundle_path = dir.join("bundle.pem");
    let written = TrustBundle::load(trust_domain.clone(), &bundle_path)?;
    let mut roots = retired.still_trusted(written.roots(), unix_now);
    let dropped_roots = written.roots().len() - roots.len();
    retired.0.retain(|r| r.drop_after > unix_now);
    if !roots.contains(&current_root) {
        return Err(bad_root(
            "bundle.pem does not hold root.pem; add it back before rotating".into(),
        ));
    }

    let (root_key, root_der, root_not_after, previous_root_until) = if rotate_root {
        let (key, params, cert) = new_root(&trust_domain, now)?;
        retired.0.push(RetiredRoot {
            sha256: fingerprint(&current_root),
            drop_after: last_svid_expiry.unix_timestamp(),
        });
        roots.push(cert.der().clone());
        (
            key,
            cert.der().clone(),
            params.not_after,
            Some(last_svid_expiry),
        )
    } else {
        let not_after =
            not_after_of(&current_root).ok_or_else(|| bad_root("unreadable validity".into()))?;
        (current_root_key, current_root, not_after, None)
    };
    let root_issuer = Issuer::from_ca_cert_der(&root_der, &root_key)?;
    let (issuing_key, issuing_cert) =
        new_issuing(&trust_domain, &root_issuer, now, root_not_after)?;

    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        write_atomic(&path, bytes, 0o644).map_err(io_at(&path))
    };
    // Each file is replaced atomically, in an order where a crash between two leaves a
    // CA that loads and a rotation that can simply run again: the bundle trusts a new
    // root before anything names it; the root changes before it is retired; the issuing
    // pair changes last, key first (until its certificate follows, loading refuses the
    // pair, and running `ca rotate` again writes a new one).
    let bundle_pem: String = roots
        .iter()
        .map(|der| airlock_identity::bundle::der_to_pem(der))
        .collect();
    write("bundle.pem", bundle_pem.as_bytes())?;
    if rotate_root {
        write_encrypted_key(&root_key_path, &root_key, passphrase)?;
        write(
            "root.pem",
            airlock_identity::bundle::der_to_pem(&root_der).as_bytes(),
        )?;
    }
    let rotation = RotationFile {
        retired_roots: retired.0,
    };
    write(
        ROTATION_FILE,
        &serde_json::to_vec_pretty(&rotation).expect("serializable"),
    )?;
    let previous = dir.join(PREVIOUS_ISSUING);
    let current_issuing = dir.join("issuing.pem");
    if keep_renewals {
        let current = fs::read(&current_issuing).map_err(io_at(&current_issuing))?;
        write(PREVIOUS_ISSUING, &current)?;
    } else if previous.exists() {
        fs::remove_file(&previous).map_err(io_at(&previous))?;
    }
    write_encrypted_key(&dir.join("issuing.key"), &issuing_key, passphrase)?;
    write("issuing.pem", issuing_cert.pem().as_bytes())?;

    let rotated = CertificateAuthority::load(dir, passphrase, KeyFileAccess::OwnerOnly)?;
    Ok(Rotation {
        issuing_serial: serial_of(issuing_cert.der()),
        issuing_not_after: rotated.issuing_not_after(),
        renewals_kept_until: keep_renewals.then_some(last_svid_expiry),
        previous_root_until,
        dropped_roots,
    })
}

fn serial_of(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .map(|(_, cert)| airlock_identity::hex(cert.raw_serial()))
        .unwrap_or_default()
}
