//! Loads a YAML document into a `serde_json::Value` and remembers where every node came from,
//! so that any problem found later (by serde, by a lint, by a schema check) points at a line
//! and column of the file.
//!
//! Deliberately narrower than YAML: one document, no anchors or aliases, string keys only,
//! and duplicate keys are errors. Catalogs are contracts; none of those features make one
//! clearer, and each hides mistakes.

use crate::code;

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr::{Scalar, ScalarStyle};
use saphyr_parser::{Event, Parser, Span, SpannedEventReceiver, Tag};
use serde_json::{Map, Number, Value};

/// A position in the source: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// A loaded document: the value and, for every node, where it starts.
#[derive(Debug, Default)]
pub struct Document {
    /// The document as JSON.
    pub value: Value,
    /// JSON pointer → position of the node's value.
    values: HashMap<String, Position>,
    /// JSON pointer → position of the mapping key that introduced the node.
    keys: HashMap<String, Position>,
    /// JSON pointer → the source text of a plain scalar that YAML read as a float (so `1.10`
    /// can still be read as a version).
    float_text: HashMap<String, String>,
}

impl Document {
    /// Where the node at `pointer` is: its key if it has one, else its value; walking up to the
    /// nearest ancestor that exists.
    pub fn position(&self, pointer: &str) -> Position {
        let mut p = pointer;
        loop {
            if let Some(pos) = self.keys.get(p).or_else(|| self.values.get(p)) {
                return *pos;
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Position { line: 1, column: 1 },
            }
        }
    }

    /// Whether the file has a node (or key) at `pointer`.
    pub fn has(&self, pointer: &str) -> bool {
        self.keys.contains_key(pointer) || self.values.contains_key(pointer)
    }

    /// The source text of a float scalar, e.g. `1.10`.
    pub fn float_text(&self, pointer: &str) -> Option<&str> {
        self.float_text.get(pointer).map(String::as_str)
    }
}

/// A YAML problem, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where.
    pub position: Position,
    /// `yaml-syntax`, `duplicate-key`, or `unsupported-yaml`.
    pub code: &'static str,
    /// What.
    pub message: String,
}

/// Parses one YAML document.
pub fn load(source: &str) -> Result<Document, YamlError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    if let Err(e) = parser.load(&mut builder, true) {
        let m = e.marker();
        return Err(YamlError {
            position: Position {
                line: m.line(),
                column: m.col() + 1,
            },
            code: code::YAML_SYNTAX,
            message: e.info().to_owned(),
        });
    }
    if let Some(err) = builder.error {
        return Err(err);
    }
    if let Some(position) = builder.second_document {
        return Err(YamlError {
            position,
            code: code::UNSUPPORTED_YAML,
            message: "a catalog is one YAML document; found several".into(),
        });
    }
    let value = builder.root.take().unwrap_or(Value::Null);
    Ok(Document {
        value,
        values: builder.values,
        keys: builder.keys,
        float_text: builder.float_text,
    })
}

