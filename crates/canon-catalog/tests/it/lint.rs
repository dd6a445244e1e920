//! One broken catalog per lint rule, with its diagnostics snapshotted.

use canon_catalog::Catalog;
use expect_test::{Expect, expect};

use crate::render;

const HEAD: &str = "canon: 1\nname: shop\nnaming: area.action.state\nservices:\n  orders: Takes orders.\n  billing: Bills.\n";

fn check(body: &str, expect: Expect) {
    let text = format!("{HEAD}{body}");
    let loaded = Catalog::load(&text, "shop.yaml");
    expect.assert_eq(&render(&loaded));
}

const GOOD_TYPE: &str = "types:\n  order.placed:\n    summary: An order was placed.\n    producers: [orders]\n    consumers: [billing]\n    aggregate: order_id\n    payload:\n      order_id: string\n";

#[test]
fn a_clean_catalog_has_no_diagnostics() {
    check(GOOD_TYPE, expect![[""]]);
}

#[test]
fn yaml_problems_have_positions() {
    check(
        "types: [unclosed\n",
        expect![[r#"
        shop.yaml:8:1: error[yaml-syntax]: while parsing a flow sequence, expected ',' or ']'
          hint: fix the YAML at this position; catalogs use plain YAML without anchors, aliases or duplicate keys
    "#]],
    );
    check(
        &format!("{GOOD_TYPE}  order.placed:\n    summary: again\n"),
        expect![[r#"
        shop.yaml:15:3: error[duplicate-key]: key "order.placed" appears twice in this mapping
          hint: fix the YAML at this position; catalogs use plain YAML without anchors, aliases or duplicate keys
    "#]],
    );
    check(
        "x: &a 1\n",
        expect![[r#"
        shop.yaml:7:4: error[unsupported-yaml]: anchors are not supported in catalogs
          hint: fix the YAML at this position; catalogs use plain YAML without anchors, aliases or duplicate keys
    "#]],
    );
}

#[test]
fn unknown_and_missing_keys() {
    check(
        &GOOD_TYPE.replace("    aggregate:", "    agregate:"),
        expect![[r#"
        shop.yaml:12:5: error[unknown-key]: unknown field `agregate`, expected one of `summary`, `producers`, `consumers`, `topic`, `aggregate`, `idempotency`, `personal_data`, `consent`, `handlers`, `deprecated`, `version`, `payload`, `schema`, `versions`
          hint: remove the key or fix its spelling; docs/catalog-format.md lists every key
    "#]],
    );
    check(
        &GOOD_TYPE.replace("    summary: An order was placed.\n", ""),
        expect![[r#"
        shop.yaml:8:3: error[missing-key]: missing field `summary`
          hint: add the key; docs/catalog-format.md says what it holds
    "#]],
    );
}

#[test]
fn naming_convention() {
    check(
        &GOOD_TYPE.replace("order.placed", "OrderPlaced"),
        expect![[r#"
        shop.yaml:8:3: error[naming-convention]: type name OrderPlaced does not follow the catalog's convention, area.action.state (2 to 4 lower snake_case segments, e.g. task.deal.confirmed)
          hint: rename the type, or change `naming` if the convention is wrong
    "#]],
    );
}

#[test]
fn unknown_services_and_unused_ones() {
    check(
        &GOOD_TYPE.replace("consumers: [billing]", "consumers: [shipping]"),
        expect![[r#"
        shop.yaml:6:3: warning[unused-service]: service billing neither produces nor consumes any type
          hint: remove it, or name it as a producer or consumer
        shop.yaml:11:17: error[unknown-service]: order.placed names "consumers" service shipping, which is not declared
          hint: add it under `services:` with a one-line description, or fix the name
    "#]],
    );
}

#[test]
fn key_paths_must_exist_and_be_required() {
    check(
        &GOOD_TYPE
            .replace(
                "aggregate: order_id",
                "aggregate: customer_id\n    idempotency: order_id+note",
            )
            .replace("order_id: string", "order_id: string\n      note?: string"),
        expect![[r#"
        shop.yaml:12:5: error[key-path-missing]: aggregate key customer_id of order.placed is not a field of the payload (version 1)
          hint: name a field the payload declares, as a dot-separated path
        shop.yaml:13:5: error[key-path-optional]: idempotency key field note of order.placed is optional in version 1; every event needs it
          hint: make the field required, or key on a required one
    "#]],
    );
}

#[test]
fn invalid_json_schema_and_shorthand() {
    check(&GOOD_TYPE.replace("    payload:\n      order_id: string\n", "    schema:\n      type: object\n      required: order_id\n      properties:\n        order_id: {type: string}\n"), expect![[r#"
        shop.yaml:12:5: error[key-path-optional]: aggregate key order_id of order.placed is optional in version 1; every event needs it
          hint: make the field required, or key on a required one
        shop.yaml:13:5: error[invalid-schema]: the payload schema of order.placed 1 is not valid JSON Schema 2020-12: "order_id" is not of type "array" (at /required)
          hint: fix the schema; `canon catalog show FILE TYPE` prints the expanded form
    "#]]);
    check(
        &GOOD_TYPE.replace("order_id: string", "order_id: strang"),
        expect![[r#"
        shop.yaml:14:7: error[invalid-shorthand]: unknown type `strang`; expected string, integer, number, boolean, object, any, datetime, date, uuid, uri, email, hash, enum(...), T[] or T | null
          hint: see the shorthand table in docs/catalog-format.md, or use `schema:` with JSON Schema
    "#]],
    );
}

#[test]
fn duplicate_version_and_missing_bump() {
    let versions = "    versions:\n      - version: 1\n        payload: {order_id: string}\n      - version: 1\n        payload: {order_id: string}\n";
    check(
        &GOOD_TYPE.replace("    payload:\n      order_id: string\n", versions),
        expect![[r#"
        shop.yaml:16:9: error[duplicate-version]: order.placed declares version 1 twice
          hint: give each version its own number
    "#]],
    );
    let versions = "    versions:\n      - version: 1.0\n        payload: {order_id: string}\n      - version: 1.1\n        payload: {order_id: string, total: integer}\n";
    check(
        &GOOD_TYPE.replace("    payload:\n      order_id: string\n", versions),
        expect![[r#"
        shop.yaml:16:9: error[version-bump-missing]: order.placed 1.1 breaks Backward compatibility with 1.0 but keeps major 1: total: is a new required field (breaks backward)
          hint: a breaking change needs a new major version (or a new type name)
    "#]],
    );
}

#[test]
fn personal_data_must_be_declared() {
    check(
        &GOOD_TYPE.replace(
            "order_id: string",
            "order_id: string\n      customer_email: string\n      ip: string",
        ),
        expect![[r#"
        shop.yaml:15:7: error[undeclared-personal-data]: order.placed field customer_email looks like personal data but is not declared under personal_data
          hint: declare it, e.g. `personal_data: { customer_email: hashed }` (forbidden, hashed, reference or allowed)
        shop.yaml:16:7: error[undeclared-personal-data]: order.placed field ip looks like personal data but is not declared under personal_data
          hint: declare it, e.g. `personal_data: { ip: hashed }` (forbidden, hashed, reference or allowed)
    "#]],
    );
}

#[test]
fn handler_rules_name_declared_types_without_conflict() {
    check(
        &format!(
            "{GOOD_TYPE}    handlers:\n      may_emit: [order.placed, order.shipped]\n      must_not_emit: [order.placed]\n"
        ),
        expect![[r#"
        shop.yaml:16:32: error[unknown-event-type]: handlers of order.placed name order.shipped, which this catalog does not declare
          hint: declare the type, or fix the name
        shop.yaml:17:23: error[handler-rule-conflict]: handlers of order.placed both may and must not emit order.placed
          hint: remove it from one of the two lists
    "#]],
    );
}

#[test]
fn topics_list_declared_types_once() {
    check(
        &format!(
            "topics:\n  a: {{types: [order.placed, order.lost]}}\n  b: {{types: [order.placed]}}\n{GOOD_TYPE}"
        ),
        expect![[r#"
        shop.yaml:8:29: error[unknown-event-type]: topic a lists order.lost, which this catalog does not declare
          hint: declare the type under `types:` or fix the name
        shop.yaml:9:15: error[topic-conflict]: order.placed is placed on both a and b
          hint: a type travels on one topic; remove it from one list
    "#]],
    );
}

#[test]
fn versioned_names_match_their_version() {
    let text = "canon: 1\nname: todo\nnaming: reverse-dns-versioned\nnaming_prefix: com.todo\nservices: {api: API}\ntypes:\n  com.todo.task.created.v1:\n    summary: s\n    producers: [api]\n    version: 2\n    payload: {id: string}\n";
    expect![[r#"
        todo.yaml:7:3: error[version-suffix-mismatch]: com.todo.task.created.v1 ends in v1 but declares version 2
          hint: with versioned names a new major is a new type: declare it as its own type
    "#]]
    .assert_eq(&render(&Catalog::load(text, "todo.yaml")));
}

#[test]
fn structural_problems() {
    check(
        &GOOD_TYPE.replace(
            "    payload:\n      order_id: string\n",
            "    version: 1\n    versions: []\n",
        ),
        expect![[r#"
        shop.yaml:8:3: error[versions-and-schema]: type order.placed has both `versions` and a top-level version/payload/schema
          hint: keep one: `versions:` for several versions, or `version` with `payload`/`schema`
        shop.yaml:14:5: error[missing-schema]: order.placed lists no versions
          hint: add at least one `- version: 1` with a `payload` or `schema`
    "#]],
    );
    check(
        &GOOD_TYPE.replace(
            "    payload:\n      order_id: string\n",
            "    versions: []\n",
        ),
        expect![[r#"
        shop.yaml:13:5: error[missing-schema]: order.placed lists no versions
          hint: add at least one `- version: 1` with a `payload` or `schema`
    "#]],
    );
    check(
        &format!("{GOOD_TYPE}    schema: {{type: object}}\n"),
        expect![[r#"
        shop.yaml:8:3: error[schema-and-payload]: order.placed has both `payload` and `schema`
          hint: keep one: `payload` (shorthand) or `schema` (JSON Schema)
    "#]],
    );
    check(
        &GOOD_TYPE.replace("    payload:\n      order_id: string\n", ""),
        expect![[r#"
        shop.yaml:8:3: error[missing-schema]: order.placed declares no payload
          hint: add `payload:` in shorthand or `schema:` with JSON Schema
    "#]],
    );
    check(
        &format!("{GOOD_TYPE}    version: one\n"),
        expect![[r#"
        shop.yaml:15:5: error[invalid-version]: version "one" of order.placed is not MAJOR[.MINOR[.PATCH]]
          hint: write e.g. 1, 1.2 or "1.0.0"
    "#]],
    );
    check(
        &GOOD_TYPE.replace("consumers: [billing]", "consumers: billing"),
        expect![[r#"
        shop.yaml:11:5: error[invalid-value]: invalid type: string "billing", expected a sequence
          hint: docs/catalog-format.md says what this key holds
    "#]],
    );
    let text = format!("{HEAD}{GOOD_TYPE}").replace("canon: 1", "canon: 2");
    expect![[r#"
        shop.yaml:1:1: error[unsupported-format-version]: catalog format version 2 is not supported
          hint: use `canon: 1`
    "#]]
    .assert_eq(&render(&Catalog::load(&text, "shop.yaml")));
    expect![[r#"
        two.yaml:2:1: error[unsupported-yaml]: a catalog is one YAML document; found several
          hint: fix the YAML at this position; catalogs use plain YAML without anchors, aliases or duplicate keys
    "#]].assert_eq(&render(&Catalog::load("canon: 1\n---\ncanon: 1\n", "two.yaml")));
}

#[test]
fn lint_rules_without_a_test_elsewhere() {
    check(
        &GOOD_TYPE
            .replace(
                "producers: [orders]",
                "producers: []\n    consumers: [orders]",
            )
            .replace("    consumers: [billing]\n", ""),
        expect![[r#"
        shop.yaml:6:3: warning[unused-service]: service billing neither produces nor consumes any type
          hint: remove it, or name it as a producer or consumer
        shop.yaml:10:5: error[missing-producer]: order.placed names no producer
          hint: name the service that publishes it; only declared producers may publish
    "#]],
    );
    check(
        &GOOD_TYPE
            .replace("aggregate: order_id", "aggregate: items")
            .replace(
                "order_id: string",
                "order_id: string\n      items: string[]",
            ),
        expect![[r#"
        shop.yaml:12:5: error[key-path-not-scalar]: aggregate key items of order.placed is an array; keys are built from scalar fields
          hint: key on a string, number or boolean field
    "#]],
    );
    check(
        &format!(
            "{GOOD_TYPE}      age: integer\n    personal_data:\n      nickname: reference\n      age: hashed\n"
        ),
        expect![[r#"
        shop.yaml:17:7: error[personal-data-path-missing]: personal_data names nickname, which is not a field of any version of order.placed
          hint: fix the path, or remove the entry
        shop.yaml:18:7: error[hashed-field-not-string]: age of order.placed is declared hashed but its type is not string
          hint: a hashed field holds `sha256:<hex>`; declare it as `hash`
    "#]],
    );
    let versions = "    versions:\n      - version: 2\n        payload: {order_id: string}\n      - version: 1\n        payload: {order_id: string}\n";
    check(
        &GOOD_TYPE.replace("    payload:\n      order_id: string\n", versions),
        expect![[r#"
        shop.yaml:16:9: error[version-order]: order.placed lists version 1 after 2
          hint: list versions in increasing order
    "#]],
    );
}

#[test]
fn diagnostics_point_at_the_field_as_written() {
    // An optional shorthand field is written `name?`; a type name may hold a `/`.
    let body = "types:\n  order/placed:\n    summary: s\n    producers: [orders]\n    consumers: [billing]\n    payload:\n      order_id: string\n      contact_email?: string\n";
    let text = format!("{HEAD}{body}").replace("naming: area.action.state\n", "");
    expect![[r#"
        shop.yaml:13:7: error[undeclared-personal-data]: order/placed field contact_email looks like personal data but is not declared under personal_data
          hint: declare it, e.g. `personal_data: { contact_email: hashed }` (forbidden, hashed, reference or allowed)
    "#]].assert_eq(&render(&Catalog::load(&text, "shop.yaml")));
}
