//! Interop: the official CloudEvents Rust SDK (`cloudevents-sdk`) publishes to Canon in binary
//! and structured mode.

use cloudevents::binding::reqwest::RequestBuilderExt;
use cloudevents::{EventBuilder, EventBuilderV10};
use serde_json::json;

use crate::Server;

fn event(id: &str, draft: &str) -> cloudevents::Event {
    EventBuilderV10::new()
        .id(id)
        .source("/coach/backend")
        .ty("post.generated")
        .extension("correlationid", "sdk-corr")
        .data(
            "application/json",
            json!({"userId": "u", "platform": "x", "prompt": "p", "draftId": draft, "archetype": "a", "valuesMode": true}),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_official_sdk_publishes_in_binary_and_structured_mode() {
    let s = Server::start().await;
    let client = reqwest012::Client::new();
    let res = client
        .post(format!("{}/v1/events", s.base))
        .event(event("sdk-1", "d1"))
        .unwrap()
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    let structured = serde_json::to_vec(&event("sdk-2", "d2")).unwrap();
    let res = client
        .post(format!("{}/v1/events", s.base))
        .header("content-type", "application/cloudevents+json")
        .body(structured)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "{}", res.text().await.unwrap());
    let (_, v) = s.get("/v1/correlations/sdk-corr").await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[0]["event"]["data"]["draftId"], "d1");
    s.stop().await;
}
