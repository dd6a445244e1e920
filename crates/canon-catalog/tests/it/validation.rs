//! Every validation code, on a small catalog built for it.

use canon_catalog::Catalog;
use canon_envelope::{CloudEvent, Data};
use expect_test::expect;

const CATALOG: &str = r#"canon: 1
name: shop
naming: context.Verb
services: {orders: O}
types:
  orders.OrderPlaced:
    summary: s
    producers: [orders]
    personal_data:
      customer: reference
      ip: forbidden
      email: hashed
    versions:
      - version: 1
        schema:
          type: object
          required: [sku, qty]
          properties:
            sku: {type: string, pattern: "^[A-Z]+-[0-9]+$"}
            qty: {type: integer, minimum: 1}
            tags: {type: array, maxItems: 2}
            note: {not: {const: "forbidden"}}
            customer: {type: string}
            ip: {type: ["string", "null"]}
            email: {type: string}
      - version: 2
        payload: {sku: string}
"#;

fn check(data: Option<Data>, ty: &str, version: Option<&str>) -> String {
    let loaded = Catalog::load(CATALOG, "shop.yaml");
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    let catalog = loaded.catalog.unwrap();
    let mut ev = CloudEvent::new("1", "/shop", ty);
    if let Some(v) = version {
        ev.set_extension("dataversion", v);
    }
    ev.data = data;
    catalog
        .validate(&ev)
        .iter()
        .map(|v| format!("{v}\n"))
        .collect()
}

fn json(s: &str) -> Option<Data> {
    Some(Data::json(s).unwrap())
}

#[test]
fn reports_every_kind_of_payload_problem() {
    let out = check(
        json(
            r#"{"sku":"abc","qty":0,"tags":[1,2,3],"note":"forbidden","customer":"ann@example.com","ip":"10.0.0.1","email":"ann@example.com"}"#,
        ),
        "orders.OrderPlaced",
        None,
    );
    expect![[r#"
        payload-constraint [orders.OrderPlaced v1] at /data/note: {"const":"forbidden"} is not allowed for "forbidden"
        payload-range [orders.OrderPlaced v1] at /data/qty: 0 is less than the minimum of 1
        payload-pattern [orders.OrderPlaced v1] at /data/sku: "abc" does not match "^[A-Z]+-[0-9]+$"
        payload-size [orders.OrderPlaced v1] at /data/tags: [1,2,3] has more than 2 items
        pii-raw-value [orders.OrderPlaced v1] at /data/customer: customer must hold a reference id, but holds what looks like a raw email or phone number
        pii-not-hashed [orders.OrderPlaced v1] at /data/email: email must hold a hash such as sha256:<hex>, not a raw value
        pii-forbidden [orders.OrderPlaced v1] at /data/ip: ip is personal data the catalog forbids in this event
    "#]].assert_eq(&out);
}

#[test]
fn a_null_forbidden_field_and_a_numeric_reference_are_fine() {
    assert_eq!(
        check(
            json(r#"{"sku":"A-1","qty":1,"customer":"4711000123","ip":null}"#),
            "orders.OrderPlaced",
            None
        ),
        ""
    );
}

#[test]
fn versions_come_from_dataversion_or_a_type_suffix() {
    // Version 2 has no `qty`; version 3 does not exist.
    assert_eq!(
        check(json(r#"{"sku":"A-1"}"#), "orders.OrderPlaced", Some("2")),
        ""
    );
    assert_eq!(
        check(json(r#"{"sku":"A-1"}"#), "orders.OrderPlaced.v2", None),
        ""
    );
    expect![[r#"
        unknown-version [orders.OrderPlaced v3] at /dataversion: orders.OrderPlaced has no version 3; declared: 1, 2
    "#]].assert_eq(&check(json(r#"{"sku":"A-1"}"#), "orders.OrderPlaced", Some("3")));
    expect![[r#"
        unknown-type [orders.orderplaced] at /type: type orders.orderplaced is not declared in catalog shop; did you mean orders.OrderPlaced?
    "#]].assert_eq(&check(json("{}"), "orders.orderplaced", None));
}

#[test]
fn payload_must_be_present_and_json() {
    expect![[r#"
        payload-missing [orders.OrderPlaced v1] at /data: orders.OrderPlaced requires a payload
    "#]]
    .assert_eq(&check(None, "orders.OrderPlaced", None));
    expect![[r#"
        payload-not-json [orders.OrderPlaced v1] at /data: orders.OrderPlaced payloads are JSON; this event's data is not
    "#]].assert_eq(&check(Some(Data::Binary(vec![1, 2])), "orders.OrderPlaced", None));
}
