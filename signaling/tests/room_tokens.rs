//! Room tokens signed by a platform's auth server (RS256, ES256), verified
//! with its public key from a file, over real WebSockets and REST: the right
//! key admits; a token signed by another key, or naming another algorithm
//! (an HS256 token "signed" with the public key's bytes), is refused with
//! `unauthorized` and close 1008; a rotated key file is picked up without a
//! restart. Keys are made fresh by each test (rcgen for P-256, the openssl
//! command for RSA).

mod service;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use service::*;
use videochat_signaling::auth::TokenAlgorithm;

/// A signing key of the auth server and the public key file we are given.
struct AuthServerKey {
    private_pem: String,
    public_pem: String,
}

fn es256_key() -> AuthServerKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    AuthServerKey {
        private_pem: pair.serialize_pem(),
        public_pem: pair.public_key_pem(),
    }
}

fn rs256_key(dir: &Path) -> AuthServerKey {
    let private = dir.join(format!("rsa-{}.pem", rand::random::<u64>()));
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .arg("-out")
        .arg(&private)
        .output()
        .expect("the openssl command makes the test's RSA key");
    assert!(made.status.success(), "openssl genpkey: {made:?}");
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .expect("openssl pkey");
    assert!(public.status.success(), "openssl pkey: {public:?}");
    AuthServerKey {
        private_pem: std::fs::read_to_string(&private).unwrap(),
        public_pem: String::from_utf8(public.stdout).unwrap(),
    }
}

impl AuthServerKey {
    fn sign(&self, algorithm: Algorithm, room: &str) -> String {
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(self.private_pem.as_bytes()),
            _ => EncodingKey::from_ec_pem(self.private_pem.as_bytes()),
        }
        .expect("signing key");
        let claims = json!({
            "room": room,
            "name": "Signed",
            "exp": videochat_signaling::time::unix_now() + 600,
        });
        jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).expect("token")
    }
}

async fn server_with_key(
    algorithm: TokenAlgorithm,
    public_pem: &str,
) -> (videochat_signaling::RunningServer, PathBuf) {
    let key_file = temp_dir("room-key").join("public.pem");
    std::fs::write(&key_file, public_pem).unwrap();
    let server = start(videochat_signaling::Config {
        auth_public_key_file: Some(key_file.clone()),
        auth_algorithm: Some(algorithm),
        ..test_config()
    })
    .await;
    (server, key_file)
}

/// The error a refused hello gets; asserts the close 1008 after it.
async fn refused_hello(server: &videochat_signaling::RunningServer, token: &str) -> String {
    let mut c = Client::raw(&ws_url(server)).await;
    c.send(&json!({"type":"hello","token":token})).await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    assert_eq!(c.close_code().await, Some(1008));
    e["message"].as_str().unwrap_or_default().to_owned()
}

async fn rest_status(server: &videochat_signaling::RunningServer, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    http(
        server,
        "GET",
        "/api/messages?room=r1",
        &[("Authorization", &auth)],
        None,
    )
    .await
    .0
}

/// An HS256 token whose "secret" is the public key file's bytes: a server
/// that let the header choose the algorithm would accept it.
fn hs256_with_public_key(public_pem: &str, room: &str) -> String {
    let claims = json!({"room": room, "exp": videochat_signaling::time::unix_now() + 600});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap()
}

async fn check_pinned_public_key(
    algorithm: TokenAlgorithm,
    jwt: Algorithm,
    key: AuthServerKey,
    other: AuthServerKey,
) {
    let (server, _) = server_with_key(algorithm, &key.public_pem).await;

    // Signed by the auth server's key: admitted, the name from the token.
    let good = key.sign(jwt, "r1");
    let mut a = Client::raw(&ws_url(&server)).await;
    a.hello(json!({"type":"hello","token":good})).await;
    let mut b = Client::raw(&format!("{}?token={good}", ws_url(&server))).await;
    b.hello(json!({"type":"hello"})).await;
    a.join("r1", "ignored").await;
    b.join("r1", "B").await;
    assert_eq!(a.recv_type("peer-joined").await["name"], "Signed");
    assert_eq!(rest_status(&server, &good).await, 200);

    // Signed by another key of the same kind: refused.
    let forged = other.sign(jwt, "r1");
    let message = refused_hello(&server, &forged).await;
    assert!(message.contains("signature"), "{message}");
    assert_eq!(rest_status(&server, &forged).await, 401);

    // Algorithm confusion: HS256 keyed with the public key. Refused for its
    // algorithm, never checked as an HMAC.
    let confused = hs256_with_public_key(&key.public_pem, "r1");
    let message = refused_hello(&server, &confused).await;
    assert!(
        message.contains(&format!("must be {}", algorithm_name(algorithm))),
        "{message}"
    );
    assert_eq!(rest_status(&server, &confused).await, 401);
    server.shutdown().await;
}

fn algorithm_name(a: TokenAlgorithm) -> &'static str {
    a.name()
}

#[tokio::test]
async fn es256_tokens_verify_with_the_public_key_and_nothing_else() {
    check_pinned_public_key(
        TokenAlgorithm::Es256,
        Algorithm::ES256,
        es256_key(),
        es256_key(),
    )
    .await;
}

#[tokio::test]
async fn rs256_tokens_verify_with_the_public_key_and_nothing_else() {
    let dir = temp_dir("rsa");
    let (key, other) = (rs256_key(&dir), rs256_key(&dir));
    check_pinned_public_key(TokenAlgorithm::Rs256, Algorithm::RS256, key, other).await;
}

#[tokio::test]
async fn a_server_pinned_to_rs256_refuses_es256_tokens() {
    let dir = temp_dir("rsa-pin");
    let rsa = rs256_key(&dir);
    let (server, _) = server_with_key(TokenAlgorithm::Rs256, &rsa.public_pem).await;
    let ec = es256_key();
    let message = refused_hello(&server, &ec.sign(Algorithm::ES256, "r1")).await;
    assert!(message.contains("must be RS256"), "{message}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_rotated_public_key_is_picked_up_without_a_restart() {
    let old = es256_key();
    let new = es256_key();
    let (server, key_file) = server_with_key(TokenAlgorithm::Es256, &old.public_pem).await;
    let old_token = old.sign(Algorithm::ES256, "r1");
    let new_token = new.sign(Algorithm::ES256, "r1");
    assert_eq!(rest_status(&server, &old_token).await, 200);
    assert_eq!(rest_status(&server, &new_token).await, 401);

    // Replace the file the way a mounted Secret changes: write aside, rename.
    let aside = key_file.with_extension("next");
    std::fs::write(&aside, &new.public_pem).unwrap();
    std::fs::rename(&aside, &key_file).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while rest_status(&server, &new_token).await != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rest_status(&server, &old_token).await, 401);

    // A broken file keeps the last good key.
    std::fs::write(&aside, "not a key").unwrap();
    std::fs::rename(&aside, &key_file).unwrap();
    let mut checks = 0;
    while checks < 20 {
        assert_eq!(rest_status(&server, &new_token).await, 200);
        checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
}
