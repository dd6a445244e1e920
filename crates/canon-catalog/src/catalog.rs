//! The resolved catalog: what a catalog file means once loaded, with payload schemas expanded
//! and compiled. Loading never stops at the first problem: it returns every diagnostic it can.

use crate::code;

use std::collections::BTreeMap;
use std::sync::Arc;

use canon_envelope::{Dialect, pointer_token};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Severity};
use crate::fast::FastCheck;
use crate::lint;
use crate::model::{
    Compatibility, DeliveryModel, DeprecationModel, FileModel, HandlersModel, NamingModel, PiiRule,
    TypeModel,
};
use crate::naming::Naming;
use crate::shorthand;
use crate::version::Version;
use crate::yaml::{self, Document};

/// A loaded catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The application's name.
    pub name: String,
    /// One line about the application.
    pub summary: Option<String>,
    /// The naming convention for type names.
    pub naming: Naming,
    /// The envelope dialect the application speaks.
    pub dialect: Dialect,
    /// The compatibility promised between payload versions.
    pub compatibility: Compatibility,
    /// Known services (producers and consumers), with descriptions.
    pub services: BTreeMap<String, String>,
    /// Topics and the types each carries.
    pub topics: BTreeMap<String, Topic>,
    /// Delivery defaults for this catalog's topics.
    pub delivery: Option<DeliveryModel>,
    /// Event types by name.
    pub types: BTreeMap<String, EventType>,
}

/// A topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Topic {
    /// What travels on it.
    pub summary: Option<String>,
    /// The types it carries.
    pub types: Vec<String>,
}

/// A dot-separated path to a payload field (`location.country`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath(pub Vec<String>);

impl serde::Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FieldPath {
    /// Parses `a.b.c`.
    pub fn parse(s: &str) -> FieldPath {
        FieldPath(s.split('.').map(|p| p.trim().to_owned()).collect())
    }

    /// Finds the value at this path in a payload.
    pub fn lookup<'v>(&self, payload: &'v Value) -> Option<&'v Value> {
        self.0.iter().try_fold(payload, |v, key| v.get(key))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// An event type.
#[derive(Debug, Clone)]
pub struct EventType {
    /// The type name (CloudEvents `type`).
    pub name: String,
    /// One line about it.
    pub summary: String,
    /// Services allowed to publish it.
    pub producers: Vec<String>,
    /// Services expected to consume it.
    pub consumers: Vec<String>,
    /// The topic it travels on.
    pub topic: String,
    /// The ordering key: a payload field.
    pub aggregate: Option<FieldPath>,
    /// The payload fields whose values make an event unique.
    pub idempotency: Vec<FieldPath>,
    /// Personal-data fields and their rules.
    pub personal_data: BTreeMap<FieldPath, PiiRule>,
    /// The consent purpose handlers need.
    pub consent: Option<String>,
    /// Side-effect rules for handlers.
    pub handlers: HandlersModel,
    /// Set when the type is deprecated.
    pub deprecated: Option<Deprecation>,
    /// Payload versions, ascending.
    pub versions: Vec<PayloadVersion>,
}

/// Why and in favour of what a type is deprecated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deprecation {
    /// Why.
    pub reason: Option<String>,
    /// The type to use instead.
    pub replaced_by: Option<String>,
    /// The version from which it is deprecated.
    pub since: Option<String>,
}

/// One version of a payload.
#[derive(Debug, Clone)]
pub struct PayloadVersion {
    /// The version.
    pub version: Version,
    /// Its JSON Schema (shorthand already expanded).
    pub schema: Value,
    pub(crate) validator: Option<Arc<jsonschema::Validator>>,
    /// The one-pass check of valid payloads, when the schema is in its subset
    /// ([`crate::fast`]).
    pub(crate) fast: Option<Arc<FastCheck>>,
    /// JSON pointer of this version's entry in the file (the type, or `versions/<i>`).
    pub(crate) base: String,
    /// JSON pointer of this version's `payload` or `schema`.
    pub(crate) pointer: String,
    /// Whether it was written in shorthand (`payload:`) rather than JSON Schema.
    pub(crate) shorthand: bool,
}

