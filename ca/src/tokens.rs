//! Join tokens: one-time (or N-time) bearer secrets bound to one SPIFFE ID.
//!
//! A token reads `airlock-join.<id>.<secret>`. The CA directory keeps only the SHA-256 of
//! the secret (`tokens.json`, mode 0600); the id only locates the record, the secret is
//! compared in constant time. Every read-modify-write of the file happens under an
//! exclusive lock on `tokens.lock`, so two concurrent uses of a single-use token (in one
//! process or several) cannot both succeed, and `airlock ca token create` may run while
//! `airlock ca serve` is up.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_identity::SpiffeId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::keys::write_atomic;

/// Every join token starts with this, which tells it apart from a JWT.
pub const TOKEN_PREFIX: &str = "airlock-join.";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unknown id, wrong secret, or already used up: deliberately one answer.
    #[error("invalid, expired or already used join token")]
    Invalid,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("--uses must be at least 1")]
    ZeroUses,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRecord {
    id: String,
    secret_sha256: String,
    spiffe_id: SpiffeId,
    /// Unix seconds.
    expires_at: i64,
    uses_left: u32,
}

/// The token records of one CA directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    file: PathBuf,
    lock: PathBuf,
}

/// A newly created token; `token` is shown once and never stored.
pub struct NewToken {
    pub token: String,
    pub expires_at: i64,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl TokenStore {
    pub fn new(ca_dir: &Path) -> Self {
        Self {
            file: ca_dir.join("tokens.json"),
            lock: ca_dir.join("tokens.lock"),
        }
    }

    /// Creates a token for `id`, valid for `ttl` and `uses` redemptions.
    pub fn create(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        uses: u32,
        now: i64,
    ) -> Result<NewToken, TokenError> {
        if uses == 0 {
            return Err(TokenError::ZeroUses);
        }
        let mut id_bytes = [0u8; 8];
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id_bytes);
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let record_id = airlock_identity::hex(&id_bytes);
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let expires_at = now.saturating_add(ttl.as_secs().try_into().unwrap_or(i64::MAX));
        self.update(now, |file| {
            file.tokens.push(TokenRecord {
                id: record_id.clone(),
                secret_sha256: sha256_hex(&secret),
                spiffe_id: id.clone(),
                expires_at,
                uses_left: uses,
            });
            Ok(())
        })?;
        Ok(NewToken {
            token: format!("{TOKEN_PREFIX}{record_id}.{secret}"),
            expires_at,
        })
    }

    /// Redeems one use of `token` atomically and returns the identity it is bound to.
    pub fn consume(&self, token: &str, now: i64) -> Result<SpiffeId, TokenError> {
        let (record_id, secret) = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('.'))
            .ok_or(TokenError::Invalid)?;
        let presented = sha256_hex(secret);
        self.update(now, |file| {
            let record = file
                .tokens
                .iter_mut()
                .find(|r| r.id == record_id)
                .ok_or(TokenError::Invalid)?;
            let secret_matches: bool = record
                .secret_sha256
                .as_bytes()
                .ct_eq(presented.as_bytes())
                .into();
            if !secret_matches || record.uses_left == 0 || record.expires_at <= now {
                return Err(TokenError::Invalid);
            }
            record.uses_left -= 1;
            Ok(record.spiffe_id.clone())
        })
    }

    /// Runs `change` on the file's contents under the exclusive lock and writes the result
    /// back (dropping used-up and expired records) only when `change` succeeded.
    fn update<T>(
        &self,
        now: i64,
        change: impl FnOnce(&mut TokenFile) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TokenError::Io { path, source }
        };
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(io(&self.lock))?;
        lock.lock().map_err(io(&self.lock))?;
        let mut contents = self.read()?;
        let result = change(&mut contents)?;
        contents
            .tokens
            .retain(|r| r.uses_left > 0 && r.expires_at > now);
        let json = serde_json::to_vec_pretty(&contents).expect("token file serializes");
        write_atomic(&self.file, &json, 0o600).map_err(io(&self.file))?;
        // `lock` is dropped (and the lock released) only now, after the write.
        Ok(result)
    }

    fn read(&self) -> Result<TokenFile, TokenError> {
        match fs::read(&self.file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenError::Corrupt {
                path: self.file.clone(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokenFile::default()),
            Err(source) => Err(TokenError::Io {
                path: self.file.clone(),
                source,
            }),
        }
    }
}

fn sha256_hex(secret: &str) -> String {
    airlock_identity::hex(&Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://td/ns/a/sa/b").unwrap()
    }

    #[test]
    fn single_use_token_works_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let new = store
            .create(&id(), Duration::from_secs(60), 1, 1000)
            .unwrap();
        let on_disk = fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        let secret = new.token.rsplit('.').next().unwrap();
        assert!(
            !on_disk.contains(secret),
            "the secret itself must not be stored"
        );
        assert_eq!(store.consume(&new.token, 1001).unwrap(), id());
        assert!(matches!(
            store.consume(&new.token, 1002),
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn expiry_wrong_secret_and_multi_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let short = store
            .create(&id(), Duration::from_secs(10), 1, 1000)
            .unwrap();
        assert!(
            store.consume(&short.token, 1010).is_err(),
            "expired at its deadline"
        );

        let multi = store
            .create(&id(), Duration::from_secs(60), 2, 1000)
            .unwrap();
        let forged = format!("{}x", multi.token);
        assert!(store.consume(&forged, 1001).is_err());
        assert!(store.consume("airlock-join.nope", 1001).is_err());
        assert!(store.consume(&multi.token, 1001).is_ok());
        assert!(store.consume(&multi.token, 1002).is_ok());
        assert!(store.consume(&multi.token, 1003).is_err());
        assert!(matches!(
            store.create(&id(), Duration::from_secs(1), 0, 0),
            Err(TokenError::ZeroUses)
        ));
    }

    #[test]
    fn concurrent_redemptions_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let token = store
            .create(&id(), Duration::from_secs(60), 1, 1000)
            .unwrap()
            .token;
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| store.consume(&token, 1001).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap() as usize)
                .sum()
        });
        assert_eq!(winners, 1);
    }
}
