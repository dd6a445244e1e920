//! The one-pass payload check: it covers the shipped catalogs, and what it accepts the full
//! validator accepts.

use canon_catalog::Catalog;
use canon_envelope::{CloudEvent, Data};

use crate::examples::{EXAMPLES, events};
use crate::load_example;

#[test]
fn every_seed_payload_takes_the_one_pass_check() {
    for name in EXAMPLES {
        let catalog = load_example(name);
        for ty in catalog.types.values() {
            for pv in &ty.versions {
                assert!(
                    pv.fast_check("{}").is_some(),
                    "{name}: {} {} has no one-pass check",
                    ty.name,
                    pv.version
                );
            }
        }
        for doc in events(name) {
            let ev = catalog.dialect.decode(doc.to_string().as_bytes()).unwrap();
            let (ty, _) = catalog.lookup(&ev.ty).unwrap();
            let pv = ty.version(ev.data_version()).unwrap();
            let Some(Data::Json(payload)) = &ev.data else {
                panic!("{name}: {doc}");
            };
            assert_eq!(pv.fast_check(payload.get()), Some(true), "{name}: {doc}");
        }
    }
}

const CATALOG: &str = r#"canon: 1
name: shop
naming: context.Verb
services: {orders: O}
types:
  orders.OrderPlaced:
    summary: s
    producers: [orders]
    personal_data:
      customer.email: hashed
      customer.ref: reference
      ip: forbidden
    payload:
      sku: string
      qty: integer
      price?: number
      at: datetime
      id?: uuid
      state: enum(open, closed) | null
      note?: any | null
      tags?: string[]
      customer?:
        email?: hash
        ref?: string
      ip?: string | null
      scores?: { $json: { type: object, additionalProperties: { type: number, minimum: 0 } } }
      lines?: { $json: { type: array, minItems: 1, maxItems: 2, items: { type: object, required: [n], properties: { n: { type: integer, maximum: 9 } } } } }
      name?: { $json: { type: string, minLength: 2, maxLength: 3 } }
      kind?: { $json: { const: 7 } }
      open?: { $json: { type: object, required: [x] } }
  orders.Tagged:
    summary: s
    producers: [orders]
    schema:
      type: object
      properties:
        tags: {type: array, uniqueItems: true}
"#;

/// Every payload below against the catalog: the one-pass check's answer, and the full
/// validator's violations, which must be none whenever the check says valid.
fn judge(payload: &str) -> (Option<bool>, usize) {
    let catalog = Catalog::load(CATALOG, "shop.yaml").catalog.unwrap();
    let ty = &catalog.types["orders.OrderPlaced"];
    let fast = ty.versions[0].fast_check(payload);
    let mut ev = CloudEvent::new("1", "/shop", "orders.OrderPlaced");
    ev.data = Some(Data::json(payload).unwrap());
    let full = catalog.validate_full(&ev).len();
    assert_eq!(catalog.validate(&ev).len(), full, "{payload}");
    if fast == Some(true) {
        assert_eq!(
            full, 0,
            "the one-pass check accepted an invalid payload: {payload}"
        );
    }
    (fast, full)
}

const BASE: &str = r#""sku":"A-1","qty":2,"at":"2025-01-01T00:00:00Z","state":"open""#;

#[test]
fn the_one_pass_check_accepts_valid_payloads_of_every_keyword() {
    for extra in [
        "",
        r#","state":null"#,
        r#","price":1.5,"id":"0e51f30d-c6a7-4e39-84b0-32ccd7c524a5""#,
        r#","note":null"#,
        r#","note":{"any":[1,"x",null]}"#,
        r#","tags":[],"customer":{"email":"sha256:ab12","ref":"c-17"}"#,
        r#","ip":null"#,
        r#","scores":{"a":1,"b":2.5}"#,
        r#","lines":[{"n":1},{"n":9,"more":true}]"#,
        r#","name":"éé""#,
        r#","kind":7"#,
        r#","kind":7.0"#,
        r#","open":{"x":null,"y":[]}"#,
        r#","sku":"\u0041-1""#,
    ] {
        let payload = format!("{{{BASE}{extra}}}");
        assert_eq!(judge(&payload), (Some(true), 0), "{payload}");
    }
    // A member name with an escape is left to the full validator, which accepts it.
    let payload = r#"{"s\u006bu":"A-1","qty":2,"at":"2025-01-01T00:00:00Z","state":"open"}"#;
    assert_eq!(judge(payload), (Some(false), 0));
    // A whole number written with a fraction is an integer to JSON Schema; jsonschema says so.
    let payload = r#"{"sku":"A-1","qty":2.0,"at":"2025-01-01T00:00:00Z","state":"open"}"#;
    assert_eq!(judge(payload), (Some(true), 0));
}

#[test]
fn the_one_pass_check_leaves_invalid_payloads_to_the_full_validator() {
    for extra in [
        r#","qty":"2""#,
        r#","qty":2.5"#,
        r#","at":"yesterday""#,
        r#","state":"shut""#,
        r#","price":"1""#,
        r#","id":"not-a-uuid""#,
        r#","tags":[1]"#,
        r#","customer":{"email":"ann@example.com"}"#,
        r#","customer":{"ref":"ann@example.com"}"#,
        r#","customer":{"other":1}"#,
        r#","ip":"10.0.0.1""#,
        r#","scores":{"a":-1}"#,
        r#","lines":[]"#,
        r#","lines":[{"n":1},{"n":2},{"n":3}]"#,
        r#","lines":[{"n":10}]"#,
        r#","lines":[{}]"#,
        r#","name":"é""#,
        r#","name":"abcd""#,
        r#","kind":8"#,
        r#","open":{}"#,
        r#","unknown":1"#,
    ] {
        let payload = format!("{{{BASE}{extra}}}");
        let (fast, full) = judge(&payload);
        assert_eq!(fast, Some(false), "{payload}");
        assert!(full > 0, "{payload}");
    }
    // Required fields missing, and a payload that is not an object.
    for payload in [r#"{"sku":"A-1"}"#, "[]", "null", r#""x""#] {
        let (fast, full) = judge(payload);
        assert_eq!(fast, Some(false), "{payload}");
        assert!(full > 0, "{payload}");
    }
}

#[test]
fn a_schema_outside_the_subset_is_checked_in_full_only() {
    let catalog = Catalog::load(CATALOG, "shop.yaml").catalog.unwrap();
    let ty = &catalog.types["orders.Tagged"];
    assert_eq!(ty.versions[0].fast_check(r#"{"tags":[1]}"#), None);
    let mut ev = CloudEvent::new("1", "/shop", "orders.Tagged");
    ev.data = Some(Data::json(r#"{"tags":[1,1]}"#).unwrap());
    assert_eq!(catalog.validate(&ev)[0].code, "payload-constraint");
}
