//! The lint rules of `canon catalog check`. Each rule has a stable code (docs/lints.md) and a
//! broken catalog in the tests that triggers it.

use crate::code;

use std::collections::BTreeSet;

use serde_json::Value;

use canon_envelope::pointer_token;

use crate::catalog::{Catalog, Cx, EventType, FieldPath, PayloadVersion};
use crate::diagnostic::Severity;
use crate::model::PiiRule;
use crate::naming::Naming;
use crate::schema_walk::{self, Found};

pub(crate) fn run(cx: &mut Cx<'_>, catalog: &Catalog) {
    services(cx, catalog);
    topics(cx, catalog);
    for ty in catalog.types.values() {
        let base = format!("/types/{}", pointer_token(&ty.name));
        naming(cx, catalog, ty, &base);
        producers(cx, catalog, ty, &base);
        keys(cx, ty, &base);
        personal_data(cx, ty, &base);
        handlers(cx, catalog, ty, &base);
        versions(cx, catalog, ty);
    }
}

fn services(cx: &mut Cx<'_>, catalog: &Catalog) {
    let used: BTreeSet<&str> = catalog
        .types
        .values()
        .flat_map(|t| t.producers.iter().chain(&t.consumers))
        .map(String::as_str)
        .collect();
    for name in catalog.services.keys() {
        if !used.contains(name.as_str()) {
            cx.report(
                &format!("/services/{}", pointer_token(name)),
                Severity::Warning,
                code::UNUSED_SERVICE,
                format!("service {name} neither produces nor consumes any type"),
                "remove it, or name it as a producer or consumer",
            );
        }
    }
}

fn topics(cx: &mut Cx<'_>, catalog: &Catalog) {
    let mut placed: Vec<(&str, &str)> = Vec::new();
    for (topic, t) in &catalog.topics {
        for (i, ty) in t.types.iter().enumerate() {
            let at = format!("/topics/{}/types/{i}", pointer_token(topic));
            if !catalog.types.contains_key(ty) {
                cx.error(
                    &at,
                    code::UNKNOWN_EVENT_TYPE,
                    format!("topic {topic} lists {ty}, which this catalog does not declare"),
                    "declare the type under `types:` or fix the name",
                );
            }
            if let Some((_, other)) = placed.iter().find(|(t2, _)| t2 == ty) {
                cx.error(
                    &at,
                    code::TOPIC_CONFLICT,
                    format!("{ty} is placed on both {other} and {topic}"),
                    "a type travels on one topic; remove it from one list",
                );
            }
            placed.push((ty, topic));
        }
    }
    for ty in catalog.types.values() {
        let listed = placed
            .iter()
            .find(|(t, _)| *t == ty.name)
            .map(|(_, topic)| *topic);
        if let Some(listed) = listed
            && listed != ty.topic
        {
            let at = format!("/types/{}/topic", pointer_token(&ty.name));
            cx.error(
                &at,
                code::TOPIC_CONFLICT,
                format!(
                    "{} says topic {} but topics.{listed} lists it",
                    ty.name, ty.topic
                ),
                "make the two agree, or keep only one of them",
            );
        }
    }
}

fn naming(cx: &mut Cx<'_>, catalog: &Catalog, ty: &EventType, base: &str) {
    if !catalog.naming.accepts(&ty.name) {
        cx.error(
            base,
            code::NAMING_CONVENTION,
            format!(
                "type name {} does not follow the catalog's convention, {}",
                ty.name,
                catalog.naming.describe()
            ),
            "rename the type, or change `naming` if the convention is wrong",
        );
        return;
    }
    if let (Naming::ReverseDnsVersioned { .. }, Some(major)) =
        (&catalog.naming, catalog.naming.version_in_name(&ty.name))
    {
        for v in ty.versions.iter().filter(|v| v.version.major() != major) {
            cx.error(
                &v.base,
                code::VERSION_SUFFIX_MISMATCH,
                format!(
                    "{} ends in v{major} but declares version {}",
                    ty.name, v.version
                ),
                "with versioned names a new major is a new type: declare it as its own type",
            );
        }
    }
}

