//! Optional JWT room tokens, checked by `jsonwebtoken`: claims `room` (a
//! room id or `*`), `name`, `sub`, `exp` (unix seconds, required) and `nbf`
//! (optional). The algorithm is pinned by configuration: HS256 with a shared
//! secret, or RS256 / ES256 with the public key of the platform's auth
//! server ([`TokenVerifier`], its key file re-read when it changes).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::error::SignalingError;

mod key_file;

pub use key_file::TokenVerifier;

/// The algorithm room tokens must be signed with. A token whose header
/// names another is refused, so a public key can never be used as an HMAC
/// secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenAlgorithm {
    /// HMAC-SHA256 with a shared secret (`--auth-secret-file`).
    #[value(name = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, verified with an RSA public key.
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256, verified with an EC public key.
    #[value(name = "ES256")]
    Es256,
}

impl TokenAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The room the token admits to, or `*` for any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who the token was issued to; names the caller's TURN user when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
}

impl Claims {
    pub fn allows_room(&self, room: &str) -> bool {
        matches!(self.room.as_deref(), Some("*")) || self.room.as_deref() == Some(room)
    }
}

/// Longest token accepted; real ones are a few hundred bytes.
const MAX_TOKEN_LEN: usize = 4096;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// The header's `alg`, read before validation so that `none` or RS256 is
/// reported as the wrong algorithm rather than as a malformed token.
fn algorithm_of(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    serde_json::from_slice::<Header>(&bytes).ok().map(|h| h.alg)
}

/// Checks an HS256 token against `secret` (see [`verify_with`]).
pub fn verify(secret: &[u8], token: &str) -> Result<Claims, SignalingError> {
    verify_with(
        TokenAlgorithm::Hs256,
        &DecodingKey::from_secret(secret),
        token,
    )
}

/// Checks the signature with `key` under `algorithm` only (whatever the
/// header says), `exp` (required) and `nbf` (when present); returns the claims.
pub fn verify_with(
    algorithm: TokenAlgorithm,
    key: &DecodingKey,
    token: &str,
) -> Result<Claims, SignalingError> {
    if token.is_empty() {
        return Err(SignalingError::TokenMissing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(SignalingError::TokenMalformed);
    }
    if algorithm_of(token).is_some_and(|alg| alg != algorithm.name()) {
        return Err(SignalingError::TokenAlgorithm(algorithm.name()));
    }
    let mut validation = Validation::new(algorithm.jwt());
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_nbf = true;
    // Tokens are minted by the application's backend for this service; a
    // clock skew allowance would only lengthen every token's life.
    validation.leeway = 0;
    match jsonwebtoken::decode::<Claims>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature => SignalingError::TokenSignature,
            ErrorKind::ExpiredSignature => SignalingError::TokenExpired,
            ErrorKind::ImmatureSignature => SignalingError::TokenNotYetValid,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => SignalingError::TokenAlgorithm(algorithm.name()),
            _ => SignalingError::TokenMalformed,
        }),
    }
}

/// Makes a token (for tools and tests; production tokens come from the app's backend).
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_a_token_made_by_another_library() {
        // Made with Python hmac/hashlib/base64 (secret "s3cret"),
        // claims {"room":"r1","name":"Ann","exp":4102444800}
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb29tIjoicjEiLCJuYW1lIjoiQW5uIiwiZXhwIjo0MTAyNDQ0ODAwfQ.3ce2RHBrmvt9m-JDpXPsI2jU-PWJYr6gYQ7OgB3el4M";
        let claims = verify(b"s3cret", token).unwrap();
        assert_eq!(claims.room.as_deref(), Some("r1"));
        assert_eq!(claims.name.as_deref(), Some("Ann"));
        assert!(claims.allows_room("r1") && !claims.allows_room("r2"));
        assert!(matches!(
            verify(b"other", token),
            Err(SignalingError::TokenSignature)
        ));
        let now = crate::time::unix_now();
        let claims = |exp: u64| Claims {
            room: Some("r1".into()),
            name: None,
            sub: None,
            exp,
        };
        assert!(matches!(
            verify(b"s3cret", &sign(b"s3cret", &claims(now - 1))),
            Err(SignalingError::TokenExpired)
        ));
        // Not valid before `nbf`.
        let early = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"room": "r1", "exp": now + 600, "nbf": now + 300}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(matches!(
            verify(b"s3cret", &early),
            Err(SignalingError::TokenNotYetValid)
        ));
    }

    #[test]
    fn refuses_malformed_and_other_algorithms() {
        assert!(matches!(
            verify(b"k", ""),
            Err(SignalingError::TokenMissing)
        ));
        assert!(matches!(
            verify(b"k", "a.b"),
            Err(SignalingError::TokenMalformed)
        ));
        assert!(matches!(
            verify(b"k", "a.b.c.d"),
            Err(SignalingError::TokenMalformed)
        ));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"exp":99999999999}"#)
        );
        assert!(matches!(
            verify(b"k", &none),
            Err(SignalingError::TokenAlgorithm("HS256"))
        ));
        let t = sign(
            b"k",
            &Claims {
                room: Some("*".into()),
                name: None,
                sub: None,
                exp: crate::time::unix_now() + 10,
            },
        );
        assert!(verify(b"k", &t).unwrap().allows_room("any"));
        // A token without `exp` is refused.
        let no_exp = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"room": "*"}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(verify(b"k", &no_exp).is_err());
        // HS384 under the same secret is refused: the algorithm is pinned.
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS384),
            &serde_json::json!({"room": "*", "exp": crate::time::unix_now() + 10}),
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(matches!(
            verify(b"k", &hs384),
            Err(SignalingError::TokenAlgorithm("HS256"))
        ));
    }
}
