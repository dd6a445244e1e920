//! Bad input: every rule of the CloudEvents checklist, catalog violations, auth failures and
//! oversize bodies get a 4xx problem+json with a stable code, and nothing is stored.

use serde_json::{Value, json};

use crate::{Server, generated};

const CE: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

struct Case {
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn structured(name: &'static str, ev: &Value, status: u16, code: &'static str) -> Case {
    Case {
        name,
        headers: vec![("content-type", CE)],
        body: serde_json::to_vec(ev).unwrap(),
        status,
        code,
    }
}

fn raw(name: &'static str, ct: &'static str, body: &[u8], status: u16, code: &'static str) -> Case {
    Case {
        name,
        headers: vec![("content-type", ct)],
        body: body.to_vec(),
        status,
        code,
    }
}

fn with(f: impl FnOnce(&mut Value)) -> Value {
    let mut e = generated("bad-1", "draft-bad");
    f(&mut e);
    e
}

fn binary(name: &'static str, drop: &str, extra: &[(&'static str, &'static str)]) -> Case {
    let mut headers: Vec<(&'static str, &'static str)> = vec![
        ("content-type", "application/json"),
        ("ce-specversion", "1.0"),
        ("ce-id", "bin-bad"),
        ("ce-source", "/coach/backend"),
        ("ce-type", "post.generated"),
    ];
    headers.retain(|(k, _)| *k != drop);
    headers.extend_from_slice(extra);
    Case {
        name,
        headers,
        body: br#"{"userId":"u","platform":"x","prompt":"p","draftId":"d","archetype":"a","valuesMode":true}"#.to_vec(),
        status: 400,
        code: "invalid-event",
    }
}

fn cases() -> Vec<Case> {
    vec![
        // 1. Not JSON, not an object, not an array.
        raw("not json", CE, b"{nope", 400, "invalid-event"),
        raw("empty body", CE, b"", 400, "invalid-event"),
        raw("array in structured mode", CE, b"[]", 400, "invalid-event"),
        raw(
            "string in structured mode",
            CE,
            b"\"event\"",
            400,
            "invalid-event",
        ),
        raw(
            "object in batch mode",
            BATCH,
            br#"{"id":"x"}"#,
            400,
            "invalid-event",
        ),
        raw(
            "batch member not an object",
            BATCH,
            b"[1]",
            400,
            "invalid-event",
        ),
        raw("trailing garbage", CE, b"{} {}", 400, "invalid-event"),
        // 2. Required attributes.
        structured(
            "missing id",
            &with(|e| drop(e.as_object_mut().unwrap().remove("id"))),
            400,
            "invalid-event",
        ),
        structured(
            "null id",
            &with(|e| e["id"] = Value::Null),
            400,
            "invalid-event",
        ),
        structured(
            "empty id",
            &with(|e| e["id"] = json!("")),
            400,
            "invalid-event",
        ),
        structured(
            "numeric id",
            &with(|e| e["id"] = json!(5)),
            400,
            "invalid-event",
        ),
        structured(
            "missing source",
            &with(|e| drop(e.as_object_mut().unwrap().remove("source"))),
            400,
            "invalid-event",
        ),
        structured(
            "empty source",
            &with(|e| e["source"] = json!("")),
            400,
            "invalid-event",
        ),
        structured(
            "missing type",
            &with(|e| drop(e.as_object_mut().unwrap().remove("type"))),
            400,
            "invalid-event",
        ),
        structured(
            "empty type",
            &with(|e| e["type"] = json!("")),
            400,
            "invalid-event",
        ),
        structured(
            "missing specversion",
            &with(|e| drop(e.as_object_mut().unwrap().remove("specversion"))),
            400,
            "invalid-event",
        ),
        structured(
            "specversion 0.3",
            &with(|e| e["specversion"] = json!("0.3")),
            400,
            "invalid-event",
        ),
        structured(
            "specversion number",
            &with(|e| e["specversion"] = json!(1.0)),
            400,
            "invalid-event",
        ),
        // 3. Optional attributes.
        structured(
            "time not RFC 3339",
            &with(|e| e["time"] = json!("yesterday")),
            400,
            "invalid-event",
        ),
        structured(
            "time a number",
            &with(|e| e["time"] = json!(17)),
            400,
            "invalid-event",
        ),
        structured(
            "null source",
            &with(|e| e["source"] = Value::Null),
            400,
            "invalid-event",
        ),
        structured(
            "numeric source",
            &with(|e| e["source"] = json!(7)),
            400,
            "invalid-event",
        ),
        structured(
            "null type",
            &with(|e| e["type"] = Value::Null),
            400,
            "invalid-event",
        ),
        structured(
            "array type",
            &with(|e| e["type"] = json!(["post.generated"])),
            400,
            "invalid-event",
        ),
        structured(
            "numeric subject",
            &with(|e| e["subject"] = json!(3)),
            400,
            "invalid-event",
        ),
        structured(
            "object dataschema",
            &with(|e| e["dataschema"] = json!({"href": "https://example.com/s"})),
            400,
            "invalid-event",
        ),
        structured(
            "empty subject",
            &with(|e| e["subject"] = json!("")),
            400,
            "invalid-event",
        ),
        structured(
            "empty dataschema",
            &with(|e| e["dataschema"] = json!("")),
            400,
            "invalid-event",
        ),
        structured(
            "relative dataschema",
            &with(|e| e["dataschema"] = json!("schemas/x")),
            400,
            "invalid-event",
        ),
        structured(
            "datacontenttype a number",
            &with(|e| e["datacontenttype"] = json!(3)),
            400,
            "invalid-event",
        ),
        // 4. Attribute names and extension values.
        structured(
            "upper-case extension",
            &with(|e| e["myExt"] = json!("x")),
            400,
            "invalid-event",
        ),
        structured(
            "dash in extension",
            &with(|e| e["my-ext"] = json!("x")),
            400,
            "invalid-event",
        ),
        structured(
            "object extension",
            &with(|e| e["ext"] = json!({"a": 1})),
            400,
            "invalid-event",
        ),
        structured(
            "array extension",
            &with(|e| e["ext"] = json!([1])),
            400,
            "invalid-event",
        ),
        structured(
            "fractional extension",
            &with(|e| e["ext"] = json!(1.5)),
            400,
            "invalid-event",
        ),
        structured(
            "out-of-range extension",
            &with(|e| e["ext"] = json!(4_294_967_296_i64)),
            400,
            "invalid-event",
        ),
        structured(
            "bad traceparent",
            &with(|e| e["traceparent"] = json!("00-xyz")),
            400,
            "invalid-event",
        ),
        structured(
            "bad expiration",
            &with(|e| e["expiration"] = json!("soon")),
            400,
            "invalid-event",
        ),
        // 5. data and data_base64.
        structured(
            "data and data_base64",
            &with(|e| e["data_base64"] = json!("aGk=")),
            400,
            "invalid-event",
        ),
        structured(
            "bad base64",
            &with(|e| {
                e.as_object_mut().unwrap().remove("data");
                e["data_base64"] = json!("!!!");
            }),
            400,
            "invalid-event",
        ),
        // 6. Formats.
        raw(
            "avro format",
            "application/cloudevents+avro",
            b"{}",
            415,
            "unsupported-media-type",
        ),
        raw(
            "yaml batch",
            "application/cloudevents-batch+yaml",
            b"[]",
            415,
            "unsupported-media-type",
        ),
        raw(
            "plain json, no ce headers",
            "application/json",
            b"{}",
            415,
            "unsupported-media-type",
        ),
        // 7. Binary mode.
        binary("binary without ce-specversion", "ce-specversion", &[]),
        binary("binary without ce-id", "ce-id", &[]),
        binary("binary without ce-source", "ce-source", &[]),
        binary("binary without ce-type", "ce-type", &[]),
        binary(
            "binary with bad percent-encoding",
            "",
            &[("ce-subject", "%FF%FE")],
        ),
        binary(
            "binary with upper-case extension",
            "",
            &[("ce-My_Ext", "x")],
        ),
        // The catalog.
        structured(
            "unknown type",
            &with(|e| e["type"] = json!("post.unknown")),
            422,
            "rejected",
        ),
        structured(
            "payload field of the wrong type",
            &with(|e| e["data"]["platform"] = json!(1)),
            422,
            "rejected",
        ),
        structured(
            "payload missing a required field",
            &with(|e| drop(e["data"].as_object_mut().unwrap().remove("draftId"))),
            422,
            "rejected",
        ),
        structured(
            "payload with an unknown field",
            &with(|e| e["data"]["surprise"] = json!(true)),
            422,
            "rejected",
        ),
        structured(
            "payload not JSON",
            &with(|e| {
                e["datacontenttype"] = json!("text/plain");
                e["data"] = json!("hello");
            }),
            422,
            "rejected",
        ),
        structured(
            "payload missing",
            &with(|e| drop(e.as_object_mut().unwrap().remove("data"))),
            422,
            "rejected",
        ),
        // Batches.
        raw(
            "batch with one bad member",
            BATCH,
            &serde_json::to_vec(&json!([generated("ok-1", "d-ok"), {"id": 1}])).unwrap(),
            400,
            "invalid-event",
        ),
        // Request options.
        Case {
            name: "expected sequence not a number",
            headers: vec![("content-type", CE), ("canon-expected-sequence", "x")],
            body: serde_json::to_vec(&generated("es", "d-es")).unwrap(),
            status: 400,
            code: "invalid-request",
        },
        // Size.
        raw(
            "oversize body",
            CE,
            &vec![b' '; 70 * 1024],
            413,
            "payload-too-large",
        ),
    ]
}

#[tokio::test]
async fn every_bad_request_gets_a_problem_and_stores_nothing() {
    let s = Server::start().await;
    let cases = cases();
    assert!(cases.len() >= 40, "{}", cases.len());
    for c in &cases {
        let (status, headers, v) = s
            .send(
                reqwest::Method::POST,
                "/v1/events",
                &c.headers,
                c.body.clone(),
            )
            .await;
        assert_eq!(status, c.status, "{}: {v}", c.name);
        assert_eq!(
            headers.get("content-type").map(|h| h.to_str().unwrap()),
            Some("application/problem+json"),
            "{}",
            c.name
        );
        assert_eq!(v["code"], c.code, "{}: {v}", c.name);
        assert_eq!(v["status"], c.status, "{}", c.name);
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}: {v}",
            c.name
        );
    }
    assert_eq!(s.last_seq("post.generated").await, 0, "nothing was stored");
    s.stop().await;
}