fn producers(cx: &mut Cx<'_>, catalog: &Catalog, ty: &EventType, base: &str) {
    if ty.producers.is_empty() {
        cx.error(
            &format!("{base}/producers"),
            code::MISSING_PRODUCER,
            format!("{} names no producer", ty.name),
            "name the service that publishes it; only declared producers may publish",
        );
    }
    for (field, list) in [("producers", &ty.producers), ("consumers", &ty.consumers)] {
        for (i, s) in list.iter().enumerate() {
            if !catalog.services.contains_key(s) {
                cx.error(
                    &format!("{base}/{field}/{i}"),
                    code::UNKNOWN_SERVICE,
                    format!(
                        "{} names {field:?} service {s}, which is not declared",
                        ty.name
                    ),
                    "add it under `services:` with a one-line description, or fix the name",
                );
            }
        }
    }
}

fn keys(cx: &mut Cx<'_>, ty: &EventType, base: &str) {
    let check = |cx: &mut Cx<'_>, path: &FieldPath, at: String, what: &str| {
        for v in &ty.versions {
            match schema_walk::find(&v.schema, path) {
                Found::Missing => cx.error(
                    &at,
                    code::KEY_PATH_MISSING,
                    format!(
                        "{what} {path} of {} is not a field of the payload (version {})",
                        ty.name, v.version
                    ),
                    "name a field the payload declares, as a dot-separated path",
                ),
                Found::Field {
                    required: false, ..
                } => cx.error(
                    &at,
                    code::KEY_PATH_OPTIONAL,
                    format!(
                        "{what} {path} of {} is optional in version {}; every event needs it",
                        ty.name, v.version
                    ),
                    "make the field required, or key on a required one",
                ),
                Found::Field { schema, .. }
                    if matches!(
                        schema.get("type").and_then(Value::as_str),
                        Some("object" | "array")
                    ) =>
                {
                    cx.error(
                        &at,
                        code::KEY_PATH_NOT_SCALAR,
                        format!(
                            "{what} {path} of {} is an {}; keys are built from scalar fields",
                            ty.name,
                            schema["type"].as_str().unwrap_or("object")
                        ),
                        "key on a string, number or boolean field",
                    );
                }
                _ => {}
            }
        }
    };
    if let Some(agg) = &ty.aggregate {
        check(cx, agg, format!("{base}/aggregate"), "aggregate key");
    }
    for path in &ty.idempotency {
        check(
            cx,
            path,
            format!("{base}/idempotency"),
            "idempotency key field",
        );
    }
}

/// Field names that look like personal data.
pub(crate) fn looks_personal(name: &str, schema: &Value) -> bool {
    let n = name.to_ascii_lowercase();
    const EXACT: [&str; 18] = [
        "email",
        "phone",
        "ip",
        "ip_address",
        "address",
        "first_name",
        "last_name",
        "full_name",
        "birth_date",
        "date_of_birth",
        "dob",
        "ssn",
        "passport",
        "device_fingerprint",
        "lat",
        "lng",
        "latitude",
        "longitude",
    ];
    EXACT.contains(&n.as_str())
        || n.contains("email")
        || n.contains("phone")
        || n.ends_with("_ip")
        || schema.get("format").and_then(Value::as_str) == Some("email")
}

fn personal_data(cx: &mut Cx<'_>, ty: &EventType, base: &str) {
    for v in &ty.versions {
        for (path, schema) in schema_walk::properties(&v.schema) {
            let last = path.0.last().map(String::as_str).unwrap_or("");
            if looks_personal(last, schema) && !ty.personal_data.contains_key(&path) {
                let at = field_pointer(cx, v, &path);
                cx.error(
                    &at,
                    code::UNDECLARED_PERSONAL_DATA,
                    format!("{} field {path} looks like personal data but is not declared under personal_data", ty.name),
                    &format!("declare it, e.g. `personal_data: {{ {path}: hashed }}` (forbidden, hashed, reference or allowed)"),
                );
            }
        }
    }
    for (path, rule) in &ty.personal_data {
        let at = format!("{base}/personal_data/{}", pointer_token(&path.to_string()));
        let found: Vec<Found<'_>> = ty
            .versions
            .iter()
            .map(|v| schema_walk::find(&v.schema, path))
            .collect();
        // A field may exist in some versions only; it must exist in one. (A forbidden field
        // need not exist at all: the rule keeps it out.)
        if *rule != PiiRule::Forbidden && found.iter().all(|f| *f == Found::Missing) {
            let message = format!(
                "personal_data names {path}, which is not a field of any version of {}",
                ty.name
            );
            cx.error(
                &at,
                code::PERSONAL_DATA_PATH_MISSING,
                message,
                "fix the path, or remove the entry",
            );
        }
        let is_string = |t: &Value| {
            t == "string"
                || t.as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "string"))
        };
        let not_string = found.iter().any(|f| matches!(f, Found::Field { schema, .. } if schema.get("type").is_some_and(|t| !is_string(t))));
        if *rule == PiiRule::Hashed && not_string {
            let message = format!(
                "{path} of {} is declared hashed but its type is not string",
                ty.name
            );
            cx.error(
                &at,
                code::HASHED_FIELD_NOT_STRING,
                message,
                "a hashed field holds `sha256:<hex>`; declare it as `hash`",
            );
        }
    }
}

