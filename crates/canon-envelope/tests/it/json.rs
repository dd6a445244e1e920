use canon_envelope::{CloudEvent, Data, ExtValue};
use expect_test::{Expect, expect};

use crate::render;

fn check_invalid(input: &str, expect: Expect) {
    let errors = CloudEvent::from_json(input.as_bytes()).expect_err("event must be refused");
    expect.assert_eq(&render(&errors));
}

const VALID: &str = r#"{"specversion":"1.0","id":"ord-771","source":"/shop/eu","type":"com.example.order.created",
 "time":"2024-05-01T10:00:00Z","datacontenttype":"application/json","tenant":"acme","retries":2,
 "data":{"sku":"A-1","qty":3}}"#;

#[test]
fn decodes_the_digest_example_with_typed_extensions() {
    let ev = CloudEvent::from_json(VALID.as_bytes()).unwrap();
    assert_eq!(ev.id, "ord-771");
    assert_eq!(ev.extensions["tenant"], ExtValue::String("acme".into()));
    assert_eq!(ev.extensions["retries"], ExtValue::Integer(2));
    // The payload is kept byte for byte.
    assert_eq!(
        ev.data.as_ref().unwrap().as_bytes(),
        br#"{"sku":"A-1","qty":3}"#
    );
    let again = CloudEvent::from_json(&ev.to_json()).unwrap();
    assert_eq!(again, ev);
}

#[test]
fn keeps_a_json_string_payload_as_a_string() {
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":"{\"a\":1}"}"#,
    )
    .unwrap();
    assert_eq!(ev.data.unwrap().as_bytes(), br#""{\"a\":1}""#);
}

#[test]
fn reads_text_and_binary_payloads() {
    let ev = CloudEvent::from_json(br#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/xml","data":"<a/>"}"#).unwrap();
    assert_eq!(ev.data, Some(Data::Text("<a/>".into())));
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AAEC"}"#,
    )
    .unwrap();
    assert_eq!(ev.data, Some(Data::Binary(vec![0, 1, 2])));
    assert!(
        String::from_utf8(ev.to_json())
            .unwrap()
            .contains(r#""data_base64":"AAEC""#)
    );
}

#[test]
fn explicit_null_data_differs_from_no_data() {
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":null}"#,
    )
    .unwrap();
    assert_eq!(ev.data.unwrap().as_bytes(), b"null");
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":null}"#,
    )
    .unwrap();
    assert_eq!(ev.data, None);
    assert_eq!(ev.subject, None);
}