enum Frame {
    Seq {
        pointer: String,
        items: Vec<Value>,
    },
    Map {
        pointer: String,
        map: Map<String, Value>,
        key: Option<String>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Value>,
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
    float_text: HashMap<String, String>,
    error: Option<YamlError>,
    /// Where the second document starts, if there is one.
    second_document: Option<Position>,
    documents: usize,
}

fn pos(span: Span) -> Position {
    Position {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

fn escape(token: &str) -> Cow<'_, str> {
    if token.contains(['~', '/']) {
        Cow::Owned(token.replace('~', "~0").replace('/', "~1"))
    } else {
        Cow::Borrowed(token)
    }
}

impl Builder {
    fn fail(&mut self, position: Position, code: &'static str, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError {
                position,
                code,
                message,
            });
        }
    }

    /// The pointer the next value will get, or `None` if the next scalar is a mapping key.
    fn next_pointer(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { pointer, items }) => Some(format!("{pointer}/{}", items.len())),
            Some(Frame::Map {
                pointer,
                key: Some(k),
                ..
            }) => Some(format!("{pointer}/{}", escape(k))),
            Some(Frame::Map { key: None, .. }) => None,
        }
    }

    fn push_value(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, .. }) => items.push(value),
            Some(Frame::Map { map, key, .. }) => {
                if let Some(k) = key.take() {
                    map.insert(k, value);
                }
            }
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Builder {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        if self.error.is_some() {
            return;
        }
        let at = pos(span);
        match ev {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document = Some(at);
                }
            }
            Event::Alias(_) => self.fail(
                at,
                code::UNSUPPORTED_YAML,
                "aliases are not supported in catalogs; write the value out".into(),
            ),
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 {
                    self.fail(
                        at,
                        code::UNSUPPORTED_YAML,
                        "anchors are not supported in catalogs".into(),
                    );
                    return;
                }
                match self.next_pointer() {
                    None => {
                        // A mapping key.
                        let Some(Frame::Map { pointer, map, key }) = self.stack.last_mut() else {
                            return;
                        };
                        let k = text.into_owned();
                        if map.contains_key(&k) {
                            let message = format!("key {k:?} appears twice in this mapping");
                            self.fail(at, code::DUPLICATE_KEY, message);
                            return;
                        }
                        let child = format!("{pointer}/{}", escape(&k));
                        self.keys.insert(child, at);
                        *key = Some(k);
                    }
                    Some(pointer) => {
                        let value = scalar_value(&text, style, tag.as_ref());
                        if let (Value::Number(n), ScalarStyle::Plain) = (&value, style)
                            && n.is_f64()
                        {
                            self.float_text.insert(pointer.clone(), text.into_owned());
                        }
                        self.values.insert(pointer, at);
                        self.push_value(value);
                    }
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) if anchor != 0 => {
                self.fail(
                    at,
                    code::UNSUPPORTED_YAML,
                    "anchors are not supported in catalogs".into(),
                );
            }
            Event::SequenceStart(..) => match self.next_pointer() {
                Some(pointer) => {
                    self.values.insert(pointer.clone(), at);
                    self.stack.push(Frame::Seq {
                        pointer,
                        items: Vec::new(),
                    });
                }
                None => self.fail(
                    at,
                    code::UNSUPPORTED_YAML,
                    "mapping keys must be plain strings".into(),
                ),
            },
            Event::MappingStart(..) => match self.next_pointer() {
                Some(pointer) => {
                    self.values.insert(pointer.clone(), at);
                    self.stack.push(Frame::Map {
                        pointer,
                        map: Map::new(),
                        key: None,
                    });
                }
                None => self.fail(
                    at,
                    code::UNSUPPORTED_YAML,
                    "mapping keys must be plain strings".into(),
                ),
            },
            Event::SequenceEnd => {
                if let Some(Frame::Seq { items, .. }) = self.stack.pop() {
                    self.push_value(Value::Array(items));
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map { map, .. }) = self.stack.pop() {
                    self.push_value(Value::Object(map));
                }
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
}

/// Resolves a scalar with the YAML 1.2 core schema.
fn scalar_value(text: &str, style: ScalarStyle, tag: Option<&Cow<'_, Tag>>) -> Value {
    match Scalar::parse_from_cow_and_metadata(Cow::Borrowed(text), style, tag) {
        Some(Scalar::Null) => Value::Null,
        Some(Scalar::Boolean(b)) => Value::Bool(b),
        Some(Scalar::Integer(i)) => Value::Number(i.into()),
        Some(Scalar::FloatingPoint(f)) => Number::from_f64(f.into_inner())
            .map_or_else(|| Value::String(text.to_owned()), Value::Number),
        Some(Scalar::String(s)) => Value::String(s.into_owned()),
        None => Value::String(text.to_owned()),
    }
}