fn handlers(cx: &mut Cx<'_>, catalog: &Catalog, ty: &EventType, base: &str) {
    let h = &ty.handlers;
    let lists = [
        ("may_emit", h.may_emit.as_deref().unwrap_or(&[])),
        ("must_not_emit", h.must_not_emit.as_slice()),
    ];
    for (field, list) in lists {
        for (i, other) in list.iter().enumerate() {
            if !catalog.types.contains_key(other) {
                cx.error(
                    &format!("{base}/handlers/{field}/{i}"),
                    code::UNKNOWN_EVENT_TYPE,
                    format!(
                        "handlers of {} name {other}, which this catalog does not declare",
                        ty.name
                    ),
                    "declare the type, or fix the name",
                );
            }
        }
    }
    if let Some(may) = &h.may_emit {
        for (i, other) in h.must_not_emit.iter().enumerate() {
            if may.contains(other) {
                cx.error(
                    &format!("{base}/handlers/must_not_emit/{i}"),
                    code::HANDLER_RULE_CONFLICT,
                    format!("handlers of {} both may and must not emit {other}", ty.name),
                    "remove it from one of the two lists",
                );
            }
        }
    }
    if let Some(d) = &ty.deprecated
        && let Some(r) = &d.replaced_by
        && !catalog.types.contains_key(r)
    {
        cx.error(
            &format!("{base}/deprecated/replaced_by"),
            code::UNKNOWN_EVENT_TYPE,
            format!(
                "{} is replaced by {r}, which this catalog does not declare",
                ty.name
            ),
            "declare the replacement type",
        );
    }
}

fn versions(cx: &mut Cx<'_>, catalog: &Catalog, ty: &EventType) {
    for pair in ty.versions.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        let at = &new.base;
        if new.version == old.version {
            cx.error(
                at,
                code::DUPLICATE_VERSION,
                format!("{} declares version {} twice", ty.name, new.version),
                "give each version its own number",
            );
        } else if new.version < old.version {
            let message = format!(
                "{} lists version {} after {}",
                ty.name, new.version, old.version
            );
            cx.error(
                at,
                code::VERSION_ORDER,
                message,
                "list versions in increasing order",
            );
        } else {
            let breaking = old.missing_bump(new, catalog.compatibility);
            if !breaking.is_empty() {
                let list: Vec<String> = breaking.iter().map(ToString::to_string).collect();
                let message = format!(
                    "{} {} breaks {:?} compatibility with {} but keeps major {}: {}",
                    ty.name,
                    new.version,
                    catalog.compatibility,
                    old.version,
                    old.version.major(),
                    list.join("; ")
                );
                cx.error(
                    at,
                    code::VERSION_BUMP_MISSING,
                    message,
                    "a breaking change needs a new major version (or a new type name)",
                );
            }
        }
    }
}

/// Where a payload field is written in the file: under `payload` in shorthand (as `name` or
/// `name?`), under `properties` in JSON Schema.
fn field_pointer(cx: &Cx<'_>, v: &PayloadVersion, path: &FieldPath) -> String {
    let mut at = v.pointer.clone();
    for segment in &path.0 {
        let token = pointer_token(segment);
        at = if !v.shorthand {
            format!("{at}/properties/{token}")
        } else if cx.doc.has(&format!("{at}/{token}")) {
            format!("{at}/{token}")
        } else {
            format!("{at}/{token}?")
        };
    }
    at
}
