//! Join tokens: one-time (or N-time) bearer secrets bound to one SPIFFE ID.
//!
//! A token reads `airlock-join.<id>.<secret>`. The CA directory keeps only the SHA-256 of
//! the secret (`tokens.json`, mode 0600); the id only locates the record, the secret is
//! compared in constant time. Every read-modify-write of the file happens under an
//! exclusive lock on `tokens.lock`, so two concurrent uses of a single-use token (in one
//! process or several) cannot both succeed, and `airlock ca token create` may run while
//! `airlock ca serve` is up.

use std::path::Path;
use std::time::Duration;

use airlock_identity::SpiffeId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::json_file::{JsonFileError, LockedJson};

/// Every join token starts with this, which tells it apart from a JWT.
pub const TOKEN_PREFIX: &str = "airlock-join.";

/// Why a join token could not be created or redeemed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unknown id, wrong secret, or already used up: deliberately one answer.
    #[error("invalid, expired or already used join token")]
    Invalid,
    /// `tokens.json` or its lock could not be read, parsed or written.
    #[error(transparent)]
    File(#[from] JsonFileError),
    /// A token was to be created with no use at all (`--uses 0`).
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
    /// Text, parsed when redeemed: a record written under older identity rules that no
    /// longer parses is one token that no longer works, not a corrupt store.
    spiffe_id: String,
    /// Unix seconds.
    expires_at: i64,
    uses_left: u32,
}

/// The token records of one CA directory.
#[derive(Debug, Clone)]
pub struct TokenStore {
    file: LockedJson,
}

/// A newly created token; `token` is shown once and never stored.
pub struct NewToken {
    /// The bearer secret to hand to the workload, `airlock-join.<id>.<secret>`. Never
    /// logged; `Debug` redacts it.
    pub token: String,
    /// Seconds since the Unix epoch from which the token is refused.
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
    /// The join tokens of the CA directory `ca_dir`: `tokens.json`, locked through
    /// `tokens.lock`.
    pub fn new(ca_dir: &Path) -> Self {
        Self {
            file: LockedJson::new(ca_dir.join("tokens.json")),
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
                spiffe_id: id.to_string(),
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

    /// The identity `token` is bound to, if it could be redeemed now; spends nothing, so
    /// the CA can run every check that may still fail before [`Self::consume`].
    pub fn check(&self, token: &str, now: i64) -> Result<SpiffeId, TokenError> {
        let file: TokenFile = self.file.read()?;
        let index = redeemable(&file, token, now)?;
        bound_identity(&file.tokens[index])
    }

    /// Redeems one use of `token` atomically and returns the identity it is bound to.
    pub fn consume(&self, token: &str, now: i64) -> Result<SpiffeId, TokenError> {
        self.update(now, |file| {
            let index = redeemable(file, token, now)?;
            let record = &mut file.tokens[index];
            let id = bound_identity(record)?;
            record.uses_left -= 1;
            Ok(id)
        })
    }

    /// Runs `change` on the records under the file lock, dropping used-up and expired
    /// records on the way out.
    fn update<T>(
        &self,
        now: i64,
        change: impl FnOnce(&mut TokenFile) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        self.file.update(|file: &mut TokenFile| {
            let result = change(file)?;
            file.tokens
                .retain(|r| r.uses_left > 0 && r.expires_at > now);
            Ok(result)
        })
    }
}

/// The index of the record `token` names, when its secret matches (in constant time) and
/// it has a use left before its expiry.
fn redeemable(file: &TokenFile, token: &str, now: i64) -> Result<usize, TokenError> {
    let (record_id, secret) = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('.'))
        .ok_or(TokenError::Invalid)?;
    let presented = sha256_hex(secret);
    let index = file
        .tokens
        .iter()
        .position(|r| r.id == record_id)
        .ok_or(TokenError::Invalid)?;
    let record = &file.tokens[index];
    let secret_matches: bool = record
        .secret_sha256
        .as_bytes()
        .ct_eq(presented.as_bytes())
        .into();
    if !secret_matches || record.uses_left == 0 || record.expires_at <= now {
        return Err(TokenError::Invalid);
    }
    Ok(index)
}

fn bound_identity(record: &TokenRecord) -> Result<SpiffeId, TokenError> {
    SpiffeId::parse(&record.spiffe_id).map_err(|_| TokenError::Invalid)
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
        let on_disk = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        let secret = new.token.rsplit('.').next().unwrap();
        assert!(
            !on_disk.contains(secret),
            "the secret itself must not be stored"
        );
        assert_eq!(store.check(&new.token, 1001).unwrap(), id());
        assert_eq!(
            store.check(&new.token, 1001).unwrap(),
            id(),
            "checking spends nothing"
        );
        assert_eq!(store.consume(&new.token, 1001).unwrap(), id());
        assert!(matches!(
            store.check(&new.token, 1002),
            Err(TokenError::Invalid)
        ));
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
    fn a_record_whose_identity_no_longer_parses_spoils_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let good = store
            .create(&id(), Duration::from_secs(60), 1, 1000)
            .unwrap();
        let bad = store
            .create(&id(), Duration::from_secs(60), 1, 1000)
            .unwrap();
        // As an older version wrote it: the trust domain's own ID.
        let path = dir.path().join("tokens.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let bad_id = bad.token.split('.').nth(1).unwrap();
        let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
        for record in file["tokens"].as_array_mut().unwrap() {
            if record["id"] == bad_id {
                record["spiffe_id"] = "spiffe://td".into();
            }
        }
        std::fs::write(&path, file.to_string()).unwrap();
        assert!(matches!(
            store.consume(&bad.token, 1001),
            Err(TokenError::Invalid)
        ));
        assert_eq!(store.consume(&good.token, 1001).unwrap(), id());
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
