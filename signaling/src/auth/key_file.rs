//! The key room tokens are verified with, read from a file: the HS256
//! secret (`--auth-secret-file`) or an RS256 / ES256 public key in PEM
//! (`--auth-public-key-file`). Like the TURN secret file, the file is
//! re-read when it changes, so keys rotate without a restart; a file that
//! no longer parses keeps the last good key and is reported once.

use std::path::PathBuf;

use jsonwebtoken::DecodingKey;

use super::{Claims, TokenAlgorithm, verify_with};
use crate::error::Result;
use crate::watched_file::WatchedFile;

/// Verifies room tokens under one pinned algorithm with the key in a file.
pub struct TokenVerifier {
    algorithm: TokenAlgorithm,
    key: WatchedFile<DecodingKey>,
}

impl TokenVerifier {
    /// Reads the key; a missing, empty or unparsable file, or a key of
    /// another kind than `algorithm` needs, is an error naming `setting`.
    pub fn from_file(
        algorithm: TokenAlgorithm,
        setting: &'static str,
        path: PathBuf,
    ) -> Result<Self> {
        let key = WatchedFile::open(setting, path, move |text| parse_key(algorithm, text))?;
        Ok(Self { algorithm, key })
    }

    pub fn algorithm(&self) -> TokenAlgorithm {
        self.algorithm
    }

    /// Checks `token` with the current key (re-read when the file changed).
    pub fn verify(&self, token: &str) -> Result<Claims> {
        verify_with(self.algorithm, &self.key.get(), token)
    }
}

fn parse_key(algorithm: TokenAlgorithm, text: &str) -> std::result::Result<DecodingKey, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("is empty".into());
    }
    match algorithm {
        TokenAlgorithm::Hs256 => Ok(DecodingKey::from_secret(text.as_bytes())),
        TokenAlgorithm::Rs256 | TokenAlgorithm::Es256 => {
            // The signing key belongs to the auth server alone.
            if text.contains("PRIVATE KEY") {
                return Err(
                    "holds a private key; give the public key (-----BEGIN PUBLIC KEY-----)".into(),
                );
            }
            let parsed = if algorithm == TokenAlgorithm::Rs256 {
                DecodingKey::from_rsa_pem(text.as_bytes())
            } else {
                DecodingKey::from_ec_pem(text.as_bytes())
            };
            parsed.map_err(|e| {
                format!(
                    "is not a PEM {} public key ({}): {e}",
                    if algorithm == TokenAlgorithm::Rs256 {
                        "RSA"
                    } else {
                        "EC P-256"
                    },
                    algorithm.name()
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::SignalingError;

    fn file_with(text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vc-key-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.pem");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn refusal(algorithm: TokenAlgorithm, text: &str) -> String {
        match TokenVerifier::from_file(algorithm, "--auth-public-key-file", file_with(text)) {
            Ok(_) => panic!("{text:?} was taken as a key"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_key_file_must_hold_a_public_key_of_the_pinned_kind() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ok = TokenVerifier::from_file(
            TokenAlgorithm::Es256,
            "--auth-public-key-file",
            file_with(&pair.public_key_pem()),
        );
        assert!(ok.is_ok());
        // The private key is the auth server's alone.
        let e = refusal(TokenAlgorithm::Es256, &pair.serialize_pem());
        assert!(
            e.contains("--auth-public-key-file") && e.contains("private key"),
            "{e}"
        );
        // An EC key where RS256 is pinned, garbage, an empty file.
        let e = refusal(TokenAlgorithm::Rs256, &pair.public_key_pem());
        assert!(e.contains("not a PEM RSA public key"), "{e}");
        let e = refusal(TokenAlgorithm::Es256, "hello");
        assert!(e.contains("not a PEM EC P-256 public key"), "{e}");
        let e = refusal(TokenAlgorithm::Es256, "\n");
        assert!(e.contains("is empty"), "{e}");
        let e = TokenVerifier::from_file(
            TokenAlgorithm::Es256,
            "--auth-public-key-file",
            PathBuf::from("/nonexistent/key.pem"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn es256_tokens_verify_only_with_their_key_and_algorithm() {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let verifier = TokenVerifier::from_file(
            TokenAlgorithm::Es256,
            "--auth-public-key-file",
            file_with(&pair.public_key_pem()),
        )
        .unwrap();
        let claims = serde_json::json!({"room": "r", "exp": crate::time::unix_now() + 60});
        let sign = |pem: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
                &claims,
                &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        assert!(
            verifier
                .verify(&sign(&pair.serialize_pem()))
                .unwrap()
                .allows_room("r")
        );
        assert!(matches!(
            verifier.verify(&sign(&other.serialize_pem())),
            Err(SignalingError::TokenSignature)
        ));
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
        )
        .unwrap();
        assert!(matches!(
            verifier.verify(&confused),
            Err(SignalingError::TokenAlgorithm("ES256"))
        ));
    }
}