impl PayloadVersion {
    /// The compiled validator of this version's schema (JSON Schema 2020-12, formats
    /// asserted); `None` when the schema did not compile, which the catalog reports.
    pub fn validator(&self) -> Option<&jsonschema::Validator> {
        self.validator.as_deref()
    }

    /// The one-pass check of this version's payloads alone: `Some(true)` when it knows
    /// `payload` (JSON text) valid, personal-data rules included; `Some(false)` when it does not
    /// (the payload may be invalid, or in a form only the full validator judges); `None` when
    /// the schema uses keywords outside the check's subset. For tests and fuzz targets that
    /// compare it with [`Catalog::validate_full`].
    pub fn fast_check(&self, payload: &str) -> Option<bool> {
        self.fast.as_ref().map(|fast| fast.accepts(payload))
    }

    /// Why moving from `self` to the later version `next` needs a new major version under
    /// `mode`: the breaking changes, if `next` keeps the major. Empty when the bump is right.
    pub(crate) fn missing_bump(
        &self,
        next: &PayloadVersion,
        mode: Compatibility,
    ) -> Vec<crate::compat::Change> {
        if next.version.major() != self.version.major() {
            return Vec::new();
        }
        crate::compat::breaking_changes(mode, &self.schema, &next.schema)
    }
}

impl EventType {
    /// The version an event states, or the lowest declared version when it states none
    /// (seeds 001 and 002: "version defaults to 1").
    pub fn version(&self, stated: Option<&str>) -> Option<&PayloadVersion> {
        match stated {
            None => self.versions.first(),
            Some(s) => self.versions.iter().find(|pv| pv.version.matches(s)),
        }
    }

    /// The newest version.
    pub fn latest(&self) -> Option<&PayloadVersion> {
        self.versions.last()
    }
}

/// The result of loading a catalog file: the catalog if its structure could be read, and every
/// problem found.
#[derive(Debug)]
pub struct Loaded {
    /// `None` when the file could not be understood at all.
    pub catalog: Option<Catalog>,
    /// Errors and warnings, ordered by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

impl Catalog {
    /// Loads and lints a catalog from YAML text; `file` names it in diagnostics.
    pub fn load(source: &str, file: &str) -> Loaded {
        let doc = match yaml::load(source) {
            Ok(doc) => doc,
            Err(e) => {
                let d = Diagnostic::at(file, e.position, "", Severity::Error, e.code, e.message)
                    .hint("fix the YAML at this position; catalogs use plain YAML without anchors, aliases or duplicate keys");
                return Loaded {
                    catalog: None,
                    diagnostics: vec![d],
                };
            }
        };
        let mut cx = Cx {
            file,
            doc: &doc,
            diagnostics: Vec::new(),
        };
        let model: FileModel = match serde_path_to_error::deserialize(&doc.value) {
            Ok(m) => m,
            Err(e) => {
                cx.structural(&e);
                return Loaded {
                    catalog: None,
                    diagnostics: cx.diagnostics,
                };
            }
        };
        let catalog = resolve(&mut cx, model);
        if let Some(c) = &catalog {
            lint::run(&mut cx, c);
        }
        let mut diagnostics = cx.diagnostics;
        diagnostics.sort_by(|a, b| (a.line, a.column, a.code).cmp(&(b.line, b.column, b.code)));
        diagnostics.dedup();
        Loaded {
            catalog,
            diagnostics,
        }
    }

