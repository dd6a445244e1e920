//! Schema compatibility, Confluent Schema Registry semantics applied to JSON Schema.
//!
//! Everything reduces to one question, "is every instance valid under schema A also valid
//! under schema B?" ([`widening_problems`]). Backward compatibility (new readers read old
//! events) asks it with A = old, B = new; forward (old readers read new events) with A = new,
//! B = old; full asks both. The check is conservative: a keyword it cannot reason about that
//! changed counts as breaking.

use std::fmt;

use serde_json::{Map, Value};

use crate::model::Compatibility;

/// The direction a change breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// New readers cannot read some old events.
    Backward,
    /// Old readers cannot read some new events.
    Forward,
}

/// One breaking change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// Which compatibility it breaks.
    pub breaks: Direction,
    /// Payload field path (`location.lat`, `$` for the root).
    pub path: String,
    /// What changed.
    pub description: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.breaks {
            Direction::Backward => "backward",
            Direction::Forward => "forward",
        };
        write!(f, "{}: {} (breaks {dir})", self.path, self.description)
    }
}

/// The changes from `old` to `new` that break the given compatibility.
pub fn breaking_changes(mode: Compatibility, old: &Value, new: &Value) -> Vec<Change> {
    let mut out = Vec::new();
    if matches!(mode, Compatibility::Backward | Compatibility::Full) {
        out.extend(widening_problems(old, new, Direction::Backward));
    }
    if matches!(mode, Compatibility::Forward | Compatibility::Full) {
        out.extend(widening_problems(new, old, Direction::Forward));
    }
    out
}

/// Why some instance valid under `a` may be invalid under `b`; empty when `a` ⊆ `b`.
pub fn widening_problems(a: &Value, b: &Value, dir: Direction) -> Vec<Change> {
    let mut out = Vec::new();
    check(a, b, "$", dir, &mut out);
    out
}

const HANDLED: [&str; 23] = [
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "format",
    "title",
    "description",
    "examples",
    "default",
    "$schema",
    "$comment",
];

fn types(s: &Value) -> Option<Vec<String>> {
    match s.get("type")? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn push(out: &mut Vec<Change>, dir: Direction, path: &str, description: String) {
    out.push(Change {
        breaks: dir,
        path: path.to_owned(),
        description,
    });
}

static ANY: Value = Value::Bool(true);

/// The values an `enum` or `const` allows.
fn values(m: &Map<String, Value>) -> Option<Vec<&Value>> {
    match (m.get("enum").and_then(Value::as_array), m.get("const")) {
        (Some(list), _) => Some(list.iter().collect()),
        (None, Some(c)) => Some(vec![c]),
        (None, None) => None,
    }
}

fn props(m: &Map<String, Value>) -> Option<&Map<String, Value>> {
    m.get("properties").and_then(Value::as_object)
}

fn required(m: &Map<String, Value>) -> Vec<&str> {
    m.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn check(a: &Value, b: &Value, path: &str, dir: Direction, out: &mut Vec<Change>) {
    if b == &ANY || b.as_object().is_some_and(Map::is_empty) || a == &Value::Bool(false) || a == b {
        return;
    }
    if b == &Value::Bool(false) {
        push(out, dir, path, "no value is accepted any more".into());
        return;
    }
    let empty = Map::new();
    let (Some(am), Some(bm)) = (
        if a == &ANY {
            Some(&empty)
        } else {
            a.as_object()
        },
        b.as_object(),
    ) else {
        push(
            out,
            dir,
            path,
            "schema changed in a way Canon cannot compare".into(),
        );
        return;
    };
    // Keywords outside the handled vocabulary must be identical.
    for key in bm.keys().chain(am.keys()) {
        if !HANDLED.contains(&key.as_str()) && am.get(key) != bm.get(key) {
            push(
                out,
                dir,
                path,
                format!("keyword `{key}` changed; Canon cannot prove the change compatible"),
            );
            return;
        }
    }
    // type
    let (ta, tb) = (types(a), types(b));
    if let Some(tb) = &tb {
        let covered = |t: &str| {
            tb.iter()
                .any(|u| u == t || (u == "number" && t == "integer"))
        };
        match &ta {
            None => push(
                out,
                dir,
                path,
                format!("any type was accepted, now only {}", tb.join(" or ")),
            ),
            Some(ta) => {
                for t in ta.iter().filter(|t| !covered(t)) {
                    push(
                        out,
                        dir,
                        path,
                        format!("type {t} is no longer accepted (now {})", tb.join(" or ")),
                    );
                }
            }
        }
    }
    // enum / const
    if let Some(vb) = values(bm) {
        match values(am) {
            None => push(
                out,
                dir,
                path,
                "any value was accepted, now only an enumerated set".into(),
            ),
            Some(va) => {
                for v in va.iter().filter(|v| !vb.contains(v)) {
                    push(out, dir, path, format!("value {v} is no longer accepted"));
                }
            }
        }
    }
    // Numeric and length bounds: b's lower bound must not rise, its upper bound not fall.
    for (key, lower) in [
        ("minimum", true),
        ("exclusiveMinimum", true),
        ("minLength", true),
        ("minItems", true),
        ("maximum", false),
        ("exclusiveMaximum", false),
        ("maxLength", false),
        ("maxItems", false),
    ] {
        if let Some(nb) = bm.get(key).and_then(Value::as_f64) {
            let tighter = match am.get(key).and_then(Value::as_f64) {
                None => true,
                Some(na) => (lower && nb > na) || (!lower && nb < na),
            };
            if tighter {
                push(out, dir, path, format!("{key} tightened to {nb}"));
            }
        }
    }
    for key in ["pattern", "format"] {
        if let Some(vb) = bm.get(key)
            && am.get(key) != Some(vb)
        {
            push(out, dir, path, format!("{key} {vb} now applies"));
        }
    }
    // arrays
    if let Some(ib) = bm.get("items") {
        check(
            am.get("items").unwrap_or(&ANY),
            ib,
            &format!("{path}[]"),
            dir,
            out,
        );
    }
    // objects
    let (pa, pb) = (props(am).unwrap_or(&empty), props(bm).unwrap_or(&empty));
    let (ra, rb) = (required(am), required(bm));
    let (xa, xb) = (
        am.get("additionalProperties").unwrap_or(&ANY),
        bm.get("additionalProperties").unwrap_or(&ANY),
    );
    let field = |name: &str| {
        if path == "$" {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    for r in rb.iter().filter(|r| !ra.contains(r)) {
        let what = if pa.contains_key(*r) {
            "became required"
        } else {
            "is a new required field"
        };
        push(out, dir, &field(r), what.into());
    }
    for (name, sb) in pb {
        // A field only b declares: instances of a may carry it with anything a's
        // additionalProperties allowed.
        check(pa.get(name).unwrap_or(xa), sb, &field(name), dir, out);
    }
    for (name, sa) in pa.iter().filter(|(name, _)| !pb.contains_key(*name)) {
        match xb {
            Value::Bool(false) => push(out, dir, &field(name), "field is no longer allowed".into()),
            other => check(sa, other, &field(name), dir, out),
        }
    }
    // Fields neither declares: whatever a allowed for them, b must allow.
    match (xa, xb) {
        (Value::Bool(false), _) => {}
        (_, Value::Bool(false)) => push(
            out,
            dir,
            path,
            "undeclared fields are no longer accepted".into(),
        ),
        _ => check(xa, xb, &field("*"), dir, out),
    }
}
