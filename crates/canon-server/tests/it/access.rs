//! Access from the catalog: producers publish, consumers subscribe, admins manage.

use serde_json::json;

use crate::{Server, generated};

async fn keyed() -> Server {
    let dir = tempfile::tempdir().unwrap();
    Server::with(crate::with_keys(crate::config(dir.path())), Some(dir)).await
}

#[tokio::test]
async fn only_declared_producers_publish() {
    let s = keyed().await;
    let backend = s.as_token("backend-key");
    let (status, v) = backend.publish(&[generated("a1", "d1")]).await;
    assert_eq!(status, 200, "{v}");
    let analytics = s.as_token("analytics-key");
    let (status, v) = analytics.publish(&[generated("a2", "d2")]).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["rule"], "declared-producer");
    assert_eq!(backend.last_seq("post.generated").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn only_declared_consumers_subscribe_and_admins_manage() {
    let s = keyed().await;
    let analytics = s.as_token("analytics-key");
    let (status, v) = analytics
        .post(
            "/v1/subscriptions",
            &json!({"name": "an", "topic": "post.generated", "types": ["post.generated"]}),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["consumer"], "analytics");
    // The streak service does not consume post.generated.
    let streak = s.as_token("streak-key");
    let (status, v) = streak
        .post(
            "/v1/subscriptions",
            &json!({"name": "st", "topic": "post.generated", "types": ["post.generated"]}),
        )
        .await;
    assert_eq!(
        (status, v["rule"].as_str()),
        (403, Some("declared-consumer")),
        "{v}"
    );
    let (status, v) = streak
        .post(
            "/v1/subscriptions",
            &json!({"name": "st", "topic": "post.generated"}),
        )
        .await;
    assert_eq!(
        (status, v["rule"].as_str()),
        (403, Some("declared-consumer")),
        "{v}"
    );
    // Nor may it use someone else's subscription.
    let (status, v) = streak.post("/v1/subscriptions/an/pull", &json!({})).await;
    assert_eq!(
        (status, v["rule"].as_str()),
        (403, Some("subscription-owner"))
    );
    // The owner consumes; redrive and replay are the admin's.
    let (status, _) = analytics
        .post("/v1/subscriptions/an/pull", &json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, v) = analytics
        .post("/v1/subscriptions/an/dlq/redrive", &json!({}))
        .await;
    assert_eq!((status, v["rule"].as_str()), (403, Some("admin-only")));
    let ops = s.as_token("ops-key");
    let (status, _) = ops
        .post("/v1/subscriptions/an/dlq/redrive", &json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = ops
        .post("/v1/subscriptions/an/replay", &json!({"from": "latest"}))
        .await;
    assert_eq!(status, 204);
    // Listing shows each service its own.
    let (_, v) = streak.get("/v1/subscriptions").await;
    assert!(v.as_array().unwrap().is_empty());
    let (_, v) = ops.get("/v1/subscriptions").await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn jwt_bearer_tokens_name_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.auth.jwt = Some(canon_server::config::JwtConfig {
        hs256_secret: Some("s3cret".to_owned()),
        public_key_file: None,
        issuer: Some("todo-auth".to_owned()),
        audience: None,
        service_claim: "sub".to_owned(),
    });
    let s = Server::with(c, Some(dir)).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |sub: &str, iss: &str, secret: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({"sub": sub, "iss": iss, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let (status, v) = s
        .as_token(&token("backend", "todo-auth", "s3cret"))
        .publish(&[generated("j1", "d1")])
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .as_token(&token("analytics", "todo-auth", "s3cret"))
        .publish(&[generated("j2", "d2")])
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    let (status, v) = s
        .as_token(&token("backend", "todo-auth", "wrong"))
        .publish(&[generated("j3", "d3")])
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("unauthenticated")),
        "a bad signature: {v}"
    );
    let (status, v) = s
        .as_token(&token("backend", "other-issuer", "s3cret"))
        .publish(&[generated("j4", "d4")])
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("unauthenticated")),
        "another issuer: {v}"
    );
    let (_, v) = s
        .as_token(&token("backend", "todo-auth", "s3cret"))
        .get("/v1/topics/post.generated")
        .await;
    assert_eq!(
        v["last"], 1,
        "only the accepted token's event is stored: {v}"
    );
    s.stop().await;
}

#[tokio::test]
async fn without_credentials_only_loopback_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = crate::config(dir.path());
    c.listen = "0.0.0.0:0".to_owned();
    let err = canon_server::start(c).await.unwrap_err();
    assert!(err.to_string().contains("without credentials"), "{err}");
    let mut c = crate::with_keys(crate::config(dir.path()));
    c.listen = "0.0.0.0:0".to_owned();
    let r = canon_server::start(c)
        .await
        .expect("with keys it binds anywhere");
    r.shutdown().await.unwrap();
}
