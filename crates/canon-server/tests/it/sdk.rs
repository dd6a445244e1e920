//! Interop: the official CloudEvents Rust SDK (`cloudevents-sdk`) publishes to Canon in binary
//! and structured mode, and reads what Canon delivers.

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

/// Interop the other way: what Canon delivers parses with the SDK. Push in structured and in
/// binary mode, read by the SDK's HTTP binding on the subscriber's side, and a pulled
/// delivery's event, read by the SDK's serde support.
#[tokio::test]
async fn the_official_sdk_reads_what_canon_delivers() {
    use std::sync::{Arc, Mutex};

    use cloudevents::AttributesReader;

    let parsed: Arc<Mutex<Vec<(String, cloudevents::Event)>>> = Arc::default();
    let state = parsed.clone();
    let app = axum::Router::new().route(
        "/{mode}",
        axum::routing::post(
            move |axum::extract::Path(mode): axum::extract::Path<String>,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let event = cloudevents::binding::http::to_event(&headers, body.to_vec())
                        .expect("the SDK reads the request");
                    state.lock().unwrap().push((mode, event));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = Server::start().await;
    for mode in ["structured", "binary"] {
        crate::subscribe(
            &s,
            mode,
            "post.generated",
            json!({"push": {"url": format!("http://{addr}/{mode}"), "format": mode}}),
        )
        .await;
    }
    crate::subscribe(&s, "pulled", "post.generated", json!({})).await;
    let (status, v) = s.publish(&[crate::generated("sdk-out", "d-out")]).await;
    assert_eq!(status, 200, "{v}");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while parsed.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut got = parsed.lock().unwrap().clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let modes: Vec<&str> = got.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(modes, ["binary", "structured"]);
    let pulled = crate::pull(&s, "pulled", 1, 2000).await;
    let from_pull: cloudevents::Event =
        serde_json::from_value(pulled[0]["event"].clone()).expect("the SDK reads a delivery");
    for (mode, e) in got.iter().chain([(String::from("pull"), from_pull)].iter()) {
        assert_eq!(
            (e.id(), e.ty(), e.source().as_str()),
            ("sdk-out", "post.generated", "/coach/backend"),
            "{mode}"
        );
        assert_eq!(
            e.extension("correlationid").map(ToString::to_string),
            Some("corr-1".to_owned()),
            "{mode}"
        );
        let data: serde_json::Value = match e.data() {
            Some(cloudevents::Data::Json(v)) => v.clone(),
            Some(cloudevents::Data::Binary(b)) => serde_json::from_slice(b).unwrap(),
            other => panic!("{mode}: data {other:?}"),
        };
        assert_eq!(data["draftId"], "d-out", "{mode}");
    }
    s.stop().await;
}
