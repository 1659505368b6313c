//! The live policy set of a proxy, reloaded from files without ever losing a valid one,
//! and joined by the policies a control plane pushes.
//!
//! `reload` reads and validates everything first and swaps only on success: an invalid
//! file keeps the old policy, returns the errors, and is counted. `set_pushed` replaces
//! the pushed policies the same way: all or nothing. Subscribers learn of each
//! successful change through a watch channel (the proxy re-checks live connections then),
//! and [`PolicyStore::next_grant_change`] says when time-bound grants next open or lapse.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::load::{LoadError, load, policy_files, unique_names};
use crate::set::{Policy, PolicySet};

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The files changed and the new set is live.
    Swapped,
    /// The files are byte-for-byte what is already live.
    Unchanged,
}

/// A proxy's live [`PolicySet`], loaded from `paths` and swapped atomically on each
/// successful [`reload`](Self::reload) or [`set_pushed`](Self::set_pushed). Shared
/// between the request path (which reads [`current`](Self::current) lock-free) and the
/// reloaders.
#[derive(Debug)]
pub struct PolicyStore {
    paths: Vec<PathBuf>,
    current: ArcSwap<PolicySet>,
    /// What the live set is made of; changed only under this lock.
    sources: Mutex<Sources>,
    generation: watch::Sender<u64>,
    failed_reloads: AtomicU64,
}

/// The two halves of the live set.
#[derive(Debug)]
struct Sources {
    /// Digest of the files behind `from_files`, to skip no-op reloads.
    fingerprint: [u8; 32],
    from_files: Vec<Policy>,
    pushed: Vec<Policy>,
    /// The control plane's version of `pushed`; empty without a control plane.
    pushed_version: String,
}

/// The set of both halves; a name in both is refused, naming where each was written.
fn joined(from_files: &[Policy], pushed: &[Policy]) -> Result<PolicySet, Vec<LoadError>> {
    let all: Vec<Policy> = from_files.iter().chain(pushed).cloned().collect();
    unique_names(&all)?;
    Ok(PolicySet::new(all))
}

impl Sources {
    fn version(&self) -> String {
        let files = airlock_identity::hex(&self.fingerprint);
        if self.pushed_version.is_empty() {
            files
        } else {
            let both = Sha256::digest(format!("{files}+{}", self.pushed_version));
            airlock_identity::hex(&both)
        }
    }
}

impl PolicyStore {
    /// Loads `paths` (files or directories); fails when they are invalid.
    pub fn open(paths: Vec<PathBuf>) -> Result<Self, Vec<LoadError>> {
        let fingerprint = fingerprint(&paths)?;
        let from_files = load(&paths)?.policies;
        Ok(Self {
            paths,
            current: ArcSwap::from_pointee(PolicySet::new(from_files.clone())),
            sources: Mutex::new(Sources {
                fingerprint,
                from_files,
                pushed: Vec::new(),
                pushed_version: String::new(),
            }),
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
        let mut sources = self.sources();
        let result = fingerprint(&self.paths).and_then(|digest| {
            if digest == sources.fingerprint {
                return Ok(None);
            }
            let from_files = load(&self.paths)?.policies;
            let set = joined(&from_files, &sources.pushed)?;
            Ok(Some((digest, from_files, set)))
        });
        match result {
            Ok(None) => Ok(Reloaded::Unchanged),
            Ok(Some((digest, from_files, set))) => {
                sources.fingerprint = digest;
                sources.from_files = from_files;
                self.swap(set);
                Ok(Reloaded::Swapped)
            }
            Err(errors) => {
                self.failed_reloads.fetch_add(1, Ordering::Relaxed);
                Err(errors)
            }
        }
    }

    /// Replaces the control plane's policies with `pushed`, at its `version`. Refused,
    /// with the live set unchanged, when a pushed policy has the name of a file's.
    pub fn set_pushed(&self, pushed: Vec<Policy>, version: &str) -> Result<(), Vec<LoadError>> {
        let mut sources = self.sources();
        let set = joined(&sources.from_files, &pushed)?;
        sources.pushed = pushed;
        sources.pushed_version = version.to_owned();
        self.swap(set);
        Ok(())
    }

    fn swap(&self, set: PolicySet) {
        self.current.store(Arc::new(set));
        self.generation.send_modify(|g| *g += 1);
    }

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live set and its version: the hex SHA-256 of the names and contents of the
    /// files behind it (and, with a control plane, of its version too). Read under the
    /// reload lock, so the two always belong together (the sidecar's `/status` and
    /// `/policy/eval` report which set answered).
    pub fn versioned(&self) -> (Arc<PolicySet>, String) {
        let sources = self.sources();
        (self.current(), sources.version())
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