    /// The type declared under `name`; also resolves a `.vN` suffix on a `context.Verb` name
    /// (seed 001: `money.TransactionCreated.v2`), returning the version it names.
    pub fn lookup(&self, name: &str) -> Option<(&EventType, Option<String>)> {
        if let Some(t) = self.types.get(name) {
            return Some((t, None));
        }
        let (base, suffix) = name.rsplit_once('.')?;
        let major = suffix.strip_prefix('v')?.parse::<u64>().ok()?;
        let t = self.types.get(base)?;
        let v = t
            .versions
            .iter()
            .rev()
            .find(|v| v.version.major() == major)?;
        Some((t, Some(v.version.as_str().to_owned())))
    }
}

/// Loading context: the file, its positions, and the diagnostics so far.
pub(crate) struct Cx<'a> {
    pub(crate) file: &'a str,
    pub(crate) doc: &'a Document,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Cx<'_> {
    pub(crate) fn report(
        &mut self,
        pointer: &str,
        severity: Severity,
        code: &'static str,
        message: String,
        hint: &str,
    ) {
        let d = Diagnostic::at(
            self.file,
            self.doc.position(pointer),
            pointer,
            severity,
            code,
            message,
        )
        .hint(hint);
        self.diagnostics.push(d);
    }

    pub(crate) fn error(&mut self, pointer: &str, code: &'static str, message: String, hint: &str) {
        self.report(pointer, Severity::Error, code, message, hint);
    }

    fn structural(&mut self, e: &serde_path_to_error::Error<serde_json::Error>) {
        let mut pointer = String::new();
        for seg in e.path().iter() {
            use serde_path_to_error::Segment;
            match seg {
                Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
                Segment::Map { key } => {
                    pointer.push_str(&format!("/{}", pointer_token(key)));
                }
                _ => {}
            }
        }
        let inner = e.inner().to_string();
        let (code, hint) = if inner.starts_with("unknown field") {
            (
                code::UNKNOWN_KEY,
                "remove the key or fix its spelling; docs/catalog-format.md lists every key",
            )
        } else if inner.starts_with("missing field") {
            (
                code::MISSING_KEY,
                "add the key; docs/catalog-format.md says what it holds",
            )
        } else {
            (
                code::INVALID_VALUE,
                "docs/catalog-format.md says what this key holds",
            )
        };
        let message = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_owned(),
            None => inner,
        };
        self.error(&pointer, code, message, hint);
    }
}

