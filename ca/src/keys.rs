//! CA private keys at rest: encrypted PKCS#8 (PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC,
//! which `openssl pkey -passin` opens), written atomically with mode 0600, and refused at
//! load when group or others could read them.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pkcs8::der::pem::LineEnding;
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo, SecretDocument};
use rand::RngCore;
use rcgen::KeyPair;

/// The environment variable that carries the CA key passphrase.
pub const PASSPHRASE_ENV: &str = "AIRLOCK_CA_PASSPHRASE";
/// OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
const PBKDF2_ITERATIONS: u32 = 600_000;
/// Shortest passphrase `ca init` accepts for new keys.
pub const MIN_PASSPHRASE_LEN: usize = 8;

/// Why a CA key or its passphrase could not be read, checked or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither `--passphrase-file` nor `AIRLOCK_CA_PASSPHRASE` was given.
    #[error(
        "no CA key passphrase: set {PASSPHRASE_ENV} or pass --passphrase-file (it is never taken as an argument)"
    )]
    NoPassphrase,
    /// The passphrase file (after its trailing newline) or the variable is empty.
    #[error("the CA key passphrase from {origin} is empty")]
    EmptyPassphrase {
        /// Where the passphrase came from: the file's path or the variable's name.
        origin: String,
    },
    /// A passphrase for new keys is shorter than [`MIN_PASSPHRASE_LEN`] characters.
    #[error("the CA key passphrase from {origin} is shorter than {MIN_PASSPHRASE_LEN} characters")]
    ShortPassphrase {
        /// Where the passphrase came from: the file's path or the variable's name.
        origin: String,
    },
    /// Others have any access to a key or passphrase file, or its group may write it;
    /// refused whatever [`KeyFileAccess`] allows.
    #[error(
        "{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}` and try again"
    )]
    OpenPermissions {
        /// The key or passphrase file.
        path: PathBuf,
        /// Its permission bits (`0o777` masked).
        mode: u32,
    },
    /// The file's group may read it, under [`KeyFileAccess::OwnerOnly`] or with a group
    /// this process does not belong to.
    #[error(
        "{path} is readable by its group (mode {mode:o}); run `chmod 600 {path}`, or, where \
         the group is the CA's own (a Kubernetes Secret volume with fsGroup), pass \
         --allow-group-readable-keys"
    )]
    GroupReadable {
        /// The key or passphrase file.
        path: PathBuf,
        /// Its permission bits (`0o777` masked).
        mode: u32,
    },
    /// Reading, writing or inspecting a key or passphrase file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// The key file is not an `ENCRYPTED PRIVATE KEY` PEM block of PKCS#8; a plaintext key
    /// lands here.
    #[error("{path} is not an encrypted PKCS#8 key (\"ENCRYPTED PRIVATE KEY\" PEM): {reason}")]
    NotEncryptedPkcs8 {
        /// The key file.
        path: PathBuf,
        /// What the parser reported, or the PEM label found instead.
        reason: String,
    },
    /// The key does not decrypt under the passphrase to a valid PKCS#8 structure; a
    /// corrupt file looks the same.
    #[error("wrong passphrase for {path} (or the key file is corrupt)")]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },
    /// The key decrypts, but is not a key rcgen can sign with.
    #[error("{path} holds a key airlock cannot use: {reason}")]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// Why rcgen refused it.
        reason: String,
    },
    /// Encrypting a new key failed (PKCS#8 encoding, PBES2 parameters or PEM).
    #[error("cannot encrypt the key for {path}: {reason}")]
    Encrypt {
        /// The file the key was to be written to; it is left unchanged.
        path: PathBuf,
        /// What the encoder reported.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The secret that unlocks the CA keys. Its `Debug` never shows it.
pub struct Passphrase {
    secret: String,
    origin: String,
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Passphrase(from {}, redacted)", self.origin)
    }
}

