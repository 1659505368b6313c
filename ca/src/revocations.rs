//! The CA's side of revocation: the deny list file that `airlock ca revoke` edits under a
//! lock and that `ca serve` re-reads (see [`airlock_identity::revocation`] for what the
//! entries mean). Issuance and renewal consult it, and it is served to sidecars at
//! `GET /v1/revocations`, whose verifiers refuse revoked peers in the handshake.

use std::path::PathBuf;
use std::time::Duration;

use airlock_identity::SpiffeId;
use airlock_identity::revocation::{
    RevocationDocument, Revocations, RevokedIdentity, RevokedSerial, normalize_serial,
};

use crate::authority::longest_svid_life;
use crate::json_file::{JsonFileError, LockedJson};

/// Why the deny list could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The deny list file or its lock could not be read, parsed or written.
    #[error(transparent)]
    File(#[from] JsonFileError),
    /// The serial is not hex digits (colons allowed), or is empty or over 128 characters.
    #[error("--serial {0:?} is not a hexadecimal certificate serial")]
    BadSerial(String),
    /// A lift named an entry that is not on the list.
    #[error("{0} is not on the revocation list")]
    NotRevoked(String),
}

/// What to revoke or lift.
#[derive(Debug, Clone)]
pub enum Target {
    /// One certificate, by its serial in hex (colons, case and leading zeros do not
    /// matter); the entry lapses once that certificate could no longer be valid.
    Serial(String),
    /// Every SVID of this SPIFFE ID, whatever its serial, until the entry is lifted.
    Identity(SpiffeId),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Serial(serial) => write!(f, "serial {serial}"),
            Self::Identity(id) => write!(f, "identity {id}"),
        }
    }
}

/// The deny list file of one CA.
#[derive(Debug, Clone)]
pub struct RevocationStore {
    file: LockedJson,
}

impl RevocationStore {
    /// The deny list at `path` (`revocation_file`, already joined to the CA directory),
    /// locked through a `.lock` file beside it.
    pub fn new(path: PathBuf) -> Self {
        Self {
            file: LockedJson::new(path),
        }
    }

    /// The deny list file.
    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }

    /// The list in force at `now`; a missing file is an empty list.
    pub fn load(&self, now: i64) -> Result<Revocations, RevocationError> {
        Ok(Revocations::new(self.file.read()?, now))
    }

    /// Adds `target`. A serial entry lapses once no certificate with that serial can be
    /// valid: [`longest_svid_life`] after now.
    pub fn revoke(
        &self,
        target: &Target,
        reason: Option<String>,
        now: i64,
        max_ttl: Duration,
    ) -> Result<(), RevocationError> {
        self.file.update(|document: &mut RevocationDocument| {
            // Rewriting drops lapsed entries too.
            *document = Revocations::new(std::mem::take(document), now)
                .document()
                .clone();
            match target {
                Target::Serial(serial) => {
                    let serial = checked_serial(serial)?;
                    document.serials.retain(|e| e.serial != serial);
                    let lifetime = longest_svid_life(max_ttl).as_secs();
                    document.serials.push(RevokedSerial {
                        serial,
                        revoked_at: now,
                        expires_at: now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
                        reason,
                    });
                }
                Target::Identity(id) => {
                    document.spiffe_ids.retain(|e| e.spiffe_id != *id);
                    document.spiffe_ids.push(RevokedIdentity {
                        spiffe_id: id.clone(),
                        revoked_at: now,
                        reason,
                    });
                }
            }
            Ok(())
        })
    }

    /// Removes `target` from the list (an operator re-admitting an identity).
    pub fn lift(&self, target: &Target) -> Result<(), RevocationError> {
        self.file.update(|document: &mut RevocationDocument| {
            let before = document.serials.len() + document.spiffe_ids.len();
            match target {
                Target::Serial(serial) => {
                    let serial = checked_serial(serial)?;
                    document
                        .serials
                        .retain(|e| normalize_serial(&e.serial) != serial);
                }
                Target::Identity(id) => document.spiffe_ids.retain(|e| e.spiffe_id != *id),
            }
            if before == document.serials.len() + document.spiffe_ids.len() {
                return Err(RevocationError::NotRevoked(target.to_string()));
            }
            Ok(())
        })
    }
}

fn checked_serial(serial: &str) -> Result<String, RevocationError> {
    let mut digits = serial.chars().filter(|c| *c != ':').peekable();
    let valid = digits.peek().is_some() && digits.all(|c| c.is_ascii_hexdigit());
    if !valid || serial.len() > 128 {
        return Err(RevocationError::BadSerial(serial.to_owned()));
    }
    Ok(normalize_serial(serial))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serials a loaded list holds in force (normalized); the handshake's check of
    /// an SVID against them is airlock-identity's, tested there.
    fn serials(list: &Revocations) -> Vec<&str> {
        list.document()
            .serials
            .iter()
            .map(|entry| entry.serial.as_str())
            .collect()
    }

    #[test]
    fn revoke_lift_and_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let store = RevocationStore::new(dir.path().join("revocations.json"));
        assert!(
            store.load(0).unwrap().is_empty(),
            "no file: nothing revoked"
        );
        let hour = Duration::from_secs(3600);
        let id = SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap();
        store
            .revoke(&Target::Serial("00:AB".into()), None, 1000, hour)
            .unwrap();
        store
            .revoke(
                &Target::Identity(id.clone()),
                Some("leak".into()),
                1000,
                hour,
            )
            .unwrap();
        let list = store.load(1001).unwrap();
        assert_eq!(serials(&list), ["ab"], "stored normalized");
        assert!(list.revokes_identity(&id));
        let lapsed = store.load(1000 + 24 * 3600 + 31).unwrap();
        assert!(serials(&lapsed).is_empty(), "the serial entry lapsed");
        assert!(lapsed.revokes_identity(&id), "identities stay until lifted");

        store.lift(&Target::Identity(id.clone())).unwrap();
        assert!(!store.load(1001).unwrap().revokes_identity(&id));
        assert!(matches!(
            store.lift(&Target::Identity(id)),
            Err(RevocationError::NotRevoked(_))
        ));
        for bad in ["xyz", "::", ""] {
            assert!(matches!(
                store.revoke(&Target::Serial(bad.into()), None, 0, hour),
                Err(RevocationError::BadSerial(_))
            ));
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(store.path()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
