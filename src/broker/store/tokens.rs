//! API tokens of the platform API (`serve --http`): created random and shown once, kept only as
//! a SHA-256 in a row sealed (no plaintext) with the store's key, listed, revoked, expiring, and
//! checked on every request from an in-memory copy. A token is never logged, stored or formatted;
//! only its id is.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::backend::{Backend, TokenRecord};
use super::seal::{aad_v2, KeyRing, Sealer};
use super::{Store, StoreError};

/// What a token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenScope {
    /// The secrets of one user.
    User(String),
    /// The secrets of one repository.
    RepoAdmin(String),
    /// Everything, sandboxes included.
    Platform,
}

impl TokenScope {
    /// The stored and shown form: `user:mona`, `repo-admin:octo/hello`, `platform`.
    pub fn as_text(&self) -> String {
        match self {
            TokenScope::User(u) => format!("user:{u}"),
            TokenScope::RepoAdmin(r) => format!("repo-admin:{r}"),
            TokenScope::Platform => "platform".to_owned(),
        }
    }

    /// Parses [`TokenScope::as_text`]'s form.
    pub fn parse(raw: &str) -> Option<TokenScope> {
        if raw == "platform" {
            return Some(TokenScope::Platform);
        }
        if let Some(u) = raw.strip_prefix("user:") {
            return Some(TokenScope::User(u.to_owned()));
        }
        raw.strip_prefix("repo-admin:")
            .map(|r| TokenScope::RepoAdmin(r.to_owned()))
    }
}

/// A token as `token list` shows it: never the token, never its hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub scope: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    pub expires: i64,
}

/// Why a presented token does not authenticate. The messages never quote the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("unknown or revoked token")]
    Unknown,
    #[error("token {id} expired")]
    Expired { id: String },
}

/// The token rows that verified when the store was opened, by hash.
#[derive(Default)]
pub(super) struct TokenCache {
    by_hash: HashMap<String, TokenInfo>,
}

/// Length of a token's random part, in bytes.
const TOKEN_BYTES: usize = 32;
/// What every token starts with, so scanners recognise a leaked one.
pub const TOKEN_PREFIX: &str = "sst_";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// SHA-256 of a token, hex.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn token_aad(t: &TokenRecord) -> Vec<u8> {
    aad_v2(
        "token",
        &[
            t.id.as_bytes(),
            t.hash.as_bytes(),
            t.scope.as_bytes(),
            &t.created.to_be_bytes(),
            &t.expires.to_be_bytes(),
            t.key_id.as_bytes(),
        ],
    )
}

fn seal_token(key: &Sealer, mut t: TokenRecord) -> Result<TokenRecord, StoreError> {
    t.key_id = key.id().to_string();
    t.sealed = key.seal(b"", &token_aad(&t), &format!("token {}", t.id))?;
    Ok(t)
}

/// Reads and verifies every token row; a row that does not verify is refused by id (logged),
/// never served.
pub(super) fn load(backend: &mut dyn Backend, ring: &KeyRing) -> Result<TokenCache, StoreError> {
    let mut cache = TokenCache::default();
    let rows = match backend.load_tokens() {
        Err(StoreError::NoTokens(db)) => {
            tracing::warn!(store = %db, "this store keeps no API tokens: the platform API authenticates nobody");
            return Ok(cache);
        }
        other => other?,
    };
    for row in rows {
        let t = match row {
            Ok(t) => t,
            Err(m) => {
                tracing::error!(row = %m.row, reason = %m.reason, "token row refused: malformed");
                continue;
            }
        };
        let verdict = ring.held(&t.key_id).and_then(|key| {
            key.open(&t.sealed, &token_aad(&t), "")
                .map(drop)
                .map_err(|_| "its seal does not verify (scope, hash or expiry edited, or inserted outside the daemon)".to_owned())
        });
        match (verdict, TokenScope::parse(&t.scope)) {
            (Ok(()), Some(_)) => {
                // Sealed under a key since rotated away: sealed again under the active key, so
                // the retired key file can go.
                let t = if *t.key_id != **ring.active().id() {
                    let id = t.id.clone();
                    match seal_token(ring.active(), t.clone())
                        .and_then(|r| backend.put_token(&r).map(|()| r))
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(token = %id, error = %e, "token not resealed under the active key");
                            t
                        }
                    }
                } else {
                    t
                };
                cache.by_hash.insert(
                    t.hash,
                    TokenInfo {
                        id: t.id,
                        scope: t.scope,
                        created: t.created,
                        expires: t.expires,
                    },
                );
            }
            (Err(why), _) => {
                tracing::error!(token = %t.id, reason = %why, "token row refused");
            }
            (Ok(()), None) => {
                tracing::error!(token = %t.id, "token row refused: unknown scope");
            }
        }
    }
    Ok(cache)
}

