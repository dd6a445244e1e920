//! The fast path of payload validation: one pass over the payload's JSON text, checked against
//! the schema as it is read, with no tree built.
//!
//! Most payloads are valid. For a schema in the subset Canon's shorthand expands to (`type`,
//! `properties`, `required`, `additionalProperties`, `items`, `enum`/`const`, lengths and item
//! counts, `format`, `pattern`, numeric bounds, and `T | null`), a [`FastCheck`] says whether a
//! payload is valid without parsing it into a `serde_json::Value`, and checks the personal-data
//! rules on the way. It only ever answers "valid"; on anything else the caller runs the full
//! validator, which finds and reports every problem. Keywords whose exact semantics belong to
//! jsonschema (formats, patterns, numbers, `enum` of non-strings) are not written again here:
//! the value at hand is handed to a jsonschema validator compiled for that one node.
//!
//! Architecture Invariant: a payload the fast check accepts is one the full validator accepts,
//! with no personal-data violation. The `payload_check` fuzz target checks this for any
//! payload, and a test checks that every type of the shipped catalogs has a fast check that
//! accepts its example events.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::catalog::FieldPath;
use crate::model::PiiRule;

/// A payload schema compiled for the one-pass check.
pub(crate) struct FastCheck {
    root: Node,
}

impl fmt::Debug for FastCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FastCheck")
    }
}

impl FastCheck {
    /// Compiles `schema` with the personal-data rules of its type, or `None` when the schema uses
    /// a keyword outside the subset (the full validator then checks every payload), or a rule's
    /// path does not run through declared properties.
    pub(crate) fn compile(
        schema: &Value,
        personal_data: &BTreeMap<FieldPath, PiiRule>,
    ) -> Option<FastCheck> {
        let mut root = Node::compile(schema)?;
        for (path, rule) in personal_data {
            root.attach(&path.0, *rule)?;
        }
        Some(FastCheck { root })
    }

    /// Whether `payload` (JSON text) is valid, personal-data rules included. `false` means "not
    /// known valid": run the full validator.
    pub(crate) fn accepts(&self, payload: &str) -> bool {
        let mut de = serde_json::Deserializer::from_str(payload);
        Seed(&self.root).deserialize(&mut de).is_ok() && de.end().is_ok()
    }
}

/// JSON types, as bits.
const NULL: u8 = 1;
const BOOLEAN: u8 = 1 << 1;
const INTEGER: u8 = 1 << 2;
/// A number with a fraction or exponent, or beyond 64 bits.
const FRACTION: u8 = 1 << 3;
const STRING: u8 = 1 << 4;
const OBJECT: u8 = 1 << 5;
const ARRAY: u8 = 1 << 6;
const ANY: u8 = NULL | BOOLEAN | INTEGER | FRACTION | STRING | OBJECT | ARRAY;

