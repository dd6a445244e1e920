//! Compatibility diffs between catalog revisions.

use canon_catalog::{Catalog, diff};
use expect_test::expect;

pub(crate) fn catalog(payload: &str, version: &str) -> Catalog {
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
fn an_absent_subschema_means_anything() {
    use canon_catalog::compat::{Direction, widening_problems};
    use serde_json::json;
    let old = json!({"type": "array"});
    let new = json!({"type": "array", "items": {"type": "string"}});
    expect![[r#"[Change { breaks: Backward, path: "$[]", description: "any type was accepted, now only string" }]"#]].assert_eq(&format!("{:?}", widening_problems(&old, &new, Direction::Backward)));
    assert!(widening_problems(&new, &old, Direction::Forward).is_empty());
    let open = json!({"type": "object", "properties": {"a": {"type": "string"}}});
    let closed = json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": false});
    expect![[r#"[Change { breaks: Backward, path: "$", description: "undeclared fields are no longer accepted" }]"#]].assert_eq(&format!("{:?}", widening_problems(&open, &closed, Direction::Backward)));
}