impl Store {
    fn token_cache(&self) -> std::sync::RwLockReadGuard<'_, TokenCache> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a token of `scope` valid for `ttl` seconds; returns what `token list` shows and
    /// the token itself, which exists nowhere else from now on.
    pub fn create_token(
        &self,
        scope: &TokenScope,
        ttl: i64,
    ) -> Result<(TokenInfo, SecretString), StoreError> {
        let mut raw = zeroize::Zeroizing::new([0u8; TOKEN_BYTES]);
        let mut id = [0u8; 6];
        getrandom::getrandom(raw.as_mut_slice())
            .and_then(|()| getrandom::getrandom(&mut id))
            .map_err(|e| StoreError::Crypto(super::seal::CryptoError::Random(e)))?;
        use base64::Engine as _;
        let token = zeroize::Zeroizing::new(format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.as_slice())
        ));
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let created = now();
        let record = TokenRecord {
            id: id.clone(),
            hash: token_hash(&token),
            scope: scope.as_text(),
            created,
            expires: created.saturating_add(ttl),
            key_id: String::new(),
            sealed: super::seal::Sealed {
                nonce: Vec::new(),
                ciphertext: Vec::new(),
            },
        };
        let record = seal_token(self.ring().active(), record)?;
        // A commit at a new generation: a store restored from before it is a rollback.
        self.submit(super::Op::PutToken(record.clone()))?;
        let info = TokenInfo {
            id,
            scope: record.scope,
            created: record.created,
            expires: record.expires,
        };
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .by_hash
            .insert(record.hash, info.clone());
        Ok((info, SecretString::from(token.as_str().to_owned())))
    }

    /// Seals every token row under the active key (after a key rotation); returns how many rows
    /// were sealed again. Rows that do not verify stay as they are (refused).
    pub fn reseal_tokens(&self) -> Result<usize, StoreError> {
        super::blocking(|| {
            let mut writer = self.lock_writer();
            let ring = self.ring();
            let active = ring.active();
            let mut n = 0;
            for t in writer.backend.load_tokens()?.into_iter().flatten() {
                if *t.key_id == **active.id() {
                    continue;
                }
                let Ok(key) = ring.held(&t.key_id) else {
                    continue;
                };
                if key.open(&t.sealed, &token_aad(&t), "").is_err() {
                    continue;
                }
                writer.backend.put_token(&seal_token(active, t)?)?;
                n += 1;
            }
            Ok(n)
        })
    }

    /// Reads every token row again: another broker of a shared store created or revoked one (or
    /// the connection came back and an announcement may have been missed). Returns how many
    /// tokens verified.
    pub fn reload_tokens(&self) -> Result<usize, StoreError> {
        super::blocking(|| {
            // The copy is replaced with the writer still held, so no token commit falls between
            // the read and the replacement (a revocation put back by a stale read).
            let mut writer = self.lock_writer();
            let cache = load(writer.backend.as_mut(), &self.ring())?;
            let n = cache.by_hash.len();
            *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = cache;
            Ok(n)
        })
    }

    /// Every token, oldest first (expired ones included, marked by their date).
    pub fn list_tokens(&self) -> Vec<TokenInfo> {
        let mut all: Vec<TokenInfo> = self.token_cache().by_hash.values().cloned().collect();
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        all
    }

    /// Revokes the token `id`: from the next request on it authenticates nothing.
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo, StoreError> {
        let (hash, info) = self
            .token_cache()
            .by_hash
            .iter()
            .find(|(_, t)| t.id == id)
            .map(|(h, t)| (h.clone(), t.clone()))
            .ok_or_else(|| StoreError::TokenNotFound(id.to_owned()))?;
        // A commit at a new generation: restoring a store from before the revocation is a
        // rollback, refused until an operator accepts it, so the token cannot come back that way.
        self.submit(super::Op::RevokeToken(id.to_owned()))?;
        // Gone already when the announcement of this very commit was read back meanwhile.
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .by_hash
            .remove(&hash);
        Ok(info)
    }

    /// The token a request presented: its id and scope, or why not.
    pub fn authenticate(&self, token: &str) -> Result<(String, TokenScope), AuthError> {
        self.authenticate_hash(&token_hash(token))
    }

    /// Like [`Store::authenticate`], by the token's hash (a session of the settings page keeps
    /// the hash, never the token): a revoked or expired token ends its sessions too.
    pub fn authenticate_hash(&self, hash: &str) -> Result<(String, TokenScope), AuthError> {
        let cache = self.token_cache();
        let t = cache.by_hash.get(hash).ok_or(AuthError::Unknown)?;
        if t.expires <= now() {
            return Err(AuthError::Expired { id: t.id.clone() });
        }
        let scope = TokenScope::parse(&t.scope).ok_or(AuthError::Unknown)?;
        Ok((t.id.clone(), scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_through_their_text() {
        for s in [
            TokenScope::User("mona".into()),
            TokenScope::RepoAdmin("octo/hello".into()),
            TokenScope::Platform,
        ] {
            assert_eq!(TokenScope::parse(&s.as_text()), Some(s));
        }
        assert_eq!(TokenScope::parse("root"), None);
        assert_eq!(TokenScope::parse(""), None);
    }

    #[test]
    fn a_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
