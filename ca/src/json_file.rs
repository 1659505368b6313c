//! A JSON document in the CA directory that several processes edit (`ca token create` and
//! `ca revoke` while `ca serve` runs): every read-modify-write holds an exclusive lock on a
//! sibling lock file, and the write is atomic, so readers see the old or the new document
//! and two writers never lose each other's change.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::keys::write_atomic;

/// Why a [`LockedJson`] document could not be read, locked or written.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    /// Opening, locking, reading or writing the document or its lock file failed.
    #[error("{path}: {source}")]
    Io {
        /// The document or its lock file.
        path: PathBuf,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// The document is not JSON of the expected shape; it is left as it is.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The document.
        path: PathBuf,
        /// The JSON error, with line and column.
        reason: String,
    },
}

/// One locked JSON file (mode 0600) and its lock.
#[derive(Debug, Clone)]
pub struct LockedJson {
    file: PathBuf,
    lock: PathBuf,
}

impl LockedJson {
    /// `file` and the lock file beside it, `<file stem>.lock`.
    pub fn new(file: PathBuf) -> Self {
        let lock = file.with_extension("lock");
        Self { file, lock }
    }

    /// The document's path (not the lock file's).
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The document as it is now; a missing file is the empty document.
    pub fn read<T: DeserializeOwned + Default>(&self) -> Result<T, JsonFileError> {
        match fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| JsonFileError::Corrupt {
                path: self.file.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(source) => Err(JsonFileError::Io {
                path: self.file.clone(),
                source,
            }),
        }
    }

    /// Runs `change` on the document under the exclusive lock and writes the result back
    /// only when `change` succeeded.
    pub fn update<T, R, E>(&self, change: impl FnOnce(&mut T) -> Result<R, E>) -> Result<R, E>
    where
        T: Serialize + DeserializeOwned + Default,
        E: From<JsonFileError>,
    {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| JsonFileError::Io { path, source }
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(io(&self.lock))?;
        lock.lock().map_err(io(&self.lock))?;
        let mut document = self.read()?;
        let result = change(&mut document)?;
        let json = serde_json::to_vec_pretty(&document).expect("documents serialize");
        write_atomic(&self.file, &json, 0o600).map_err(io(&self.file))?;
        // `lock` is dropped (and the lock released) only now, after the write.
        Ok(result)
    }
}
