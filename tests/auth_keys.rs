//! Public-key tokens end to end: RS256 and ES256 keys from files, tokens minted with the
//! private key accepted at the WebSocket handshake, and forged, confused or premature tokens
//! refused with 401.
//!
//! The key pairs under `tests/keys/` were generated for these tests and protect nothing.

mod common;

use common::TestServer;
use im_connect::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key_config(alg: &str) -> Config {
    let yaml = format!(
        "auth:\n  jwt:\n    publicKey: tests/keys/{alg}-public.pem\n    \
         privateKey: tests/keys/{alg}-private.pem\n"
    );
    common::isolated(Config::from_yaml(&yaml).expect("key files load").config)
}

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/keys/{name}.pem")).unwrap()
}

/// The HTTP status of a handshake with `token`: 101 when it is accepted.
async fn handshake(srv: &TestServer, token: &str) -> u16 {
    match common::ws_connect(&srv.ws_url(&format!("token={token}")), Some("json")).await {
        Ok(mut ws) => {
            common::ws_send_json(&mut ws, json!({"code": 1, "requestId": "r"})).await;
            assert_eq!(common::ws_json(&mut ws).await["message"], "ok");
            101
        }
        Err(status) => status,
    }
}

#[tokio::test]
async fn es256_tokens_from_the_private_key_are_accepted_and_forgeries_refused() {
    let srv = TestServer::with(key_config("es256")).await;
    assert_eq!(
        srv.server.node().config.auth.jwt.algorithm.as_deref(),
        Some("ES256")
    );
    assert_eq!(handshake(&srv, &srv.token("alice")).await, 101);

    let claims = json!({"username": "alice", "exp": now() + 60});
    let other = EncodingKey::from_ec_pem(&pem("es256-other-private")).unwrap();
    let forged = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &other).unwrap();
    assert_eq!(handshake(&srv, &forged).await, 401);
}

#[tokio::test]
async fn rs256_refuses_algorithm_confusion_and_tokens_not_yet_valid() {
    let srv = TestServer::with(key_config("rs256")).await;
    assert_eq!(handshake(&srv, &srv.token("bob")).await, 101);

    // The public key used as an HMAC secret: the classic confusion attack.
    let claims = json!({"username": "bob", "exp": now() + 60});
    let public_as_secret = EncodingKey::from_secret(&pem("rs256-public")).unwrap();
    let confused =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &public_as_secret).unwrap();
    assert_eq!(handshake(&srv, &confused).await, 401);

    // Properly signed, but valid only in an hour (well past the 30 s leeway).
    let private = EncodingKey::from_rsa_pem(&pem("rs256-private")).unwrap();
    let later = json!({"username": "bob", "nbf": now() + 3600, "exp": now() + 7200});
    let early = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &later, &private).unwrap();
    assert_eq!(handshake(&srv, &early).await, 401);

    // A token without the user id claim proves nobody.
    let anonymous = json!({"sub": "bob", "exp": now() + 60});
    let anonymous =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &anonymous, &private).unwrap();
    assert_eq!(handshake(&srv, &anonymous).await, 401);
}