/// Keywords that only annotate.
const ANNOTATIONS: [&str; 9] = [
    "$schema",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

struct Node {
    /// The JSON types the node admits.
    types: u8,
    /// Set by the shorthand's `T | null` (`anyOf` of `T` and `{"type": "null"}`): a null is
    /// valid whatever `T` says.
    null_always: bool,
    /// The node's keywords about one value, compiled by jsonschema, for the values the one-pass
    /// check does not judge alone.
    scalar: Option<jsonschema::Validator>,
    /// Which values go through `scalar`: strings, integers, other numbers, booleans and null.
    delegate_strings: bool,
    delegate_integers: bool,
    delegate_fractions: bool,
    delegate_others: bool,
    /// An `enum` or `const` of strings (and null), which strings are compared with exactly.
    strings: Option<Vec<String>>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    properties: Vec<Property>,
    /// Bit `i` set: property `i` is required.
    required: u64,
    additional: Additional,
    items: Option<Box<Node>>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    pii: Option<PiiRule>,
}

struct Property {
    name: String,
    /// `None` for a name that is required but not declared under `properties`: it counts as
    /// present, and is otherwise an additional property.
    node: Option<Node>,
}

enum Additional {
    Allowed,
    Denied,
    Schema(Box<Node>),
}

impl Node {
    fn any() -> Node {
        Node {
            types: ANY,
            null_always: false,
            scalar: None,
            delegate_strings: false,
            delegate_integers: false,
            delegate_fractions: false,
            delegate_others: false,
            strings: None,
            min_length: None,
            max_length: None,
            properties: Vec::new(),
            required: 0,
            additional: Additional::Allowed,
            items: None,
            min_items: None,
            max_items: None,
            pii: None,
        }
    }

    fn compile(schema: &Value) -> Option<Node> {
        let schema = match schema {
            Value::Bool(true) => return Some(Node::any()),
            Value::Object(schema) => schema,
            _ => return None,
        };
        // `T | null` as the shorthand writes it when `T` has no `type` to extend.
        if let Some(Value::Array(any_of)) = schema.get("anyOf")
            && schema.len() == 1
        {
            return match any_of.as_slice() {
                [inner, null] if *null == serde_json::json!({"type": "null"}) => {
                    let mut node = Node::compile(inner)?;
                    node.null_always = true;
                    Some(node)
                }
                _ => None,
            };
        }
        let mut node = Node::any();
        let mut scalar = Map::new();
        for (keyword, value) in schema {
            let keyword = keyword.as_str();
            match keyword {
                _ if ANNOTATIONS.contains(&keyword) => {}
                "type" => {
                    node.types = types(value)?;
                    scalar.insert(keyword.to_owned(), value.clone());
                }
                "properties" => {
                    for (name, schema) in value.as_object()? {
                        node.properties.push(Property {
                            name: name.clone(),
                            node: Some(Node::compile(schema)?),
                        });
                    }
                }
                "required" => {} // below, once every property is known
                "additionalProperties" => {
                    node.additional = match value {
                        Value::Bool(true) => Additional::Allowed,
                        Value::Bool(false) => Additional::Denied,
                        schema => Additional::Schema(Box::new(Node::compile(schema)?)),
                    };
                }
                "items" => node.items = Some(Box::new(Node::compile(value)?)),
                "minItems" => node.min_items = Some(value.as_u64()?),
                "maxItems" => node.max_items = Some(value.as_u64()?),
                "minLength" => node.min_length = Some(value.as_u64()?),
                "maxLength" => node.max_length = Some(value.as_u64()?),
                "format" | "pattern" => {
                    node.delegate_strings = true;
                    scalar.insert(keyword.to_owned(), value.clone());
                }
                "enum" | "const" => {
                    let members = match value {
                        Value::Array(members) if keyword == "enum" => members.as_slice(),
                        _ if keyword == "enum" => return None,
                        one => std::slice::from_ref(one),
                    };
                    // `enum` and `const` together are left to the full validator.
                    if node.strings.is_some() || node.delegate_others {
                        return None;
                    }
                    // A string equals a string member exactly, and nothing else. Whether `1`
                    // equals `1.0` is jsonschema's to say, so other values go through it.
                    if members.iter().all(|m| m.is_string() || m.is_null()) {
                        node.strings = Some(
                            members
                                .iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect(),
                        );
                    } else {
                        node.delegate_strings = true;
                    }
                    node.delegate_integers = true;
                    node.delegate_fractions = true;
                    node.delegate_others = true;
                    scalar.insert(keyword.to_owned(), value.clone());
                }
                "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
                    node.delegate_integers = true;
                    node.delegate_fractions = true;
                    scalar.insert(keyword.to_owned(), value.clone());
                }
                // Anything else (combinators, references, `uniqueItems`, `patternProperties`,
                // ...) is the full validator's.
                _ => return None,
            }
        }
        if let Some(required) = schema.get("required") {
            for name in required.as_array()? {
                let name = name.as_str()?;
                let i = match node.properties.iter().position(|p| p.name == name) {
                    Some(i) => i,
                    None => {
                        node.properties.push(Property {
                            name: name.to_owned(),
                            node: None,
                        });
                        node.properties.len() - 1
                    }
                };
                node.required |= 1u64.checked_shl(u32::try_from(i).ok()?)?;
            }
        }
        // A property's place is a bit of a `u64`.
        if node.properties.len() > 64 {
            return None;
        }
        // Where `integer` is admitted and `number` is not, whether a number written with a
        // fraction or exponent is whole (`1.0` is an integer to JSON Schema) is jsonschema's to
        // say.
        if node.types & INTEGER != 0 && node.types & FRACTION == 0 {
            node.types |= FRACTION;
            node.delegate_fractions = true;
        }
        if node.delegate_strings
            || node.delegate_integers
            || node.delegate_fractions
            || node.delegate_others
        {
            node.scalar = Some(crate::catalog::compile(&Value::Object(scalar)).ok()?);
        }
        Some(node)
    }

    /// Puts a personal-data rule on the property at `path`, which must run through declared
    /// properties.
    fn attach(&mut self, path: &[String], rule: PiiRule) -> Option<()> {
        let (first, rest) = path.split_first()?;
        let property = self.properties.iter_mut().find(|p| p.name == *first)?;
        let node = property.node.as_mut()?;
        if rest.is_empty() {
            node.pii = Some(rule);
            Some(())
        } else {
            node.attach(rest, rule)
        }
    }

    /// Checks a value that is neither an object nor an array; `valid` asks jsonschema about it
    /// when `delegate` says so.
    fn scalar(
        &self,
        kind: u8,
        delegate: bool,
        valid: impl FnOnce(&jsonschema::Validator) -> bool,
    ) -> bool {
        self.types & kind != 0
            && !(self.pii == Some(PiiRule::Forbidden) && kind != NULL)
            && (!delegate || self.scalar.as_ref().is_some_and(valid))
    }

    fn string(&self, s: &str) -> bool {
        if self.min_length.is_some() || self.max_length.is_some() {
            // JSON Schema counts code points.
            let length = s.chars().count() as u64;
            if self.min_length.is_some_and(|min| length < min)
                || self.max_length.is_some_and(|max| length > max)
            {
                return false;
            }
        }
        if let Some(strings) = &self.strings
            && !strings.iter().any(|m| m == s)
        {
            return false;
        }
        let pii_ok = match self.pii {
            Some(PiiRule::Hashed) => crate::validate::is_hash(s),
            Some(PiiRule::Reference) => !crate::validate::looks_like_raw_pii(s),
            _ => true,
        };
        pii_ok && self.scalar(STRING, self.delegate_strings, |v| is_valid_string(v, s))
    }
}