fn resolve(cx: &mut Cx<'_>, model: FileModel) -> Option<Catalog> {
    let mut ok = true;
    if model.canon != 1 {
        cx.error(
            "/canon",
            code::UNSUPPORTED_FORMAT_VERSION,
            format!("catalog format version {} is not supported", model.canon),
            "use `canon: 1`",
        );
        ok = false;
    }
    let naming = match &model.naming {
        None => Naming::Any,
        Some(NamingModel::Pattern { pattern }) => match regex::Regex::new(pattern) {
            Ok(r) => Naming::Pattern(r),
            Err(e) => {
                cx.error(
                    "/naming/pattern",
                    code::INVALID_VALUE,
                    format!("invalid regular expression: {e}"),
                    "write a valid Rust regex",
                );
                ok = false;
                Naming::Any
            }
        },
        Some(NamingModel::Preset(p)) => match p.as_str() {
            "context.Verb" => Naming::ContextVerb,
            "area.action.state" => Naming::AreaActionState,
            "PascalCase" => Naming::PascalCase,
            "reverse-dns-versioned" => match &model.naming_prefix {
                Some(prefix) => Naming::ReverseDnsVersioned {
                    prefix: prefix.clone(),
                },
                None => {
                    cx.error(
                        "/naming",
                        code::MISSING_KEY,
                        "reverse-dns-versioned needs `naming_prefix`".into(),
                        "add e.g. `naming_prefix: com.todo` at the top level",
                    );
                    ok = false;
                    Naming::ReverseDnsVersioned {
                        prefix: String::new(),
                    }
                }
            },
            other => {
                cx.error(
                    "/naming",
                    code::INVALID_VALUE,
                    format!("unknown naming convention {other:?}"),
                    "use context.Verb, area.action.state, PascalCase, reverse-dns-versioned, or {pattern: \"^...$\"}",
                );
                ok = false;
                Naming::Any
            }
        },
    };
    let dialect = match model.dialect.as_deref() {
        None => Dialect::CloudEvents,
        Some(d) => match d.parse::<Dialect>() {
            Ok(d) => d,
            Err(e) => {
                cx.error(
                    "/dialect",
                    code::INVALID_VALUE,
                    e.to_string(),
                    "use cloudevents, bme, go4u or lifeos",
                );
                ok = false;
                Dialect::CloudEvents
            }
        },
    };
    // Topic of each type: from `topics:` lists, or the type's own `topic:`.
    let mut topic_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (topic, t) in &model.topics {
        for ty in &t.types {
            topic_of.entry(ty.as_str()).or_insert(topic.as_str());
        }
    }
    let mut types = BTreeMap::new();
    for (name, t) in &model.types {
        let topic = t
            .topic
            .clone()
            .or_else(|| topic_of.get(name.as_str()).map(|s| (*s).to_owned()))
            .unwrap_or_else(|| name.clone());
        match resolve_type(cx, name, t, topic) {
            Some(ty) => {
                types.insert(name.clone(), ty);
            }
            None => ok = false,
        }
    }
    let topics = model
        .topics
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                Topic {
                    summary: v.summary,
                    types: v.types,
                },
            )
        })
        .collect();
    ok.then_some(Catalog {
        name: model.name,
        summary: model.summary,
        naming,
        dialect,
        compatibility: model.compatibility.unwrap_or_default(),
        services: model.services,
        topics,
        delivery: model.defaults.and_then(|d| d.delivery),
        types,
    })
}

