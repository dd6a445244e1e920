//! Who is calling: API keys and JWT bearer tokens, each naming a service of the catalogs.
//! With no credentials configured every caller is the anonymous operator (the server then binds
//! only loopback addresses).

use axum::http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::problem::Problem;

/// The caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The service it speaks for; `None` on a server without credentials.
    pub service: Option<String>,
    /// Whether it manages subscriptions and DLQs.
    pub admin: bool,
}

impl Identity {
    /// The caller of a server without credentials: may do everything.
    pub fn operator() -> Identity {
        Identity {
            service: None,
            admin: true,
        }
    }

    /// Refuses unless the caller has the admin role.
    pub fn require_admin(&self, action: &str) -> Result<(), Problem> {
        if self.admin {
            Ok(())
        } else {
            Err(Problem::new(
                "forbidden",
                format!(
                    "{} may not {action}: the admin role manages subscriptions and DLQs",
                    self.service.as_deref().unwrap_or("this caller")
                ),
            )
            .with("rule", "admin-only"))
        }
    }
}

/// The configured credentials, ready to check.
pub struct Authenticator {
    keys: Vec<([u8; 32], String)>,
    jwt: Option<(DecodingKey, Validation, String)>,
    admins: Vec<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("jwt", &self.jwt.is_some())
            .finish()
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Authenticator {
    /// Checks the configuration: every key has a hash or a value, the JWT key loads.
    pub fn new(config: &AuthConfig) -> Result<Authenticator, String> {
        let mut keys = Vec::new();
        for k in &config.api_keys {
            let hash = match (&k.sha256, &k.key) {
                (Some(h), _) => hex32(h).ok_or_else(|| {
                    format!("api key of {}: sha256 must be 64 hex digits", k.service)
                })?,
                (None, Some(key)) => Sha256::digest(key.as_bytes()).into(),
                (None, None) => {
                    return Err(format!(
                        "api key of {} has neither sha256 nor key",
                        k.service
                    ));
                }
            };
            keys.push((hash, k.service.clone()));
        }
        let jwt = match &config.jwt {
            None => None,
            Some(j) => {
                let (key, alg) = match (&j.hs256_secret, &j.public_key_file) {
                    (Some(secret), None) => (
                        DecodingKey::from_secret(secret.as_bytes()),
                        Algorithm::HS256,
                    ),
                    (None, Some(file)) => {
                        let pem = std::fs::read(file)
                            .map_err(|e| format!("jwt public key {}: {e}", file.display()))?;
                        match DecodingKey::from_rsa_pem(&pem) {
                            Ok(k) => (k, Algorithm::RS256),
                            Err(_) => (
                                DecodingKey::from_ec_pem(&pem).map_err(|e| {
                                    format!(
                                        "jwt public key {}: not an RSA or EC key: {e}",
                                        file.display()
                                    )
                                })?,
                                Algorithm::ES256,
                            ),
                        }
                    }
                    _ => {
                        return Err(
                            "jwt: set exactly one of hs256_secret and public_key_file".to_owned()
                        );
                    }
                };
                let mut v = Validation::new(alg);
                v.validate_aud = j.audience.is_some();
                if let Some(a) = &j.audience {
                    v.set_audience(&[a]);
                }
                if let Some(i) = &j.issuer {
                    v.set_issuer(&[i]);
                }
                v.required_spec_claims.clear();
                v.required_spec_claims.insert("exp".to_owned());
                Some((key, v, j.service_claim.clone()))
            }
        };
        Ok(Authenticator {
            keys,
            jwt,
            admins: config.admins.clone(),
        })
    }

    /// Whether any credential is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// The caller named by the request's `Authorization` header.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Identity, Problem> {
        if !self.enabled() {
            return Ok(Identity::operator());
        }
        let unauthenticated = |why: &str| {
            Problem::new("unauthenticated", why.to_owned()).with("rule", "credentials-required")
        };
        // Apps written for a Dapr sidecar send their token as `dapr-api-token`.
        let token = match (
            headers.get(axum::http::header::AUTHORIZATION),
            headers.get("dapr-api-token"),
        ) {
            (Some(value), _) => value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    unauthenticated("the Authorization header must be Bearer <token>")
                })?,
            (None, Some(value)) => value
                .to_str()
                .map(str::trim)
                .map_err(|_| unauthenticated("dapr-api-token is not text"))?,
            (None, None) => {
                return Err(unauthenticated(
                    "send Authorization: Bearer <api key or JWT> (or dapr-api-token)",
                ));
            }
        };
        let service = self.service_of(token).ok_or_else(|| {
            unauthenticated("the bearer token is neither a configured API key nor a valid JWT")
        })?;
        Ok(Identity {
            admin: self.admins.contains(&service),
            service: Some(service),
        })
    }

    fn service_of(&self, token: &str) -> Option<String> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare every key in full, so timing does not tell which prefix matched.
        let mut found = None;
        for (h, service) in &self.keys {
            let diff = h
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(service.clone());
            }
        }
        if found.is_some() {
            return found;
        }
        let (key, validation, claim) = self.jwt.as_ref()?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        )
        .ok()?;
        data.claims.get(claim)?.as_str().map(str::to_owned)
    }
}
