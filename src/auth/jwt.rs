//! Bearer JWTs (`Authorization: Bearer …`): HS256, RS256 and ES256 with keys from files,
//! environment variables or a JWKS file; `exp`, `nbf`, `iss` and `aud` checked with leeway; the
//! principal named by a claim.
//!
//! A verified token is cached until its `exp`, so a sender that reuses one token for many batches
//! pays for one signature check. The cache is bounded (`cache_entries`, keyed by the token's
//! SHA-256); when full, expired entries are dropped first, then all of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::AuthError;
use super::secret::load_secret;

/// `[auth.jwt]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The only accepted `iss`.
    pub issuer: String,
    /// The `aud` a token must include.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Claim whose (string) value is the principal's name.
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// Verification keys.
    #[serde(default)]
    pub keys: Vec<JwtKeyConfig>,
    /// A JWKS file (`{"keys":[…]}`) of RSA and P-256 public keys, each with a `kid`.
    pub jwks_file: Option<PathBuf>,
    /// Verified tokens remembered until they expire.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

/// One verification key of `[auth.jwt] keys`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// Matched against the token header's `kid`; a key without one serves tokens without `kid`.
    pub kid: Option<String>,
    /// `HS256` (shared secret), `RS256` (RSA public key, PEM) or `ES256` (P-256 public key, PEM).
    pub alg: JwtAlgorithm,
    /// File holding the secret or the PEM public key.
    pub file: Option<PathBuf>,
    /// Environment variable holding the secret or the PEM public key.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

impl JwtAlgorithm {
    fn algorithm(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        }
    }
}

fn default_leeway_secs() -> u64 {
    30
}
fn default_principal_claim() -> String {
    "sub".to_string()
}
fn default_cache_entries() -> usize {
    10_000
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// What a verified token is remembered as.
#[derive(Clone)]
struct Cached {
    principal: String,
    expires_at: u64,
}

pub struct JwtVerifier {
    keys: Vec<Key>,
    config: JwtConfig,
    /// SHA-256 of a verified token → what it proved. Keyed by digest so an entry costs the
    /// same whatever the token's length.
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

impl JwtVerifier {
    /// Loads the keys; errors name the config key.
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, String> {
        let mut keys = Vec::new();
        for (i, key) in config.keys.iter().enumerate() {
            let name = format!("auth.jwt.keys[{i}]");
            let material = match key.alg {
                JwtAlgorithm::HS256 => load_secret(key.file.as_deref(), key.env.as_deref(), &name)?,
                _ => load_public(key.file.as_deref(), key.env.as_deref(), &name)?,
            };
            let decoding = match key.alg {
                JwtAlgorithm::HS256 => Ok(DecodingKey::from_secret(&material)),
                JwtAlgorithm::RS256 => DecodingKey::from_rsa_pem(&material),
                JwtAlgorithm::ES256 => DecodingKey::from_ec_pem(&material),
            }
            .map_err(|err| format!("{name}: not a usable {:?} key: {err}", key.alg))?;
            keys.push(Key {
                kid: key.kid.clone(),
                algorithm: key.alg.algorithm(),
                key: decoding,
            });
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(load_jwks(path)?);
        }
        if keys.is_empty() {
            return Err("auth.jwt: needs at least one of keys and jwks_file".to_string());
        }
        if config.issuer.is_empty() || config.audience.is_empty() {
            return Err("auth.jwt: issuer and audience must not be empty".to_string());
        }
        Ok(JwtVerifier {
            keys,
            config: config.clone(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The principal claim of a valid token (`now`: unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<String, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = cache.get(&digest)
            && now < hit.expires_at
        {
            return Ok(hit.principal.clone());
        }
        drop(cache);
        let (principal, expires_at) = self.verify_uncached(token, now)?;
        cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.config.cache_entries {
            cache.retain(|_, cached| now < cached.expires_at);
            if cache.len() >= self.config.cache_entries {
                cache.clear();
            }
        }
        cache.insert(
            digest,
            Cached {
                principal: principal.clone(),
                expires_at,
            },
        );
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<(String, u64), AuthError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::unauthenticated("bad_token", "bearer token is malformed"))?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(AuthError::unauthenticated(
                "bad_token",
                format!("token algorithm {:?} is not accepted", header.alg),
            ));
        }
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg && k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(AuthError::unauthenticated(
                "bad_token",
                match &header.kid {
                    Some(kid) => format!("token key id {kid:?} is unknown for {:?}", header.alg),
                    None => format!("no key without a kid verifies {:?} tokens", header.alg),
                },
            ));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway_secs;
        validation.validate_nbf = true;
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<HashMap<String, serde_json::Value>>(
                token,
                &key.key,
                &validation,
            ) {
                Ok(data) => {
                    let claims = data.claims;
                    let principal = claims
                        .get(&self.config.principal_claim)
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| {
                            AuthError::unauthenticated(
                                "bad_token",
                                format!(
                                    "token has no string claim {:?}",
                                    self.config.principal_claim
                                ),
                            )
                        })?
                        .to_string();
                    let expires_at = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(now);
                    return Ok((principal, expires_at));
                }
                Err(err) => last = Some(err),
            }
        }
        let err = last.expect("at least one candidate key");
        Err(self.explain(token, err.kind()))
    }

    /// The 401 for a token the library refused. Signature problems come before claim problems
    /// in the library, so a claim-time refusal is about an authentic token and its claims may
    /// be quoted.
    fn explain(&self, token: &str, kind: &ErrorKind) -> AuthError {
        let claim_time = |name: &str| -> String {
            jsonwebtoken::dangerous::insecure_decode::<HashMap<String, serde_json::Value>>(token)
                .ok()
                .and_then(|data| data.claims.get(name).and_then(|v| v.as_i64()))
                .map(format_time)
                .unwrap_or_else(|| "?".to_string())
        };
        match kind {
            ErrorKind::ExpiredSignature => AuthError::unauthenticated(
                "token_expired",
                format!("token expired at {}", claim_time("exp")),
            ),
            ErrorKind::ImmatureSignature => AuthError::unauthenticated(
                "token_not_yet_valid",
                format!("token not valid before {}", claim_time("nbf")),
            ),
            ErrorKind::InvalidAudience => AuthError::unauthenticated(
                "token_audience",
                format!("token audience does not include {:?}", self.config.audience),
            ),
            ErrorKind::InvalidIssuer => AuthError::unauthenticated(
                "token_issuer",
                format!("token issuer is not {:?}", self.config.issuer),
            ),
            ErrorKind::InvalidSignature => {
                AuthError::unauthenticated("bad_token", "token signature mismatch")
            }
            ErrorKind::MissingRequiredClaim(claim) => {
                AuthError::unauthenticated("bad_token", format!("token has no {claim:?} claim"))
            }
            ErrorKind::InvalidClaimFormat(claim) => AuthError::unauthenticated(
                "bad_token",
                format!("token claim {claim:?} has the wrong type"),
            ),
            _ => AuthError::unauthenticated("bad_token", "bearer token is malformed"),
        }
    }
}

/// RFC 3339, UTC, whole seconds.
pub fn format_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix.to_string())
}

