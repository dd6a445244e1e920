use canon_envelope::{CloudEvent, HttpMode, decode_header_value, encode_header_value};
use expect_test::expect;

use crate::render;

#[test]
fn picks_the_mode_from_content_type() {
    assert_eq!(
        HttpMode::detect(Some("application/cloudevents+json; charset=utf-8"), false).unwrap(),
        HttpMode::Structured
    );
    assert_eq!(
        HttpMode::detect(Some("Application/CloudEvents-Batch+JSON"), false).unwrap(),
        HttpMode::Batched
    );
    assert_eq!(
        HttpMode::detect(Some("application/json"), true).unwrap(),
        HttpMode::Binary
    );
    assert_eq!(
        HttpMode::detect(Some("application/json"), false).unwrap(),
        HttpMode::NotCloudEvent
    );
    let err = HttpMode::detect(Some("application/cloudevents+avro"), false).unwrap_err();
    assert_eq!(err.0[0].code.as_str(), "unsupported-format");
}

#[test]
fn percent_encodes_header_values() {
    assert_eq!(encode_header_value("Café 5%"), "Caf%C3%A9%205%25");
    assert_eq!(encode_header_value("a\"b"), "a%22b");
    assert_eq!(decode_header_value(b"Caf%c3%a9%205%25").unwrap(), "Café 5%");
    assert_eq!(
        decode_header_value(br#""quoted \"value\" %41""#).unwrap(),
        "quoted \"value\" A"
    );
    assert_eq!(
        decode_header_value(b"%C0%A0").unwrap_err(),
        "percent-decoding gives invalid UTF-8"
    );
}

#[test]
fn decodes_the_digest_binary_example() {
    let headers: Vec<(&str, &[u8])> = vec![
        ("ce-specversion", b"1.0"),
        ("ce-id", b"ord-772"),
        ("ce-source", b"/shop/eu"),
        ("ce-type", b"com.example.order.created"),
        ("ce-subject", b"caf%C3%A9"),
        ("CE-Tenant", b"acme"),
        ("Content-Type", b"application/json"),
        ("Accept", b"*/*"),
    ];
    let ev = CloudEvent::from_http_binary(headers, br#"{"sku":"A-2","qty":1}"#).unwrap();
    assert_eq!(ev.subject.as_deref(), Some("café"));
    assert_eq!(ev.extensions["tenant"].as_str(), Some("acme"));
    assert_eq!(ev.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(
        ev.data.as_ref().unwrap().as_bytes(),
        br#"{"sku":"A-2","qty":1}"#
    );

    let msg = ev.to_http_binary();
    let headers: Vec<(&str, &[u8])> = msg
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .chain(
            msg.content_type
                .as_deref()
                .map(|ct| ("content-type", ct.as_bytes())),
        )
        .collect();
    assert_eq!(
        CloudEvent::from_http_binary(headers, &msg.body).unwrap(),
        ev
    );
}

#[test]
fn refuses_bad_binary_messages() {
    let headers: Vec<(&str, &[u8])> = vec![
        ("ce-specversion", b"1.0"),
        ("ce-source", b"/s"),
        ("ce-my_ext", b"x"),
        ("ce-subject", b"%C0%A0"),
        ("ce-datacontenttype", b"text/plain"),
        ("content-type", b"application/json"),
    ];
    let errors = CloudEvent::from_http_binary(headers, b"{not json").unwrap_err();
    expect![[r#"
        invalid-attribute-name ce-my_ext (attribute name "my_ext" must match [a-z0-9]+)
        invalid-header-value ce-subject (percent-decoding gives invalid UTF-8)
        invalid-attribute-name ce-datacontenttype (datacontenttype travels as Content-Type in binary mode, not as ce-datacontenttype)
        missing-attribute ce-id (required header ce-id is missing)
        missing-attribute ce-type (required header ce-type is missing)
        invalid-data body (body is not the JSON its content type says: key must be a string at line 1 column 2)
    "#]]
    .assert_eq(&render(&errors));
}

#[test]
fn json_data_without_content_type_is_sent_as_application_json() {
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":1}}"#,
    )
    .unwrap();
    let msg = ev.to_http_binary();
    assert_eq!(msg.content_type.as_deref(), Some("application/json"));
    assert_eq!(msg.body, br#"{"a":1}"#);
}

#[test]
fn content_type_is_an_ordinary_header() {
    let base: Vec<(&str, &[u8])> = vec![
        ("ce-specversion", b"1.0"),
        ("ce-id", b"1"),
        ("ce-source", b"/s"),
        ("ce-type", b"t"),
    ];
    // Not percent-decoded: only ce- values are encoded.
    let mut headers = base.clone();
    headers.push(("Content-Type", b"text/plain; note=100%25"));
    let ev = CloudEvent::from_http_binary(headers, b"hi").unwrap();
    assert_eq!(
        ev.datacontenttype.as_deref(),
        Some("text/plain; note=100%25")
    );
    // Twice is refused, and an empty one is reported under its own name.
    let mut headers = base.clone();
    headers.push(("content-type", b"text/plain"));
    headers.push(("content-type", b"application/json"));
    let errors = CloudEvent::from_http_binary(headers, b"hi").unwrap_err();
    assert_eq!(
        (errors.0[0].code.as_str(), errors.0[0].location.as_str()),
        ("duplicate-member", "content-type")
    );
    let mut headers = base;
    headers.push(("content-type", b""));
    let errors = CloudEvent::from_http_binary(headers, b"hi").unwrap_err();
    assert_eq!(
        (errors.0[0].code.as_str(), errors.0[0].location.as_str()),
        ("empty-attribute", "content-type")
    );
}
