//! Reading the structure of a payload schema: where a field path leads and every property it
//! declares. Handles `properties`/`required` nesting; a schema built from `$ref` or
//! combinators is opaque here, and rules that need its structure skip it.

use serde_json::Value;

use crate::catalog::FieldPath;

/// What a field path finds in a schema.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found<'s> {
    /// The field exists; `required` is true when every segment is required by its parent.
    Field { schema: &'s Value, required: bool },
    /// The path leads nowhere.
    Missing,
    /// The schema cannot be read structurally (combinators, `$ref`).
    Opaque,
}

pub(crate) fn find<'s>(schema: &'s Value, path: &FieldPath) -> Found<'s> {
    let mut here = schema;
    let mut required = true;
    for seg in &path.0 {
        let Some(props) = here.get("properties").and_then(Value::as_object) else {
            return if is_structural(here) {
                Found::Missing
            } else {
                Found::Opaque
            };
        };
        let Some(next) = props.get(seg) else {
            return Found::Missing;
        };
        let req = here
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(seg)));
        required &= req;
        here = next;
    }
    Found::Field {
        schema: here,
        required,
    }
}

fn is_structural(schema: &Value) -> bool {
    !["$ref", "allOf", "anyOf", "oneOf", "$dynamicRef"]
        .iter()
        .any(|k| schema.get(k).is_some())
}

/// Every property declared in the schema, as (path, schema), depth first. Fields inside array
/// items are not listed: a field path cannot name them.
pub(crate) fn properties(schema: &Value) -> Vec<(FieldPath, &Value)> {
    let mut out = Vec::new();
    walk(schema, &mut Vec::new(), &mut out);
    out
}

fn walk<'s>(schema: &'s Value, prefix: &mut Vec<String>, out: &mut Vec<(FieldPath, &'s Value)>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            prefix.push(name.clone());
            out.push((FieldPath(prefix.clone()), sub));
            walk(sub, prefix, out);
            prefix.pop();
        }
    }
}
