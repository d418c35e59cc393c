//! Sealing of connection secrets: ChaCha20-Poly1305 with a random nonce, bound to the owning
//! resource's name as associated data (a sealed blob copied to another row will not open), and
//! tagged with the key id so that keys can be rotated: new secrets use the active key, old ones
//! open with whichever key sealed them.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::error::{Error, Result};

/// A sealed value: the key id plus base64(nonce ‖ ciphertext).
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub blob: String,
}

pub struct Sealer {
    keys: BTreeMap<String, [u8; 32]>,
    active: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl Sealer {
    pub fn new(keys: BTreeMap<String, [u8; 32]>, active: String) -> std::result::Result<Sealer, String> {
        if !keys.is_empty() && !keys.contains_key(&active) {
            return Err(format!("the active sealing key '{active}' is not configured"));
        }
        Ok(Sealer { keys, active })
    }

    /// The key that seals new secrets.
    pub fn active_key_id(&self) -> &str {
        &self.active
    }

    pub fn has_key(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Seals a map of secrets for the resource `owner`.
    pub fn seal(&self, owner: &str, secrets: &BTreeMap<String, String>) -> Result<Sealed> {
        let plaintext = serde_json::to_vec(secrets).map_err(|e| Error::internal(e.to_string()))?;
        let key = self
            .keys
            .get(&self.active)
            .ok_or_else(|| Error::precondition("SEALING_KEY_MISSING", "no secret-sealing key is configured"))?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plaintext,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| Error::internal("cannot seal secrets"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: self.active.clone(),
            blob: BASE64.encode(blob),
        })
    }

    /// Opens secrets sealed for `owner`. Fails (without detail) when the key is unknown or the
    /// blob was tampered with or moved.
    pub fn open(&self, owner: &str, sealed: &Sealed) -> Result<BTreeMap<String, String>> {
        let key = self.keys.get(&sealed.key_id).ok_or_else(|| {
            Error::precondition(
                "SEALING_KEY_MISSING",
                format!(
                    "the secrets of '{owner}' were sealed with key '{}', which is not configured",
                    sealed.key_id
                ),
            )
        })?;
        let blob = BASE64
            .decode(&sealed.blob)
            .map_err(|_| Error::internal("sealed secrets are corrupt"))?;
        if blob.len() < 12 {
            return Err(Error::internal("sealed secrets are corrupt"));
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
        let plaintext = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| Error::internal("sealed secrets cannot be opened"))?;
        serde_json::from_slice(&plaintext).map_err(|_| Error::internal("sealed secrets are corrupt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(active: &str) -> Sealer {
        let keys = BTreeMap::from([("k1".to_string(), [1u8; 32]), ("k2".to_string(), [2u8; 32])]);
        Sealer::new(keys, active.to_string()).unwrap()
    }

    #[test]
    fn round_trip_and_no_plaintext_in_the_blob() {
        let secrets = BTreeMap::from([("api_key".to_string(), "very-secret-value".to_string())]);
        let sealed = sealer("k1").seal("environments/a/connections/c", &secrets).unwrap();
        assert!(!sealed.blob.contains("very-secret-value"));
        let raw = BASE64.decode(&sealed.blob).unwrap();
        assert!(!raw.windows(17).any(|w| w == b"very-secret-value"));
        assert_eq!(
            sealer("k1").open("environments/a/connections/c", &sealed).unwrap(),
            secrets
        );
    }

    #[test]
    fn rotation_opens_old_secrets_and_seals_with_the_new_key() {
        let secrets = BTreeMap::from([("password".to_string(), "p".to_string())]);
        let old = sealer("k1").seal("o", &secrets).unwrap();
        let rotated = sealer("k2");
        assert_eq!(rotated.open("o", &old).unwrap(), secrets);
        assert_eq!(rotated.seal("o", &secrets).unwrap().key_id, "k2");
    }

    #[test]
    fn a_blob_moved_to_another_owner_does_not_open() {
        let sealed = sealer("k1").seal("owner-a", &BTreeMap::new()).unwrap();
        assert!(sealer("k1").open("owner-b", &sealed).is_err());
    }
}