fn load_public(file: Option<&Path>, env: Option<&str>, name: &str) -> Result<Vec<u8>, String> {
    match (file, env) {
        (Some(path), None) => std::fs::read(path)
            .map_err(|err| format!("{name}.file: cannot read {}: {err}", path.display())),
        (None, Some(var)) => std::env::var(var)
            .map(String::into_bytes)
            .map_err(|_| format!("{name}.env: environment variable {var} is not set")),
        _ => Err(format!("{name}: set exactly one of file and env")),
    }
}

fn load_jwks(path: &Path) -> Result<Vec<Key>, String> {
    let name = "auth.jwt.jwks_file";
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("{name}: cannot read {}: {err}", path.display()))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|err| format!("{name}: {} is not a JWKS: {err}", path.display()))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256) | None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256) | None, AlgorithmParameters::EllipticCurve(ec))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => {
                return Err(format!(
                    "{name}: key {i} is neither an RS256 nor an ES256 (P-256) public key"
                ));
            }
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|err| format!("{name}: key {i} is not usable: {err}"))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &str = "jwt-unit-test-secret-0123456789";

    fn verifier(dir: &Path) -> JwtVerifier {
        std::fs::write(dir.join("hs"), SECRET).unwrap();
        JwtVerifier::new(&JwtConfig {
            issuer: "iss".into(),
            audience: "aud".into(),
            leeway_secs: 0,
            principal_claim: "sub".into(),
            keys: vec![JwtKeyConfig {
                kid: None,
                alg: JwtAlgorithm::HS256,
                file: Some(dir.join("hs")),
                env: None,
            }],
            jwks_file: None,
            cache_entries: 2,
        })
        .unwrap()
    }

    fn token(sub: &str, exp: u64) -> String {
        let claims = serde_json::json!({"iss": "iss", "aud": "aud", "sub": sub, "exp": exp});
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn verified_tokens_are_cached_until_they_expire_and_the_cache_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let verifier = verifier(dir.path());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let key = |token: &str| -> [u8; 32] { Sha256::digest(token.as_bytes()).into() };
        let a = token("a", now + 100);
        assert_eq!(verifier.verify(&a, now).unwrap(), "a");
        assert_eq!(
            verifier.cache.lock().unwrap()[&key(&a)].expires_at,
            now + 100
        );
        // A cache hit answers without verifying again; past the entry's expiry the token is
        // verified again.
        verifier.cache.lock().unwrap().insert(
            key(&a),
            Cached {
                principal: "from-cache".into(),
                expires_at: now + 10,
            },
        );
        assert_eq!(verifier.verify(&a, now + 9).unwrap(), "from-cache");
        assert_eq!(verifier.verify(&a, now + 10).unwrap(), "a");
        let expired = token("a", now - 100);
        let err = verifier.verify(&expired, now).unwrap_err();
        assert_eq!(
            err.message,
            format!("token expired at {}", format_time(now as i64 - 100))
        );
        assert!(!verifier.cache.lock().unwrap().contains_key(&key(&expired)));
        for sub in ["b", "c", "d"] {
            verifier.verify(&token(sub, now + 100), now).unwrap();
        }
        assert!(verifier.cache.lock().unwrap().len() <= 2);
        // A string exp is a wrong type, never "absent".
        let claims = serde_json::json!({"iss": "iss", "aud": "aud", "sub": "a", "exp": "never"});
        let odd = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(verifier.verify(&odd, now).is_err());
    }
}
