//! Admission: who may connect (origins, JWTs from an HS256 secret or a JWKS file re-read when
//! it changes, minus the revoked ones), which channels a grant reaches (`policy`), how much they
//! may do (`limits`), and the operator's API key.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use pgpush_protocol::ErrorCode;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) mod limits;
pub(crate) mod policy;
pub(crate) mod revocations;

use crate::{error::ClientError, settings::AdmissionSettings};
use policy::{AllowLists, Grant, Pattern, TokenGrant};
use revocations::Revocations;

/// The algorithms a token may be signed with.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];
/// The largest `info` claim a token may carry (it is stored and sent with every presence entry).
const MAX_INFO_BYTES: usize = 1024;
/// How often the JWKS file's modification time is checked.
const JWKS_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// A verification key and the one algorithm it verifies.
struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// The claims pgpush reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: u64,
    jti: Option<String>,
    info: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
}

/// Why the node could not start its token checks.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The JWKS file cannot be read or parsed.
    #[error("cannot use the JWKS file {path}: {reason}")]
    Jwks {
        /// The configured path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The node's admission rules.
#[derive(Debug)]
pub(crate) struct Admission {
    lists: Arc<AllowLists>,
    origins: Vec<String>,
    /// `None` when tokens are off.
    tokens: Option<Tokens>,
    /// Tokens refused although valid.
    revocations: Arc<Revocations>,
    /// The operator's key for `/v1/admin/*`; `None`: no admin API.
    api_key: Option<String>,
}

#[derive(Debug)]
struct Tokens {
    secret: Option<Key>,
    jwks: Option<PathBuf>,
    jwks_keys: RwLock<(Option<SystemTime>, Vec<Key>)>,
    leeway: Duration,
}

impl Admission {
    /// Builds the rules from the configuration (reading the JWKS file once).
    pub(crate) fn new(config: &AdmissionSettings) -> Result<Admission, AuthSetupError> {
        let lists = Arc::new(AllowLists {
            subscribe: Pattern::parse_all(&config.subscribe_allow),
            publish: Pattern::parse_all(&config.publish_allow),
        });
        let tokens = if config.jwt_secret.is_some() || config.jwt_jwks.is_some() {
            let tokens = Tokens {
                secret: config.jwt_secret.as_ref().map(|secret| Key {
                    id: None,
                    algorithm: Algorithm::HS256,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                }),
                jwks: config.jwt_jwks.clone(),
                jwks_keys: RwLock::new((None, Vec::new())),
                leeway: config.jwt_leeway,
            };
            if let Some(path) = &tokens.jwks {
                let (modified, keys) = read_jwks(path).map_err(|reason| AuthSetupError::Jwks {
                    path: path.clone(),
                    reason,
                })?;
                *tokens.jwks_keys.write().unwrap_or_else(|e| e.into_inner()) =
                    (Some(modified), keys);
            }
            Some(tokens)
        } else {
            None
        };
        Ok(Admission {
            lists,
            origins: config
                .allowed_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            tokens,
            revocations: Arc::default(),
            api_key: config.api_key.clone().filter(|k| !k.is_empty()),
        })
    }

    /// The revoked tokens this node refuses.
    pub(crate) fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// Checks an operator's request (`Authorization: Bearer <api key>`): `not_found` when the node
    /// has no API key, `unauthorized` for a missing or wrong key. A client token never passes.
    pub(crate) fn admit_operator(&self, headers: &HeaderMap) -> Result<(), ClientError> {
        let Some(key) = &self.api_key else {
            return Err(ClientError::new(
                ErrorCode::NotFound,
                "the admin API is off: start the node with --api-key",
            ));
        };
        match bearer(headers) {
            Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(ClientError::new(
                ErrorCode::Unauthorized,
                "the admin API needs Authorization: Bearer <the node's --api-key>",
            )),
        }
    }

    /// Checks a client request's origin and token; the grant says what it may touch.
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Grant, ClientError> {
        self.check_origin(headers)?;
        let Some(tokens) = &self.tokens else {
            return Ok(Grant::new(self.lists.clone(), None));
        };
        let token = bearer(headers).or(query_token).ok_or_else(|| {
            ClientError::new(
                ErrorCode::Unauthorized,
                "a token is required: Authorization: Bearer <token>, or ?token=<token>",
            )
        })?;
        let grant = self.verify(tokens, token)?;
        Ok(Grant::new(self.lists.clone(), Some(grant)))
    }

    /// The grant of a fresh token sent on an open connection (without tokens: the node's lists).
    pub(crate) fn reauthorize(&self, token: &str) -> Result<Grant, ClientError> {
        let token = match &self.tokens {
            Some(tokens) => Some(self.verify(tokens, token)?),
            None => None,
        };
        Ok(Grant::new(self.lists.clone(), token))
    }

    /// A valid token's grant, unless it was revoked.
    fn verify(&self, tokens: &Tokens, token: &str) -> Result<TokenGrant, ClientError> {
        let grant = tokens.verify(token)?;
        if let Some(jti) = &grant.jti
            && self.revocations.is_revoked(jti)
        {
            return Err(ClientError::new(
                ErrorCode::Unauthorized,
                "the token has been revoked",
            ));
        }
        Ok(grant)
    }

    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ClientError> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            // Not a browser request (or a same-origin GET): nothing to check.
            return Ok(());
        };
        if self.origins.is_empty() {
            return Ok(());
        }
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        if self
            .origins
            .iter()
            .any(|allowed| allowed == "*" || allowed == origin)
        {
            Ok(())
        } else {
            Err(ClientError::new(
                ErrorCode::Forbidden,
                format!("origin {origin:?} is not allowed"),
            ))
        }
    }

    /// Re-reads the JWKS file whenever it changes, until `stop`. A file that no longer parses
    /// keeps the previous keys (and is logged).
    pub(crate) async fn reload_jwks_until(self: Arc<Self>, stop: CancellationToken) {
        let Some((tokens, path)) = self
            .tokens
            .as_ref()
            .and_then(|t| Some((t, t.jwks.clone()?)))
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(JWKS_CHECK_INTERVAL) => {}
            }
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            let known = tokens.jwks_keys.read().unwrap_or_else(|e| e.into_inner()).0;
            if modified.is_none() || modified == known {
                continue;
            }
            match read_jwks(&path) {
                Ok((modified, keys)) => {
                    info!(path = %path.display(), keys = keys.len(), "JWKS reloaded");
                    *tokens.jwks_keys.write().unwrap_or_else(|e| e.into_inner()) =
                        (Some(modified), keys);
                }
                Err(reason) => {
                    warn!(path = %path.display(), %reason, "JWKS not reloaded; keeping the previous keys")
                }
            }
        }
    }
}

