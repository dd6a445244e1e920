//! Idempotency, aggregate and ordering keys.

use canon_catalog::{KeyError, Keys};
use canon_envelope::{CloudEvent, Data};

use crate::diff::catalog;

const BASE: &str = "{order_id: string, placed_at: datetime, total: integer}";

fn event(data: &str) -> CloudEvent {
    let mut ev = CloudEvent::new("1", "s", "order.placed");
    ev.set_extension("partitionkey", "p");
    ev.data = Some(Data::json(data).unwrap());
    ev
}

#[test]
fn computes_every_key_from_the_catalog() {
    let c = catalog(BASE, "1");
    let keys = c
        .keys(&event(
            r#"{"order_id":"o+1","placed_at":"2025-01-01T00:00:00Z","total":3}"#,
        ))
        .unwrap();
    assert_eq!(
        keys,
        Keys {
            idempotency: Some(r#"["order.placed","o+1","2025-01-01T00:00:00Z"]"#.into()),
            aggregate: Some("o+1".into()),
            ordering: Some("o+1".into()),
        }
    );
}

#[test]
fn idempotency_keys_keep_json_types_so_they_never_collide() {
    let c = catalog("{order_id: any, placed_at: any, total: integer}", "1");
    let number = c
        .keys(&event(r#"{"order_id":1,"placed_at":true,"total":3}"#))
        .unwrap();
    let text = c
        .keys(&event(r#"{"order_id":"1","placed_at":"true","total":3}"#))
        .unwrap();
    assert_ne!(number.idempotency, text.idempotency);
    assert_eq!(
        number.idempotency.as_deref(),
        Some(r#"["order.placed",1,true]"#)
    );
}

#[test]
fn an_undeclared_type_orders_by_its_partition_key() {
    let c = catalog(BASE, "1");
    let mut ev = event("{}");
    ev.ty = "not.declared".into();
    assert_eq!(
        c.keys(&ev).unwrap(),
        Keys {
            ordering: Some("p".into()),
            ..Keys::default()
        }
    );
}

#[test]
fn a_missing_key_field_is_an_error() {
    let c = catalog(BASE, "1");
    let err = c.keys(&event(r#"{"order_id":"o"}"#)).unwrap_err();
    assert_eq!(err, KeyError::MissingField("placed_at".into()));
    assert_eq!(
        err.to_string(),
        "key field placed_at is missing from the payload"
    );
}