fn version_text(cx: &Cx<'_>, pointer: &str, v: &Value) -> Option<String> {
    match v {
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        Value::Number(_) => cx.doc.float_text(pointer).map(str::to_owned),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A version as written: where it is, its number, its shorthand payload, its JSON Schema.
type RawVersion<'a> = (
    String,
    Option<&'a Value>,
    Option<&'a Value>,
    Option<&'a Value>,
);

fn resolve_type(cx: &mut Cx<'_>, name: &str, t: &TypeModel, topic: String) -> Option<EventType> {
    let base = format!("/types/{}", pointer_token(name));
    let mut ok = true;
    let mut raw_versions: Vec<RawVersion<'_>> = Vec::new();
    match &t.versions {
        Some(list) => {
            if t.version.is_some() || t.payload.is_some() || t.schema.is_some() {
                cx.error(&base, code::VERSIONS_AND_SCHEMA, format!("type {name} has both `versions` and a top-level version/payload/schema"), "keep one: `versions:` for several versions, or `version` with `payload`/`schema`");
                ok = false;
            }
            if list.is_empty() {
                cx.error(
                    &format!("{base}/versions"),
                    code::MISSING_SCHEMA,
                    format!("{name} lists no versions"),
                    "add at least one `- version: 1` with a `payload` or `schema`",
                );
                ok = false;
            }
            for (i, v) in list.iter().enumerate() {
                raw_versions.push((
                    format!("{base}/versions/{i}"),
                    Some(&v.version),
                    v.payload.as_ref(),
                    v.schema.as_ref(),
                ));
            }
        }
        None => raw_versions.push((
            base.clone(),
            t.version.as_ref(),
            t.payload.as_ref(),
            t.schema.as_ref(),
        )),
    }
    let mut versions = Vec::new();
    for (at, version, payload, schema) in raw_versions {
        let version = match version {
            None => Version::parse("1"),
            Some(v) => {
                let vp = format!("{at}/version");
                match version_text(cx, &vp, v).and_then(|s| Version::parse(&s)) {
                    Some(v) => Some(v),
                    None => {
                        cx.error(
                            &vp,
                            code::INVALID_VERSION,
                            format!("version {v} of {name} is not MAJOR[.MINOR[.PATCH]]"),
                            "write e.g. 1, 1.2 or \"1.0.0\"",
                        );
                        None
                    }
                }
            }
        };
        let schema = match (payload, schema) {
            (Some(p), None) => match shorthand::expand(p) {
                Ok(s) => Some(s),
                Err(errors) => {
                    for e in errors {
                        cx.error(&format!("{at}/payload{}", e.pointer), code::INVALID_SHORTHAND, e.message, "see the shorthand table in docs/catalog-format.md, or use `schema:` with JSON Schema");
                    }
                    None
                }
            },
            (None, Some(s)) => Some(s.clone()),
            (Some(_), Some(_)) => {
                cx.error(
                    &at,
                    code::SCHEMA_AND_PAYLOAD,
                    format!("{name} has both `payload` and `schema`"),
                    "keep one: `payload` (shorthand) or `schema` (JSON Schema)",
                );
                None
            }
            (None, None) => {
                cx.error(
                    &at,
                    code::MISSING_SCHEMA,
                    format!("{name} declares no payload"),
                    "add `payload:` in shorthand or `schema:` with JSON Schema",
                );
                None
            }
        };
        let schema_pointer = if payload.is_some() {
            format!("{at}/payload")
        } else {
            format!("{at}/schema")
        };
        let (Some(version), Some(schema)) = (version, schema) else {
            ok = false;
            continue;
        };
        let validator = match compile(&schema) {
            Ok(v) => Some(Arc::new(v)),
            Err(msg) => {
                cx.error(&schema_pointer, code::INVALID_SCHEMA, format!("the payload schema of {name} {version} is not valid JSON Schema 2020-12: {msg}"), "fix the schema; `canon catalog show FILE TYPE` prints the expanded form");
                None
            }
        };
        versions.push(PayloadVersion {
            version,
            schema,
            validator,
            fast: None,
            base: at,
            pointer: schema_pointer,
            shorthand: payload.is_some(),
        });
    }
    let deprecated = t.deprecated.clone().and_then(|d| match d {
        DeprecationModel::Flag(false) => None,
        DeprecationModel::Flag(true) => Some(Deprecation::default()),
        DeprecationModel::Reason(r) => Some(Deprecation {
            reason: Some(r),
            ..Deprecation::default()
        }),
        DeprecationModel::Detailed(d) => Some(Deprecation {
            reason: d.reason,
            replaced_by: d.replaced_by,
            since: d
                .since
                .as_ref()
                .and_then(|v| version_text(cx, &format!("{base}/deprecated/since"), v)),
        }),
    });
    let personal_data: BTreeMap<FieldPath, PiiRule> = t
        .personal_data
        .iter()
        .map(|(k, v)| (FieldPath::parse(k), *v))
        .collect();
    for pv in &mut versions {
        if pv.validator.is_some() {
            pv.fast = FastCheck::compile(&pv.schema, &personal_data).map(Arc::new);
        }
    }
    ok.then(|| EventType {
        name: name.to_owned(),
        summary: t.summary.clone(),
        producers: t.producers.clone(),
        consumers: t.consumers.clone(),
        topic,
        aggregate: t.aggregate.as_deref().map(FieldPath::parse),
        idempotency: t
            .idempotency
            .as_deref()
            .map(|s| s.split('+').map(FieldPath::parse).collect())
            .unwrap_or_default(),
        personal_data,
        consent: t.consent.clone(),
        handlers: t.handlers.clone().unwrap_or_default(),
        deprecated,
        versions,
    })
}

/// Checks a schema against the 2020-12 meta-schema and compiles it, with formats asserted.
pub(crate) fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    // Building checks the schema against the meta-schema first.
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| format!("{e} (at {})", e.instance_path()))
}