#[tokio::test]
async fn auth_failures_are_problems_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::with(crate::with_keys(crate::config(dir.path())), Some(dir)).await;
    let body = serde_json::to_vec(&generated("a1", "d1")).unwrap();
    let anonymous = s.as_token("");
    type Case<'a> = (Server, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (s.as_token("wrong-key"), vec![], 401, "unauthenticated"),
        (anonymous, vec![], 401, "unauthenticated"),
        (s.as_token("analytics-key"), vec![], 403, "forbidden"),
    ];
    for (client, extra, status, code) in cases {
        let mut headers = vec![("content-type", CE)];
        headers.extend(extra);
        let (got, h, v) = client
            .send(reqwest::Method::POST, "/v1/events", &headers, body.clone())
            .await;
        assert_eq!((got, v["code"].as_str()), (status, Some(code)), "{v}");
        assert_eq!(
            h.get("content-type").map(|h| h.to_str().unwrap()),
            Some("application/problem+json"),
            "{v}"
        );
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    }
    // No Authorization header at all.
    let (got, _, v) = s
        .send(
            reqwest::Method::POST,
            "/v1/events",
            &[("content-type", CE)],
            body.clone(),
        )
        .await;
    assert_eq!(
        (got, v["code"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
    let backend = s.as_token("backend-key");
    assert_eq!(backend.last_seq("post.generated").await, 0);
    s.stop().await;
}