impl Passphrase {
    /// Reads the passphrase from `file` when given (which others may never read, nor its
    /// group unless `access` allows it; one trailing newline is dropped), else from
    /// `AIRLOCK_CA_PASSPHRASE`.
    pub fn from_file_or_env(file: Option<&Path>, access: KeyFileAccess) -> Result<Self, KeyError> {
        let (secret, origin) = match file {
            Some(path) => {
                refuse_open_permissions(path, access)?;
                let text = fs::read_to_string(path).map_err(io_error(path))?;
                let text = text.strip_suffix('\n').unwrap_or(&text);
                let text = text.strip_suffix('\r').unwrap_or(text);
                (text.to_owned(), path.display().to_string())
            }
            None => (
                std::env::var(PASSPHRASE_ENV).map_err(|_| KeyError::NoPassphrase)?,
                PASSPHRASE_ENV.to_owned(),
            ),
        };
        if secret.is_empty() {
            return Err(KeyError::EmptyPassphrase { origin });
        }
        Ok(Self { secret, origin })
    }

    /// New keys get a passphrase of at least [`MIN_PASSPHRASE_LEN`] characters.
    pub fn check_strong_enough(&self) -> Result<(), KeyError> {
        if self.secret.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(KeyError::ShortPassphrase {
                origin: self.origin.clone(),
            });
        }
        Ok(())
    }
}

/// Who besides its owner may read a CA key file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyFileAccess {
    /// Mode 0600 or stricter: the rule everywhere by default.
    #[default]
    OwnerOnly,
    /// Group-readable too. Kubernetes projects Secret volumes as mode 0440 owned by the
    /// pod's fsGroup (the CA's own group); a non-root CA reads its key no other way.
    OwnerAndGroup,
}

/// Refuses a secret file that others can read, or its group unless `access` allows it
/// and the group is one this process belongs to (the pod's fsGroup, in Kubernetes).
pub fn refuse_open_permissions(path: &Path, access: KeyFileAccess) -> Result<(), KeyError> {
    let metadata = fs::metadata(path).map_err(io_error(path))?;
    let mode = metadata.permissions().mode() & 0o777;
    let path = path.to_owned();
    if mode & 0o007 != 0 || mode & 0o020 != 0 {
        return Err(KeyError::OpenPermissions { path, mode });
    }
    let group_may_read = mode & 0o040 != 0;
    if group_may_read && (access == KeyFileAccess::OwnerOnly || !own_group(metadata.gid())) {
        return Err(KeyError::GroupReadable { path, mode });
    }
    Ok(())
}

/// Whether `gid` is this process's effective group or one of its supplementary groups.
fn own_group(gid: u32) -> bool {
    // SAFETY: getegid cannot fail; getgroups writes at most `groups.len()` entries.
    let effective = unsafe { libc::getegid() };
    if gid == effective {
        return true;
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let count = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    usize::try_from(count).is_ok_and(|count| groups[..count].contains(&gid))
}

/// Encrypts `key` under `passphrase` and writes it atomically, mode 0600.
pub fn write_encrypted_key(
    path: &Path,
    key: &KeyPair,
    passphrase: &Passphrase,
) -> Result<(), KeyError> {
    let encrypt_error = |reason: String| KeyError::Encrypt {
        path: path.to_owned(),
        reason,
    };
    let der = key.serialize_der();
    let info =
        PrivateKeyInfo::try_from(der.as_slice()).map_err(|e| encrypt_error(e.to_string()))?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut iv);
    let params = pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, &iv)
        .map_err(|e| encrypt_error(e.to_string()))?;
    let encrypted = info
        .encrypt_with_params(params, passphrase.secret.as_bytes())
        .map_err(|e| encrypt_error(e.to_string()))?;
    let pem = encrypted
        .to_pem("ENCRYPTED PRIVATE KEY", LineEnding::LF)
        .map_err(|e| encrypt_error(e.to_string()))?;
    write_atomic(path, pem.as_bytes(), 0o600).map_err(io_error(path))
}