/// Whether jsonschema finds the string `s` valid under `validator`. The `Value` it needs is
/// built in a buffer kept per thread, so checking a string allocates nothing once the buffer
/// has grown (jsonschema does the same for member names).
fn is_valid_string(validator: &jsonschema::Validator, s: &str) -> bool {
    thread_local! {
        static BUFFER: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
    }
    let mut buffer = BUFFER.take();
    buffer.clear();
    buffer.push_str(s);
    let value = Value::String(buffer);
    let valid = validator.is_valid(&value);
    if let Value::String(buffer) = value {
        BUFFER.set(buffer);
    }
    valid
}

/// Reads one value against a node.
struct Seed<'n>(&'n Node);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Leaves the fast path; the message is never shown.
fn invalid<E: de::Error>() -> E {
    E::custom("")
}

fn check<E: de::Error>(ok: bool) -> Result<(), E> {
    if ok { Ok(()) } else { Err(invalid()) }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        let node = self.0;
        check(
            node.null_always
                || node.scalar(NULL, node.delegate_others, |v| v.is_valid(&Value::Null)),
        )
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        let node = self.0;
        check(node.scalar(BOOLEAN, node.delegate_others, |s| {
            s.is_valid(&Value::Bool(v))
        }))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        let node = self.0;
        check(node.scalar(INTEGER, node.delegate_integers, |s| {
            s.is_valid(&Value::from(v))
        }))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let node = self.0;
        check(node.scalar(INTEGER, node.delegate_integers, |s| {
            s.is_valid(&Value::from(v))
        }))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        let node = self.0;
        // serde_json reads JSON numbers as finite floats, as `Value` holds them.
        check(node.scalar(FRACTION, node.delegate_fractions, |s| {
            s.is_valid(&Value::from(v))
        }))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        check(self.0.string(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let node = self.0;
        if node.types & OBJECT == 0 || node.pii == Some(PiiRule::Forbidden) {
            return Err(invalid());
        }
        let mut seen = 0u64;
        // A member name with escapes cannot be borrowed: such a payload takes the full path.
        while let Some(name) = map.next_key::<&'de str>()? {
            let declared = node.properties.iter().position(|p| p.name == name);
            if let Some(i) = declared {
                seen |= 1 << i;
                if let Some(property) = &node.properties[i].node {
                    map.next_value_seed(Seed(property))?;
                    continue;
                }
            }
            match &node.additional {
                Additional::Allowed => {
                    map.next_value::<IgnoredAny>()?;
                }
                Additional::Denied => return Err(invalid()),
                Additional::Schema(schema) => map.next_value_seed(Seed(schema))?,
            }
        }
        check(seen & node.required == node.required)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let node = self.0;
        if node.types & ARRAY == 0 || node.pii == Some(PiiRule::Forbidden) {
            return Err(invalid());
        }
        let mut count = 0u64;
        match &node.items {
            Some(items) => {
                while seq.next_element_seed(Seed(items))?.is_some() {
                    count += 1;
                }
            }
            None => {
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    count += 1;
                }
            }
        }
        check(
            node.min_items.is_none_or(|min| count >= min)
                && node.max_items.is_none_or(|max| count <= max),
        )
    }
}

/// The JSON types a `type` keyword admits.
fn types(value: &Value) -> Option<u8> {
    let one = |name: &Value| -> Option<u8> {
        Some(match name.as_str()? {
            "null" => NULL,
            "boolean" => BOOLEAN,
            "integer" => INTEGER,
            "number" => INTEGER | FRACTION,
            "string" => STRING,
            "object" => OBJECT,
            "array" => ARRAY,
            _ => return None,
        })
    };
    match value {
        Value::Array(names) => names.iter().try_fold(0, |acc, n| Some(acc | one(n)?)),
        name => one(name),
    }
}