#[test]
fn refuses_malformed_json_with_a_location() {
    check_invalid(
        "{\"specversion\":\"1.0\",\n\"id\":}",
        expect![[r#"
        invalid-json line 2, column 6 (expected value)
    "#]],
    );
    check_invalid(
        "[1]",
        expect![[r#"
        not-an-object  (an event must be a JSON object)
    "#]],
    );
}

#[test]
fn refuses_missing_and_mistyped_required_attributes() {
    check_invalid(
        r#"{"specversion":"1.0","id":"","source":null,"type":7}"#,
        expect![[r#"
        invalid-attribute-type /type (type must be a string, got a number)
        missing-attribute /source (required attribute source is missing)
        empty-attribute /id (id must not be empty)
    "#]],
    );
    check_invalid(
        r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
        expect![[r#"
        unsupported-specversion /specversion (specversion must be "1.0", got "0.3")
    "#]],
    );
    check_invalid(
        r#"{"id":"1","source":"s","type":"t"}"#,
        expect![[r#"
        missing-attribute /specversion (required attribute specversion is missing)
    "#]],
    );
}

#[test]
fn refuses_bad_optional_attributes() {
    check_invalid(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"","dataschema":"not a uri","time":"yesterday","datacontenttype":5}"#,
        expect![[r#"
            invalid-attribute-type /datacontenttype (datacontenttype must be a string, got a number)
            invalid-uri /dataschema (dataschema must be an absolute URI)
            empty-attribute /subject (subject must not be empty)
            invalid-timestamp /time (time must be an RFC 3339 timestamp such as 2024-05-01T10:00:00Z, got "yesterday")
        "#]],
    );
}

#[test]
fn refuses_bad_extension_names_and_values() {
    check_invalid(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","Tenant":"a","my_ext":1,"obj":{},"frac":1.5,"big":3000000000,"ctl":"a\u0001b"}"#,
        expect![[r#"
            invalid-attribute-name /Tenant (attribute name "Tenant" must match [a-z0-9]+)
            invalid-attribute-name /my_ext (attribute name "my_ext" must match [a-z0-9]+)
            invalid-attribute-type /obj (obj must be a string, boolean or integer, got an object)
            integer-out-of-range /frac (frac must be a whole number within the signed 32-bit range)
            integer-out-of-range /big (big is outside the signed 32-bit integer range)
            invalid-string /ctl (ctl holds a control character or noncharacter)
        "#]],
    );
}

#[test]
fn refuses_conflicting_or_broken_data() {
    check_invalid(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{},"data_base64":"AA=="}"#,
        expect![[r#"
        data-conflict /data_base64 (data and data_base64 must not both be present)
    "#]],
    );
    check_invalid(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"%%%"}"#,
        expect![[r#"
        invalid-base64 /data_base64 (data_base64 is not valid base64: Invalid symbol 37, offset 0.)
    "#]],
    );
}

#[test]
fn refuses_duplicate_members_and_bad_canon_extensions() {
    check_invalid(
        r#"{"specversion":"1.0","id":"1","id":"2","source":"s","type":"t","traceparent":"00-00000000000000000000000000000000-00f067aa0ba902b7-01","partitionkey":"","expiration":"soon"}"#,
        expect![[r#"
            duplicate-member /id (member "id" appears more than once)
            invalid-timestamp /expiration (expiration must be an RFC 3339 timestamp such as 2024-05-01T10:00:00Z, got "soon")
            empty-attribute /partitionkey (partitionkey must not be empty)
            invalid-traceparent /traceparent (traceparent must be `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case, ids not all zero)
        "#]],
    );
}

#[test]
fn gives_typed_access_to_seed_extensions() {
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"t","correlationid":"req-1","causationid":"e-0","sequence":"0042",
            "partitionkey":"tsk_1","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"congo=t61rcWkgMzE",
            "expiration":"2030-01-01T00:00:00Z","dataversion":"2","actor":"usr_1"}"#,
    )
    .unwrap();
    assert_eq!(ev.correlation_id(), Some("req-1"));
    assert_eq!(ev.causation_id(), Some("e-0"));
    assert_eq!(ev.sequence(), Some("0042"));
    assert_eq!(ev.partition_key(), Some("tsk_1"));
    assert_eq!(
        ev.traceparent().unwrap().trace_id,
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(ev.tracestate(), Some("congo=t61rcWkgMzE"));
    assert_eq!(ev.expiration_time().unwrap().year(), 2030);
    assert_eq!(ev.data_version(), Some("2"));
    assert_eq!(ev.actor(), Some("usr_1"));
}

#[test]
fn batch_is_all_or_nothing_and_names_the_index() {
    let ok = CloudEvent::batch_from_json(format!("[{VALID},{VALID}]").as_bytes()).unwrap();
    assert_eq!(ok.len(), 2);
    assert!(CloudEvent::batch_from_json(b"[]").unwrap().is_empty());
    let errors = CloudEvent::batch_from_json(
        format!(r#"[{VALID},{{"specversion":"1.0","id":"1","source":"s"}}]"#).as_bytes(),
    )
    .unwrap_err();
    expect![[r#"
        missing-attribute /1/type (required attribute type is missing)
    "#]]
    .assert_eq(&render(&errors));
    let errors = CloudEvent::batch_from_json(VALID.as_bytes()).unwrap_err();
    assert_eq!(errors.0[0].code.as_str(), "not-an-array");
    let round = CloudEvent::batch_from_json(&CloudEvent::batch_to_json(&ok)).unwrap();
    assert_eq!(round, ok);
}

#[test]
fn tracestate_follows_the_w3c_grammar() {
    use canon_envelope::rules::is_valid_tracestate;
    assert!(is_valid_tracestate(
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    ));
    assert!(is_valid_tracestate("fw529a3039@dt=00f067aa0ba902b7, ,"));
    assert!(!is_valid_tracestate("_x=1"), "a key starts with a letter");
    assert!(!is_valid_tracestate("a@b@c=1"), "one @ at most");
    assert!(!is_valid_tracestate("a=1,a=2"), "keys are unique");
    assert!(!is_valid_tracestate("a=1=2"));
}

#[test]
fn refuses_payloads_with_lone_surrogates() {
    use canon_envelope::rules::has_invalid_unicode_escape;
    assert!(!has_invalid_unicode_escape(
        r#"{"a":"\ud83d\ude00 \\u0041 \u00e9"}"#
    ));
    assert!(has_invalid_unicode_escape(r#"{"a":"\udaaa"}"#));
    assert!(has_invalid_unicode_escape(r#"{"a":"\ude00"}"#));
    assert!(has_invalid_unicode_escape(r#"{"a":"\ud83dx"}"#));
    check_invalid(
        r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":"\udaaa"}}"#,
        expect![[r#"
        invalid-json  (the document holds a \u escape that is not valid Unicode (a lone surrogate))
    "#]],
    );
    // A hand-built event is checked by validate().
    let mut ev = CloudEvent::new("1", "s", "t");
    ev.data = Some(Data::json(r#"{"a":"\udaaa"}"#).unwrap());
    expect![[r#"
        invalid-data /data (the payload holds a \u escape that is not valid Unicode (a lone surrogate))
    "#]].assert_eq(&render(&ev.validate().unwrap_err()));
}

#[test]
fn invalid_utf8_is_refused_with_its_place_in_one_event_and_in_a_batch() {
    // Valid UTF-8 is checked once for the whole document; bytes that are not UTF-8 are
    // reported where they are, in a member's value and in a batch member.
    let member = r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":""#;
    let one = [member.as_bytes(), b"x\xff\"}"].concat();
    let batch = [b"[", member.as_bytes(), b"\xc3\x28\"}]"].concat();
    let refused = [
        CloudEvent::from_json(&one).map(|_| ()),
        CloudEvent::batch_from_json(&batch).map(|_| ()),
    ]
    .map(|r| render(&r.expect_err("invalid UTF-8 must be refused")));
    expect![[r#"
        [
            "invalid-json line 1, column 67 (invalid unicode code point)\n",
            "invalid-json line 1, column 67 (invalid unicode code point)\n",
        ]
    "#]]
    .assert_debug_eq(&refused);
}