/// Loads an encrypted key written by [`write_encrypted_key`] (or by `openssl pkcs8
/// -topk8 -v2 aes-256-cbc`), refusing files that group or others can read.
pub fn read_encrypted_key(
    path: &Path,
    passphrase: &Passphrase,
    access: KeyFileAccess,
) -> Result<KeyPair, KeyError> {
    refuse_open_permissions(path, access)?;
    let pem = fs::read_to_string(path).map_err(io_error(path))?;
    let not_pkcs8 = |reason: String| KeyError::NotEncryptedPkcs8 {
        path: path.to_owned(),
        reason,
    };
    let (label, document) = SecretDocument::from_pem(&pem).map_err(|e| not_pkcs8(e.to_string()))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(not_pkcs8(format!("found a {label:?} block")));
    }
    let encrypted = EncryptedPrivateKeyInfo::try_from(document.as_bytes())
        .map_err(|e| not_pkcs8(e.to_string()))?;
    let plain = encrypted
        .decrypt(passphrase.secret.as_bytes())
        .map_err(|_| KeyError::WrongPassphrase {
            path: path.to_owned(),
        })?;
    // A wrong passphrase can, rarely, still unpad cleanly; the DER check then catches it.
    PrivateKeyInfo::try_from(plain.as_bytes()).map_err(|_| KeyError::WrongPassphrase {
        path: path.to_owned(),
    })?;
    KeyPair::try_from(plain.as_bytes()).map_err(|e| KeyError::UnusableKey {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `bytes` to `path` so that a reader sees the old file or the whole new one,
/// never a torn one: a temp file in the same directory (created with `mode`), fsync,
/// rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let mut suffix = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut suffix);
    let temp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        u64::from_le_bytes(suffix)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passphrase(secret: &str) -> Passphrase {
        Passphrase {
            secret: secret.into(),
            origin: "test".into(),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let key = KeyPair::generate().unwrap();
        write_encrypted_key(&path, &key, &passphrase("correct horse")).unwrap();

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(!text.contains("BEGIN PRIVATE KEY"));

        let owner_only = KeyFileAccess::OwnerOnly;
        let loaded = read_encrypted_key(&path, &passphrase("correct horse"), owner_only).unwrap();
        assert_eq!(loaded.public_key_raw(), key.public_key_raw());

        let wrong = read_encrypted_key(&path, &passphrase("wrong horse"), owner_only).unwrap_err();
        assert!(matches!(wrong, KeyError::WrongPassphrase { .. }), "{wrong}");

        // (mode, refused when owner-only, refused even when the group may read)
        let cases = [
            (0o400, false, false),
            (0o440, true, false),
            (0o640, true, false),
            (0o660, true, true),
            (0o604, true, true),
            (0o644, true, true),
        ];
        for (mode, refused_owner_only, refused_with_group) in cases {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            for (access, refused) in [
                (owner_only, refused_owner_only),
                (KeyFileAccess::OwnerAndGroup, refused_with_group),
            ] {
                let result = read_encrypted_key(&path, &passphrase("correct horse"), access);
                assert_eq!(result.is_err(), refused, "mode {mode:o} with {access:?}");
                if let Err(e) = result {
                    assert!(e.to_string().contains("chmod 600"), "{e}");
                }
            }
        }
        // A group-readable key whose group is not the process's own stays refused. Only
        // root can hand a file to another group.
        if std::os::unix::fs::chown(&path, None, Some(65534)).is_ok()
            && unsafe { libc::getegid() } != 65534
        {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o440)).unwrap();
            let foreign = read_encrypted_key(
                &path,
                &passphrase("correct horse"),
                KeyFileAccess::OwnerAndGroup,
            );
            assert!(foreign.is_err(), "a foreign group may not read the key");
        }
    }

    #[test]
    fn plaintext_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.pem");
        write_atomic(
            &path,
            KeyPair::generate().unwrap().serialize_pem().as_bytes(),
            0o600,
        )
        .unwrap();
        let err = read_encrypted_key(&path, &passphrase("whatever1"), KeyFileAccess::OwnerOnly)
            .unwrap_err();
        assert!(matches!(err, KeyError::NotEncryptedPkcs8 { .. }), "{err}");
    }

    #[test]
    fn short_passphrase_is_refused_for_new_keys() {
        assert!(passphrase("short").check_strong_enough().is_err());
        assert!(passphrase("long enough").check_strong_enough().is_ok());
    }
}