impl Tokens {
    fn verify(&self, token: &str) -> Result<TokenGrant, ClientError> {
        let unauthorized = |reason: &str| ClientError::new(ErrorCode::Unauthorized, reason);
        // `alg: none` and algorithms we do not accept fail here, before any key is tried.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("the token is malformed or its algorithm is not accepted"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(unauthorized(
                "the token's algorithm is not accepted (HS256, RS256, ES256)",
            ));
        }
        let jwks = self.jwks_keys.read().unwrap_or_else(|e| e.into_inner());
        let candidates = self.secret.iter().chain(jwks.1.iter()).filter(|key| {
            key.algorithm == header.alg
                && (header.kid.is_none() || key.id.is_none() || key.id == header.kid)
        });
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        let mut last = unauthorized("no key of this server verifies the token");
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return grant(data.claims),
                Err(error) => {
                    last = match error.kind() {
                        ErrorKind::ExpiredSignature => {
                            return Err(unauthorized("the token has expired"));
                        }
                        ErrorKind::ImmatureSignature => {
                            return Err(unauthorized("the token is not valid yet (nbf)"));
                        }
                        ErrorKind::InvalidSignature => {
                            unauthorized("the token's signature is not valid")
                        }
                        ErrorKind::MissingRequiredClaim(_) => {
                            return Err(unauthorized("the token has no exp claim"));
                        }
                        ErrorKind::Json(_) => {
                            return Err(unauthorized("the token's claims are malformed"));
                        }
                        _ => unauthorized("the token is not valid"),
                    };
                }
            }
        }
        Err(last)
    }
}

fn grant(claims: Claims) -> Result<TokenGrant, ClientError> {
    let info = match claims.info {
        Some(info) if !info.get().starts_with('{') || info.get().len() > MAX_INFO_BYTES => {
            return Err(ClientError::new(
                ErrorCode::Unauthorized,
                format!(
                    "the token's info claim must be a JSON object of at most {MAX_INFO_BYTES} bytes"
                ),
            ));
        }
        info => info.map(Arc::from),
    };
    Ok(TokenGrant {
        subject: claims.sub,
        jti: claims.jti,
        info,
        subscribe: Pattern::parse_all(&claims.subscribe),
        publish: Pattern::parse_all(&claims.publish),
        expires: UNIX_EPOCH + Duration::from_secs(claims.exp),
    })
}

/// Compares secrets in time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The keys of a JWKS file, and its modification time. Keys without a supported `alg` are
/// skipped.
fn read_jwks(path: &PathBuf) -> Result<(SystemTime, Vec<Key>), String> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(algorithm) = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            .filter(|a| ALGORITHMS.contains(a))
        else {
            continue;
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key: {e}"))?;
        keys.push(Key {
            id: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err("no HS256, RS256 or ES256 key with an `alg`".to_owned());
    }
    Ok((modified, keys))
}
