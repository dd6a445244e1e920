//! The payload shorthand (docs/catalog-format.md) and its expansion to JSON Schema 2020-12.

use serde_json::{Map, Value, json};

/// The pattern a `hash` field must match.
pub const HASH_PATTERN: &str = "^sha(256|384|512):[0-9a-f]+$";

/// A shorthand problem: the pointer (relative to the payload) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShorthandError {
    /// Relative JSON pointer of the offending field.
    pub(crate) pointer: String,
    /// What is wrong.
    pub(crate) message: String,
}

/// Expands a `payload:` mapping into a closed object schema, or returns every problem.
pub(crate) fn expand(payload: &Value) -> Result<Value, Vec<ShorthandError>> {
    let mut errors = Vec::new();
    let schema = object(payload, "", &mut errors);
    if errors.is_empty() {
        Ok(schema)
    } else {
        Err(errors)
    }
}

fn object(fields: &Value, at: &str, errors: &mut Vec<ShorthandError>) -> Value {
    let Some(fields) = fields.as_object() else {
        errors.push(ShorthandError {
            pointer: at.to_owned(),
            message: "a payload in shorthand is a mapping of field name to type".into(),
        });
        return json!({});
    };
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (key, expr) in fields {
        let (name, optional) = match key.strip_suffix('?') {
            Some(n) => (n, true),
            None => (key.as_str(), false),
        };
        let here = format!("{at}/{}", canon_envelope::pointer_token(key));
        if name.is_empty() {
            errors.push(ShorthandError {
                pointer: here.clone(),
                message: "a field needs a name".into(),
            });
            continue;
        }
        if !optional {
            required.push(Value::String(name.to_owned()));
        }
        properties.insert(name.to_owned(), field(expr, &here, errors));
    }
    let mut schema = Map::new();
    schema.insert("type".into(), "object".into());
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    schema.insert("additionalProperties".into(), false.into());
    Value::Object(schema)
}

fn field(expr: &Value, at: &str, errors: &mut Vec<ShorthandError>) -> Value {
    match expr {
        Value::String(s) => match type_expr(s.trim()) {
            Ok(v) => v,
            Err(message) => {
                errors.push(ShorthandError {
                    pointer: at.to_owned(),
                    message,
                });
                json!({})
            }
        },
        Value::Object(m) if m.len() == 1 && m.contains_key("$json") => m["$json"].clone(),
        Value::Object(_) => object(expr, at, errors),
        other => {
            errors.push(ShorthandError {
                pointer: at.to_owned(),
                message: format!(
                    "expected a type expression such as `string` or `enum(a, b)`, got {other}"
                ),
            });
            json!({})
        }
    }
}

fn type_expr(s: &str) -> Result<Value, String> {
    if let Some((left, right)) = s.rsplit_once('|') {
        let (left, right) = (left.trim(), right.trim());
        if right == "null" {
            let inner = type_expr(left)?;
            return Ok(nullable(inner));
        }
        return Err(format!(
            "`{s}`: only `T | null` unions are supported; use `enum(...)` for alternatives or `$json` for anything else"
        ));
    }
    if let Some(inner) = s.strip_suffix("[]") {
        return Ok(json!({"type": "array", "items": type_expr(inner.trim())?}));
    }
    if let Some(list) = s.strip_prefix("enum(").and_then(|r| r.strip_suffix(')')) {
        let values: Vec<Value> = list
            .split(',')
            .map(|v| Value::String(v.trim().to_owned()))
            .collect();
        if values.iter().any(|v| v.as_str() == Some("")) {
            return Err(format!("`{s}`: enum values must not be empty"));
        }
        return Ok(json!({"type": "string", "enum": values}));
    }
    Ok(match s {
        "string" | "integer" | "number" | "boolean" => json!({"type": s}),
        "object" => json!({"type": "object"}),
        "any" => json!({}),
        "datetime" => json!({"type": "string", "format": "date-time"}),
        "date" => json!({"type": "string", "format": "date"}),
        "uuid" => json!({"type": "string", "format": "uuid"}),
        "uri" => json!({"type": "string", "format": "uri"}),
        "email" => json!({"type": "string", "format": "email"}),
        "hash" => json!({"type": "string", "pattern": HASH_PATTERN}),
        _ => {
            return Err(format!(
                "unknown type `{s}`; expected string, integer, number, boolean, object, any, datetime, date, uuid, uri, email, hash, enum(...), T[] or T | null"
            ));
        }
    })
}

fn nullable(mut schema: Value) -> Value {
    if let Some(t) = schema
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        schema["type"] = json!([t, "null"]);
        if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
            values.push(Value::Null);
        }
        schema
    } else {
        json!({"anyOf": [schema, {"type": "null"}]})
    }
}
