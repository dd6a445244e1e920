//! Compatibility diffs between catalog revisions, and key computation.

use canon_catalog::{Catalog, diff};
use canon_envelope::CloudEvent;
use expect_test::expect;

fn catalog(payload: &str, version: &str) -> Catalog {
    let text = format!(
        "canon: 1\nname: shop\nservices: {{orders: O}}\ntypes:\n  order.placed:\n    summary: s\n    producers: [orders]\n    aggregate: order_id\n    idempotency: order_id+placed_at\n    version: {version}\n    payload: {payload}\n  order.gone:\n    summary: s\n    producers: [orders]\n    payload: {{id: string}}\n"
    );
    let loaded = Catalog::load(&text, "shop.yaml");
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    loaded.catalog.unwrap()
}

fn render(old: &Catalog, new: &Catalog) -> String {
    let d = diff(old, new);
    d.types
        .iter()
        .map(|t| {
            let mut s = format!("{} {:?} {:?}\n", t.name, t.change, t.compatibility);
            for c in &t.breaking {
                s.push_str(&format!("  breaking {c}\n"));
            }
            for e in &t.errors {
                s.push_str(&format!("  error {} {}\n", e.code, e.message));
            }
            s
        })
        .collect()
}

const BASE: &str = "{order_id: string, placed_at: datetime, total: integer}";

#[test]
fn adding_an_optional_field_is_backward_compatible() {
    let out = render(
        &catalog(BASE, "1"),
        &catalog(
            "{order_id: string, placed_at: datetime, total: integer, note?: string}",
            "1",
        ),
    );
    expect![[r#"
        order.gone Unchanged Some("full")
        order.placed Changed Some("backward")
          breaking note: field is no longer allowed (breaks forward)
    "#]]
    .assert_eq(&out);
}

#[test]
fn a_breaking_change_needs_a_version_bump() {
    let old = catalog(BASE, "1");
    let out = render(
        &old,
        &catalog(
            "{order_id: string, placed_at: datetime, total: number, currency: string}",
            "1",
        ),
    );
    expect![[r#"
        order.gone Unchanged Some("full")
        order.placed Changed Some("none")
          breaking currency: is a new required field (breaks backward)
          breaking total: type number is no longer accepted (now integer) (breaks forward)
          breaking currency: field is no longer allowed (breaks forward)
          error breaking-change-without-version-bump order.placed 1 changed incompatibly without a new version: currency: is a new required field (breaks backward)
    "#]]
    .assert_eq(&out);
    // The same change under a new major is fine, but dropping version 1 is reported.
    let out = render(
        &old,
        &catalog(
            "{order_id: string, placed_at: datetime, total: number, currency: string}",
            "2",
        ),
    );
    expect![[r#"
        order.gone Unchanged Some("full")
        order.placed Changed Some("none")
          breaking currency: is a new required field (breaks backward)
          breaking total: type number is no longer accepted (now integer) (breaks forward)
          breaking currency: field is no longer allowed (breaks forward)
          error version-removed order.placed 1 was removed; producers still on it would be refused
    "#]]
    .assert_eq(&out);
}

#[test]
fn removing_an_undeprecated_type_is_an_error() {
    let old = catalog(BASE, "1");
    let mut new = catalog(BASE, "1");
    new.types.remove("order.gone");
    let d = diff(&old, &new);
    assert_eq!(d.types[0].errors[0].code, "type-removed");
    assert!(d.has_errors());
}

#[test]
fn computes_idempotency_aggregate_and_ordering_keys() {
    let c = catalog(BASE, "1");
    let ev = CloudEvent::from_json(
        br#"{"specversion":"1.0","id":"1","source":"s","type":"order.placed","partitionkey":"p","data":{"order_id":"o+1","placed_at":"2025-01-01T00:00:00Z","total":3}}"#,
    )
    .unwrap();
    assert_eq!(
        c.idempotency_key(&ev).unwrap().as_deref(),
        Some(r#"["order.placed","o+1","2025-01-01T00:00:00Z"]"#)
    );
    assert_eq!(c.aggregate_key(&ev).unwrap().as_deref(), Some("o+1"));
    assert_eq!(c.ordering_key(&ev).unwrap().as_deref(), Some("o+1"));
    let mut other = ev.clone();
    other.ty = "not.declared".into();
    assert_eq!(c.ordering_key(&other).unwrap().as_deref(), Some("p"));
    let mut missing = ev;
    missing.data = Some(canon_envelope::Data::json(r#"{"order_id":"o"}"#).unwrap());
    assert_eq!(
        c.idempotency_key(&missing).unwrap_err().to_string(),
        "key field placed_at is missing from the payload"
    );
}
