//! JWT verification: HS256 with a shared secret, or RS256/ES256/EdDSA with public keys from PEM
//! files or a JWKS file, chosen by `kid`. Algorithms are pinned per key, `exp` is required, and
//! `iss`/`aud` are enforced when configured.

use std::collections::BTreeMap;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::principal::{Principal, Role};
use crate::config::JwtSettings;
use crate::error::{Error, Result};

/// One verification key and the single algorithm it may be used with.
struct KeyEntry {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens. Built once at start from the settings.
pub struct Verifier {
    hs256: Option<KeyEntry>,
    /// Asymmetric keys by `kid`.
    by_kid: BTreeMap<String, KeyEntry>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_seconds: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: BTreeMap<String, String>,
}

impl Verifier {
    pub fn from_settings(settings: &JwtSettings) -> std::result::Result<Verifier, String> {
        let hs256 = match &settings.hs256_secret {
            Some(secret) => Some(KeyEntry {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret).map_err(|e| format!("jwt_hs256_secret: {e}"))?,
            }),
            None => None,
        };
        let mut by_kid = BTreeMap::new();
        for path in &settings.public_key_files {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let kid = path
                .file_stem()
                .and_then(|s| s.to_str())
                .ok_or_else(|| format!("{}: the file stem names the key id", path.display()))?
                .to_string();
            by_kid.insert(kid, key_from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?);
        }
        if let Some(path) = &settings.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .ok_or_else(|| format!("{}: every key needs a `kid`", path.display()))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: key '{kid}': {e}", path.display()))?;
                let algorithm = jwk_algorithm(jwk)
                    .ok_or_else(|| format!("{}: key '{kid}' is not an RS256, ES256 or EdDSA key", path.display()))?;
                by_kid.insert(kid, KeyEntry { algorithm, key });
            }
        }
        Ok(Verifier {
            hs256,
            by_kid,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway_seconds: settings.leeway_seconds,
        })
    }

    /// Verifies a compact JWT and returns the caller. Every failure is UNAUTHENTICATED with a
    /// reason that says what was wrong, but never echoes the token.
    pub fn verify(&self, token: &str) -> Result<Principal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Error::unauthenticated("INVALID_TOKEN", "the bearer token is not a well-formed JWT"))?;
        let entry = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            _ => match &header.kid {
                Some(kid) => self.by_kid.get(kid),
                // A single asymmetric key needs no `kid`.
                None if self.by_kid.len() == 1 => self.by_kid.values().next(),
                None => None,
            },
        };
        let entry = entry.ok_or_else(|| {
            Error::unauthenticated(
                "UNKNOWN_SIGNING_KEY",
                "the token is not signed with an accepted algorithm and key",
            )
        })?;
        if entry.algorithm != header.alg {
            return Err(Error::unauthenticated(
                "UNKNOWN_SIGNING_KEY",
                "the token's algorithm does not match its key",
            ));
        }
        let mut validation = Validation::new(entry.algorithm);
        validation.leeway = self.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                validation.required_spec_claims.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, &entry.key, &validation).map_err(token_error)?;
        check_subject(&data.claims.sub)?;
        let mut roles = BTreeMap::new();
        for (env, role) in data.claims.roles {
            let role = Role::parse(&role).ok_or_else(|| {
                Error::unauthenticated(
                    "INVALID_TOKEN_CLAIMS",
                    format!("the token's `roles` claim gives environment '{env}' an unknown role (admin, contributor or viewer)"),
                )
                .with_meta("environment", env.clone())
            })?;
            roles.insert(env, role);
        }
        Ok(Principal {
            subject: data.claims.sub,
            roles,
        })
    }
}

/// The longest `sub` accepted: it names the caller in `creator` fields and logs.
pub const MAX_SUBJECT_CHARS: usize = 256;

/// `sub` names the caller (creators, logs): a token must name someone, in printable text.
fn check_subject(subject: &str) -> Result<()> {
    let problem = if subject.trim().is_empty() {
        "the token's `sub` claim is empty; it must name the caller".to_string()
    } else if subject.chars().count() > MAX_SUBJECT_CHARS {
        format!("the token's `sub` claim is longer than {MAX_SUBJECT_CHARS} characters")
    } else if subject.chars().any(char::is_control) {
        "the token's `sub` claim contains control characters".to_string()
    } else {
        return Ok(());
    };
    Err(Error::unauthenticated("INVALID_TOKEN_CLAIMS", problem))
}

fn token_error(err: jsonwebtoken::errors::Error) -> Error {
    let (reason, message) = match err.kind() {
        ErrorKind::ExpiredSignature => ("TOKEN_EXPIRED", "the token has expired".to_string()),
        ErrorKind::ImmatureSignature => ("TOKEN_NOT_YET_VALID", "the token is not valid yet (nbf)".to_string()),
        ErrorKind::InvalidSignature => (
            "INVALID_TOKEN_SIGNATURE",
            "the token's signature is not valid".to_string(),
        ),
        ErrorKind::InvalidIssuer => ("INVALID_TOKEN_ISSUER", "the token's issuer is not accepted".to_string()),
        ErrorKind::InvalidAudience => (
            "INVALID_TOKEN_AUDIENCE",
            "the token's audience is not accepted".to_string(),
        ),
        ErrorKind::MissingRequiredClaim(claim) => ("INVALID_TOKEN_CLAIMS", format!("the token has no `{claim}` claim")),
        ErrorKind::InvalidAlgorithm => (
            "UNKNOWN_SIGNING_KEY",
            "the token's algorithm is not accepted".to_string(),
        ),
        _ => ("INVALID_TOKEN", "the bearer token is not valid".to_string()),
    };
    Error::unauthenticated(reason, message)
}

fn key_from_pem(pem: &[u8]) -> std::result::Result<KeyEntry, String> {
    let text = String::from_utf8_lossy(pem);
    // The PEM label does not tell EC from Ed25519 for "PUBLIC KEY": try each in turn.
    if text.contains("RSA PUBLIC KEY")
        && let Ok(key) = DecodingKey::from_rsa_pem(pem)
    {
        return Ok(KeyEntry {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(KeyEntry {
            algorithm: Algorithm::EdDSA,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(KeyEntry {
            algorithm: Algorithm::ES256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(KeyEntry {
            algorithm: Algorithm::RS256,
            key,
        });
    }
    Err("not an RSA, EC P-256 or Ed25519 public key in PEM".into())
}

fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::AlgorithmParameters;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(_) => Some(Algorithm::ES256),
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// Signs an HS256 token; used by `exportd token` and by `serve --dev` for the printed token.
pub fn sign_hs256(
    secret: &[u8],
    subject: &str,
    roles: &BTreeMap<String, Role>,
    ttl: std::time::Duration,
) -> Result<String> {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "sub": subject,
        "iat": now,
        "exp": now + ttl.as_secs() as i64,
        "roles": roles.iter().map(|(env, role)| (env.clone(), role.as_str())).collect::<BTreeMap<_, _>>(),
    });
    let key = jsonwebtoken::EncodingKey::from_secret(secret).map_err(|e| Error::internal(e.to_string()))?;
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| Error::internal(format!("cannot sign token: {e}")))
}
