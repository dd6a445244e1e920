use std::path::PathBuf;

use canon_envelope::{CloudEvent, Dialect, ErrorCode};
use expect_test::expect;
use serde_json::Value;

use crate::render;

/// The seed example files and the dialect each is written in.
const FIXTURES: [(&str, Dialect); 5] = [
    ("coach.json", Dialect::CloudEvents),
    ("bme.json", Dialect::Bme),
    ("go4u.json", Dialect::Go4u),
    ("lifeos.json", Dialect::LifeOs),
    ("todo.json", Dialect::CloudEvents),
];

fn fixtures() -> Vec<(String, Dialect, Vec<Value>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/events");
    FIXTURES
        .iter()
        .map(|(file, dialect)| {
            let text = std::fs::read_to_string(dir.join(file)).unwrap();
            let events: Vec<Value> = serde_json::from_str(&text).unwrap();
            assert!(!events.is_empty(), "{file} holds no events");
            ((*file).to_owned(), *dialect, events)
        })
        .collect()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn every_seed_event_round_trips_through_its_own_dialect() {
    let mut count = 0;
    for (file, dialect, events) in fixtures() {
        for original in events {
            let ev = dialect
                .decode(original.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{file}: {e}\n{original}"));
            let back = json(&dialect.encode(&ev).unwrap());
            assert_eq!(
                back, original,
                "{file}: {dialect} -> canonical -> {dialect} changed the document"
            );
            count += 1;
        }
    }
    assert!(count > 100, "only {count} seed events");
}

#[test]
fn every_seed_event_survives_the_conversion_matrix() {
    for (file, from, events) in fixtures() {
        for original in &events {
            let canonical = from.decode(original.to_string().as_bytes()).unwrap();
            for to in Dialect::ALL {
                let converted = to
                    .encode(&canonical)
                    .unwrap_or_else(|e| panic!("{file}: {from} -> {to}: {e}\n{original}"));
                let decoded = to
                    .decode(&converted)
                    .unwrap_or_else(|e| panic!("{file}: {from} -> {to} does not decode: {e}"));
                // Every canonical attribute survives the trip...
                assert_eq!(decoded.id, canonical.id, "{file}: {from} -> {to}");
                assert_eq!(decoded.ty, canonical.ty);
                assert_eq!(decoded.time, canonical.time);
                assert_eq!(decoded.correlation_id(), canonical.correlation_id());
                assert_eq!(decoded.causation_id(), canonical.causation_id());
                assert_eq!(decoded.actor(), canonical.actor());
                assert_eq!(decoded.data_version(), canonical.data_version());
                assert_eq!(
                    decoded.data.as_ref().map(|d| json(d.as_bytes())),
                    canonical.data.as_ref().map(|d| json(d.as_bytes()))
                );
                // ...and going back gives the original document.
                let back = json(&from.encode(&decoded).unwrap());
                assert_eq!(
                    &back, original,
                    "{file}: {from} -> {to} -> {from} changed the document"
                );
            }
        }
    }
}

#[test]
fn maps_bme_fields_to_their_counterparts() {
    let bme = br#"{"eventId":"550e8400-e29b-41d4-a716-446655440000","type":"money.TransactionCreated","payload":{"id":"tx-uuid"},
        "metadata":{"userId":"user-123","timestamp":"2025-02-24T12:00:00.000Z","correlationId":"req-abc","causationId":"evt-0","version":1}}"#;
    let ev = Dialect::Bme.decode(bme).unwrap();
    expect![[r#"{"specversion":"1.0","id":"550e8400-e29b-41d4-a716-446655440000","source":"urn:canon:bme","type":"money.TransactionCreated","time":"2025-02-24T12:00:00.000Z","actor":"user-123","causationid":"evt-0","correlationid":"req-abc","version":1,"data":{"id":"tx-uuid"}}"#]]
        .assert_eq(&String::from_utf8(ev.to_json()).unwrap());
    expect![[r#"{"event_id":"550e8400-e29b-41d4-a716-446655440000","event_name":"money.TransactionCreated","occurred_at":"2025-02-24T12:00:00.000Z","producer":"urn:canon:bme","payload":{"id":"tx-uuid"},"metadata":{"trace_id":"req-abc","actor_user_id":"user-123","causationid":"evt-0","version":1}}"#]]
        .assert_eq(&String::from_utf8(Dialect::Go4u.encode(&ev).unwrap()).unwrap());
}

#[test]
fn keeps_unknown_members_nulls_and_naive_timestamps_losslessly() {
    let cases: [(Dialect, &str); 3] = [
        (
            Dialect::Bme,
            r#"{"eventId":"e1","type":"a.B","payload":{"x":1},"schemaVersion":2,"metadata":{"timestamp":"2025-02-24T12:00:00","causationId":null,"traceId":"t","tags":["a"],"score":1.5}}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":"e2","event_name":"a.b","occurred_at":"2025-09-25T10:20:30Z","producer":"svc","payload":{},"metadata":{"sequence":42,"ip":"redacted","geo":{"c":"DE"},"trace_id":null},"extra":[1]}"#,
        ),
        (
            Dialect::LifeOs,
            r#"{"event_id":"0b7e5d5c-3a0f-4b0c-9d2e-1f4a5b6c7d8e","event_type":"QuestCompleted","timestamp":"2025-03-01T09:30:00.123456","version":"1.0.0","user_id":123,"metadata":{}}"#,
        ),
    ];
    for (dialect, text) in cases {
        let original: Value = serde_json::from_str(text).unwrap();
        let ev = dialect.decode(text.as_bytes()).unwrap();
        assert_eq!(json(&dialect.encode(&ev).unwrap()), original, "{dialect}");
        for other in Dialect::ALL {
            let via = other.decode(&other.encode(&ev).unwrap()).unwrap();
            assert_eq!(
                json(&dialect.encode(&via).unwrap()),
                original,
                "{dialect} via {other}"
            );
        }
    }
}

#[test]
fn refuses_malformed_dialect_envelopes() {
    let bad = [
        (
            Dialect::Bme,
            r#"{"type":"a.B","payload":{},"metadata":{"timestamp":"not a time"}}"#,
        ),
        (
            Dialect::Bme,
            r#"{"eventId":"e","type":"a.B","metadata":"x"}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":7,"event_name":"a.b","event_version":"1","occurred_at":"2025-09-25T10:20:30Z","producer":"svc","metadata":{"sequence":"x"}}"#,
        ),
        (
            Dialect::LifeOs,
            r#"{"event_id":"not-a-uuid","event_type":"X","timestamp":"2025-03-01T09:30:00Z","version":1}"#,
        ),
    ];
    let out: String = bad
        .iter()
        .map(|(d, text)| format!("{d}:\n{}", render(&d.decode(text.as_bytes()).unwrap_err())))
        .collect();
    expect![[r#"
        bme:
        invalid-timestamp /metadata/timestamp (timestamp must be an ISO 8601 / RFC 3339 date-time, got "not a time")
        missing-attribute /eventId (bme requires member eventId)
        bme:
        invalid-dialect-member /metadata (metadata must be an object, got a string)
        missing-attribute /metadata/timestamp (bme requires member timestamp)
        go4u:
        invalid-dialect-member /event_id (event_id must be a string, got a number)
        lifeos:
        invalid-dialect-member /version (version must be a string, got a number)
    "#]]
    .assert_eq(&out);
}

#[test]
fn says_when_an_event_cannot_be_written_in_a_dialect() {
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAE="}"#,
    )
    .unwrap();
    let errors = Dialect::Bme.encode(&ev).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.code == ErrorCode::Unrepresentable && e.location == "/data"),
        "{errors}"
    );
    assert!(
        errors.iter().any(|e| e.location == "/metadata/timestamp"),
        "{errors}"
    );
    let ev = CloudEvent::from_json(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2025-01-01T00:00:00Z","data":{"event_type":"x"}}"#).unwrap();
    let errors = Dialect::LifeOs.encode(&ev).unwrap_err();
    assert!(
        errors.iter().any(|e| e.location == "/data/event_type"),
        "{errors}"
    );
}

#[test]
fn detects_the_dialect_of_a_document() {
    for (_, dialect, events) in fixtures() {
        assert_eq!(
            Dialect::detect(events[0].to_string().as_bytes()),
            Some(dialect)
        );
    }
    assert_eq!(Dialect::detect(b"{}"), None);
}

#[test]
fn edge_cases_found_in_review_round_trip() {
    // A zero-padded sequence, an explicit null payload, and integer-looking strings.
    let ce = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"2025-01-01T00:00:00Z","sequence":"0001","data":null}"#;
    let ev = CloudEvent::from_json(ce).unwrap();
    for d in [Dialect::Bme, Dialect::Go4u] {
        let via = d.decode(&d.encode(&ev).unwrap()).unwrap();
        assert_eq!(via.sequence(), Some("0001"), "{d}");
        assert_eq!(json(&via.to_json()), json(ce), "{d}");
    }
    // lifeos payloads are top-level fields: a null payload has no place there.
    assert_eq!(
        Dialect::LifeOs.encode(&ev).unwrap_err().0[0].code,
        ErrorCode::Unrepresentable
    );
    let go4u = r#"{"event_id":"e","event_name":"a.b","event_version":"1","occurred_at":"2025-09-25T10:20:30Z","producer":"p","metadata":{"dataversion":"9","sequence":"7"}}"#;
    let ev = Dialect::Go4u.decode(go4u.as_bytes()).unwrap();
    assert_eq!(ev.data_version(), Some("1"));
    assert_eq!(
        json(&Dialect::Go4u.encode(&ev).unwrap()),
        json(go4u.as_bytes())
    );
    // A metadata number under a typed extension's name is kept verbatim, not refused.
    let bme = r#"{"eventId":"e","type":"a.B","metadata":{"timestamp":"2025-01-01T00:00:00Z","sequence":5}}"#;
    let ev = Dialect::Bme.decode(bme.as_bytes()).unwrap();
    assert_eq!(ev.sequence(), None);
    assert_eq!(
        json(&Dialect::Bme.encode(&ev).unwrap()),
        json(bme.as_bytes())
    );
}

#[test]
fn a_negative_zero_and_escaped_member_names_survive_the_round_trip() {
    // Found by the fuzzer: `-0` is not the integer 0 to a JSON reader, and member names with
    // `~` or `/` need JSON-pointer escaping in canonextra.
    let go4u = r#"{"event_id":"e","event_name":"a.b","event_version~":1,"occurred_at":"2025-09-25T10:00:00Z","producer":"p","payload~":{},"metadata":{"zero":-0,"a/b":1}}"#;
    let ev = Dialect::Go4u.decode(go4u.as_bytes()).unwrap();
    assert_eq!(
        json(&Dialect::Go4u.encode(&ev).unwrap()),
        json(go4u.as_bytes())
    );
}

#[test]
fn every_seed_event_takes_the_one_pass_reader_and_gets_the_full_decoders_event() {
    for (file, dialect, events) in fixtures() {
        for original in events {
            let doc = original.to_string();
            let fast = dialect
                .decode_fast(doc.as_bytes())
                .unwrap_or_else(|| panic!("{file}: left the one-pass reader: {doc}"));
            assert_eq!(
                Ok(fast),
                dialect.decode_full(doc.as_bytes()),
                "{file}: {doc}"
            );
        }
    }
}

#[test]
fn the_one_pass_reader_leaves_unusual_documents_to_the_full_decoder() {
    // Each is valid (or nearly) but not in the common form; where the one-pass reader answers
    // at all, it must answer what the full decoder does.
    let cases: &[(Dialect, &str)] = &[
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":null}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","n":-0}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","n":2147483648}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","n":1.0}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","id":"2"}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"\u0031","source":"s","t\u0079pe":"t"}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"aGk="}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":"\ud800"}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","sequence":7}"#,
        ),
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t"} x"#,
        ),
        (
            Dialect::Bme,
            r#"{"eventId":"e","type":"a.B","metadata":{"timestamp":"2025-01-01T00:00:00Z","sequence":5}}"#,
        ),
        (
            Dialect::Bme,
            r#"{"eventId":"e","type":"a.B","metadata":{"timestamp":"2025-01-01T00:00:00","source":"x"}}"#,
        ),
        (
            Dialect::Bme,
            r#"{"eventId":"e","type":"a.B","metadata":{"timestamp":"2025-01-01T00:00:00Z","source":"x","source":"y"}}"#,
        ),
        (
            Dialect::Bme,
            r#"{"eventId":"e","type":"a.B","metadata":{"timestamp":"2025-01-01T00:00:00Z","canonextra":"{}"}}"#,
        ),
        (
            Dialect::Bme,
            r#"{"eventId":"e","type":"a.B","metadata":{}}"#,
        ),
        (
            Dialect::Bme,
            r#"{"eventId":"e","type":"a.B","extra":1,"metadata":{"timestamp":"2025-01-01T00:00:00Z"}}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":"e","event_name":"a.b","event_version":"1","occurred_at":"2025-09-25T10:20:30Z","producer":"p"}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":"e","event_name":"a.b","event_version":"","occurred_at":"2025-09-25T10:20:30Z","producer":"p"}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":"e","event_name":"a.b","event_version":9223372036854775808,"occurred_at":"2025-09-25T10:20:30Z","producer":"p"}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":"e","event_name":"a.b","occurred_at":"2025-09-25T10:20:30Z","producer":"p","metadata":{"dataversion":"9"}}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":"e","event_name":"a.b","occurred_at":"2025-09-25T10:20:30Z","producer":"p","payload":null,"metadata":{"Ip":"x"}}"#,
        ),
        (
            Dialect::LifeOs,
            r#"{"event_id":"e","event_type":"T","timestamp":"2025-03-01T09:30:00","a":1}"#,
        ),
        (
            Dialect::LifeOs,
            r#"{"event_id":"e","event_type":"T","timestamp":"2025-03-01T09:30:00Z","metadata":{"x":1},"a":1,"a":2}"#,
        ),
    ];
    for (dialect, doc) in cases {
        if let Some(fast) = dialect.decode_fast(doc.as_bytes()) {
            assert_eq!(
                Ok(fast),
                dialect.decode_full(doc.as_bytes()),
                "{dialect}: {doc}"
            );
        }
        assert_eq!(
            dialect.decode(doc.as_bytes()),
            dialect.decode_full(doc.as_bytes()),
            "{dialect}: {doc}"
        );
    }
    // The plain forms of the same documents do take the one-pass reader.
    for (dialect, doc) in [
        (
            Dialect::CloudEvents,
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","n":-5,"b":true,"data":null}"#,
        ),
        (
            Dialect::Go4u,
            r#"{"event_id":"e","event_name":"a.b","event_version":2,"occurred_at":"2025-09-25T10:20:30Z","producer":"p","payload":null,"metadata":{"ip":"x"}}"#,
        ),
        (
            Dialect::LifeOs,
            r#"{"event_id":"e","event_type":"T","timestamp":"2025-03-01T09:30:00Z","metadata":{"x":1},"a":1}"#,
        ),
    ] {
        let fast = dialect
            .decode_fast(doc.as_bytes())
            .unwrap_or_else(|| panic!("{doc}"));
        assert_eq!(
            Ok(fast),
            dialect.decode_full(doc.as_bytes()),
            "{dialect}: {doc}"
        );
    }
}
