//! The live policy set of a proxy, reloaded from files without ever losing a valid one.
//!
//! `reload` reads and validates everything first and swaps only on success: an invalid
//! file keeps the old policy, returns the errors, and is counted. Subscribers learn of each
//! successful change through a watch channel (the proxy re-checks live connections then),
//! and [`PolicyStore::next_grant_change`] says when time-bound grants next open or lapse.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::load::{LoadError, load, policy_files};
use crate::set::PolicySet;

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files changed and the new set is live.
    Swapped,
    /// The files are byte-for-byte what is already live.
    Unchanged,
}

/// A proxy's live [`PolicySet`], loaded from `paths` and swapped atomically on each
/// successful [`reload`](Self::reload). Shared between the request path (which reads
/// [`current`](Self::current) lock-free) and the reloader.
#[derive(Debug)]
pub struct PolicyStore {
    paths: Vec<PathBuf>,
    current: ArcSwap<PolicySet>,
    /// Digest of the files behind `current`, to skip no-op reloads.
    fingerprint: Mutex<[u8; 32]>,
    generation: watch::Sender<u64>,
    failed_reloads: AtomicU64,
}

impl PolicyStore {
    /// Loads `paths` (files or directories); fails when they are invalid.
    pub fn open(paths: Vec<PathBuf>) -> Result<Self, Vec<LoadError>> {
        let fingerprint = fingerprint(&paths)?;
        let set = PolicySet::new(load(&paths)?.policies);
        Ok(Self {
            paths,
            current: ArcSwap::from_pointee(set),
            fingerprint: Mutex::new(fingerprint),
            generation: watch::channel(0).0,
            failed_reloads: AtomicU64::new(0),
        })
    }

    /// The live set; cheap, lock-free.
    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    /// Re-reads the files. On any error the live set stays as it was.
    pub fn reload(&self) -> Result<Reloaded, Vec<LoadError>> {
        let mut live = self.fingerprint.lock().expect("policy store lock poisoned");
        let result = fingerprint(&self.paths).and_then(|digest| {
            if digest == *live {
                return Ok(None);
            }
            load(&self.paths).map(|documents| Some((digest, documents)))
        });
        match result {
            Ok(None) => Ok(Reloaded::Unchanged),
            Ok(Some((digest, documents))) => {
                self.current
                    .store(Arc::new(PolicySet::new(documents.policies)));
                *live = digest;
                self.generation.send_modify(|g| *g += 1);
                Ok(Reloaded::Swapped)
            }
            Err(errors) => {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                Err(errors)
            }
        }
    }

    /// The live set and its version: the hex SHA-256 of the names and contents of the
    /// files behind it. Read under the reload lock, so the two always belong together
    /// (the sidecar's `/status` and `/policy/eval` report which set answered).
    pub fn versioned(&self) -> (Arc<PolicySet>, String) {
        let live = self.fingerprint.lock().expect("policy store lock poisoned");
        let version = live.iter().map(|b| format!("{b:02x}")).collect();
        (self.current(), version)
    }

    /// A receiver whose value (the generation) changes on every successful swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// How many reloads were refused because the files were invalid.
    pub fn failed_reloads(&self) -> u64 {
        self.failed_reloads.load(Ordering::Relaxed)
    }

    /// When a time-bound grant of the live set next opens or lapses (Unix seconds).
    pub fn next_grant_change(&self, now: i64) -> Option<i64> {
        self.current().next_grant_change(now)
    }
}

/// SHA-256 over the names and contents of every policy file, read through symlinks.
fn fingerprint(paths: &[PathBuf]) -> Result<[u8; 32], Vec<LoadError>> {
    let mut hasher = Sha256::new();
    for file in policy_files(paths)? {
        let bytes = std::fs::read(&file).map_err(|e| {
            vec![LoadError {
                file: file.clone(),
                line: None,
                column: None,
                message: e.to_string(),
            }]
        })?;
        hasher.update(file.to_string_lossy().as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().into())
}
