//! Events as the dispatcher handles them without knowing their Rust type: the object-safe
//! view shared by typed events and events that arrive as CloudEvents.

use std::any::Any;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use canon_catalog::{Catalog, HandlersModel};
use canon_envelope::{CloudEvent, Data};
use serde_json::Value;

use crate::context::{Rule, RuleBreach};
use crate::event::Event;

/// An event whose Rust type the dispatcher does not know: a CloudEvent from a server or a
/// broker. Typed handlers decode its payload into their own type.
#[derive(Debug, Clone)]
pub struct RawEvent {
    event: CloudEvent,
    /// The declared type name when the event's type carries a `.vN` suffix.
    base: Option<String>,
    version: String,
    semver: Option<semver::Version>,
    info: TypeInfo,
    payload: Arc<OnceLock<Value>>,
}

/// What the catalog says about the type of a raw event.
#[derive(Debug, Clone, Default)]
pub(crate) struct TypeInfo {
    pub(crate) consent: Option<String>,
    pub(crate) personal_data: bool,
    pub(crate) handlers: Option<HandlersModel>,
    pub(crate) aggregate: Option<String>,
    pub(crate) idempotency: Option<String>,
    /// Whether a catalog declared the type.
    pub(crate) known: bool,
}

impl RawEvent {
    /// Wraps a CloudEvent. Its version is its `dataversion` extension, else the `.vN` suffix of
    /// its type, else the lowest version its catalog declares, else `1.0.0`. With a catalog
    /// that declares the type, its consent purpose, personal data, keys and handler rules
    /// apply.
    pub fn new(event: CloudEvent, catalogs: &[Catalog]) -> RawEvent {
        let mut info = TypeInfo::default();
        let mut version = event.data_version().map(str::to_owned);
        let mut base = None;
        if let Some((ty, suffix)) = catalogs.iter().find_map(|c| c.lookup(&event.ty)) {
            info.known = true;
            if ty.name != event.ty {
                base = Some(ty.name.clone());
            }
            version = version
                .or(suffix)
                .or_else(|| ty.versions.first().map(|v| v.version.as_str().to_owned()));
            info.consent.clone_from(&ty.consent);
            info.personal_data = !ty.personal_data.is_empty();
            info.handlers = Some(ty.handlers.clone());
            if let Some(Data::Json(raw)) = &event.data
                && let Ok(payload) = serde_json::from_str::<Value>(raw.get())
            {
                info.aggregate = ty.aggregate_key(&payload).ok().flatten();
                info.idempotency = ty.idempotency_key(&payload).ok().flatten();
            }
        }
        let version = version.unwrap_or_else(|| "1.0.0".to_owned());
        RawEvent {
            base,
            semver: parse_version(&version),
            version,
            info,
            event,
            payload: Arc::default(),
        }
    }

    /// The CloudEvent.
    pub fn cloud_event(&self) -> &CloudEvent {
        &self.event
    }

    /// The payload version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The type name handlers are registered under: the declared name of a `.vN` type.
    pub fn dispatch_type(&self) -> &str {
        self.base.as_deref().unwrap_or(&self.event.ty)
    }

    pub(crate) fn known(&self) -> bool {
        self.info.known
    }

    /// Takes the consent purpose, personal data and rules of the typed handlers' type.
    pub(crate) fn adopt(&mut self, facts: &crate::dispatch::TypeFacts) {
        self.info.consent = facts.consent.map(str::to_owned);
        self.info.personal_data = facts.personal_data;
        self.info.handlers = Some(HandlersModel {
            may_emit: facts
                .rules
                .may_emit
                .map(|l| l.iter().map(|s| (*s).to_owned()).collect()),
            must_not_emit: facts
                .rules
                .must_not_emit
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            note: facts.rules.note.map(str::to_owned),
        });
    }

    /// The payload as JSON (`Null` when it is absent or not JSON).
    pub fn payload(&self) -> &Value {
        self.payload.get_or_init(|| match &self.event.data {
            Some(Data::Json(raw)) => serde_json::from_str(raw.get()).unwrap_or(Value::Null),
            _ => Value::Null,
        })
    }
}

/// Reads `MAJOR[.MINOR[.PATCH]]` (missing parts zero) or a full semantic version.
pub(crate) fn parse_version(v: &str) -> Option<semver::Version> {
    if let Ok(s) = semver::Version::parse(v) {
        return Some(s);
    }
    let mut parts = [0u64; 3];
    for (n, piece) in v.split('.').enumerate() {
        *parts.get_mut(n)? = piece.parse().ok()?;
    }
    Some(semver::Version::new(parts[0], parts[1], parts[2]))
}

/// The object-safe view of an event the dispatcher works with.
pub(crate) trait Dyn: Send + Sync + 'static {
    fn ty(&self) -> Cow<'static, str>;
    fn ty_str(&self) -> &str;
    /// The name handlers are registered under.
    fn dispatch_ty(&self) -> &str {
        self.ty_str()
    }
    fn version(&self) -> Cow<'static, str>;
    fn semver(&self) -> Option<&semver::Version>;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// The payload as JSON text.
    fn payload_json(&self) -> Result<String, serde_json::Error>;
    fn consent(&self) -> Option<&str>;
    fn personal_data(&self) -> bool;
    fn aggregate_key(&self) -> Option<String>;
    fn idempotency_key(&self) -> Option<String>;
    /// Whether a handler of this event may emit `emitted`; the catalog's rules for the type
    /// apply on top of the type's own.
    fn may_emit(&self, emitted: &str, catalogs: &[Catalog]) -> Result<(), RuleBreach>;
}

impl<E: Event> Dyn for E {
    fn ty(&self) -> Cow<'static, str> {
        Cow::Borrowed(E::TYPE)
    }
    fn ty_str(&self) -> &str {
        E::TYPE
    }
    fn version(&self) -> Cow<'static, str> {
        Cow::Borrowed(E::VERSION)
    }
    fn semver(&self) -> Option<&semver::Version> {
        const { Some(&E::SEMVER) }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn payload_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
    fn consent(&self) -> Option<&str> {
        E::CONSENT
    }
    fn personal_data(&self) -> bool {
        E::PERSONAL_DATA
    }
    fn aggregate_key(&self) -> Option<String> {
        Event::aggregate_key(self)
    }
    fn idempotency_key(&self) -> Option<String> {
        Event::idempotency_key(self)
    }
    fn may_emit(&self, emitted: &str, catalogs: &[Catalog]) -> Result<(), RuleBreach> {
        let rules = E::RULES;
        let breach = |rule| RuleBreach {
            handled: E::TYPE.to_owned(),
            emitted: emitted.to_owned(),
            rule,
            note: rules.note.map(str::to_owned),
        };
        if rules.must_not_emit.contains(&emitted) {
            return Err(breach(Rule::MustNotEmit));
        }
        if let Some(may) = rules.may_emit
            && !may.contains(&emitted)
        {
            return Err(breach(Rule::MayEmit));
        }
        catalog_rules(E::TYPE, emitted, catalogs)
    }
}

impl Dyn for RawEvent {
    fn ty(&self) -> Cow<'static, str> {
        Cow::Owned(self.event.ty.clone())
    }
    fn ty_str(&self) -> &str {
        &self.event.ty
    }
    fn dispatch_ty(&self) -> &str {
        self.dispatch_type()
    }
    fn version(&self) -> Cow<'static, str> {
        Cow::Owned(self.version.clone())
    }
    fn semver(&self) -> Option<&semver::Version> {
        self.semver.as_ref()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn payload_json(&self) -> Result<String, serde_json::Error> {
        match &self.event.data {
            Some(Data::Json(raw)) => Ok(raw.get().to_owned()),
            Some(Data::Text(t)) => serde_json::to_string(t),
            Some(Data::Binary(_)) | None => Ok("null".to_owned()),
        }
    }
    fn consent(&self) -> Option<&str> {
        self.info.consent.as_deref()
    }
    fn personal_data(&self) -> bool {
        self.info.personal_data
    }
    fn aggregate_key(&self) -> Option<String> {
        self.info.aggregate.clone()
    }
    fn idempotency_key(&self) -> Option<String> {
        self.info.idempotency.clone()
    }
    fn may_emit(&self, emitted: &str, catalogs: &[Catalog]) -> Result<(), RuleBreach> {
        if let Some(h) = &self.info.handlers {
            check_model(&self.event.ty, emitted, h)?;
        }
        catalog_rules(&self.event.ty, emitted, catalogs)
    }
}

fn catalog_rules(handled: &str, emitted: &str, catalogs: &[Catalog]) -> Result<(), RuleBreach> {
    match catalogs.iter().find_map(|c| c.lookup(handled)) {
        Some((ty, _)) => check_model(handled, emitted, &ty.handlers),
        None => Ok(()),
    }
}

fn check_model(handled: &str, emitted: &str, h: &HandlersModel) -> Result<(), RuleBreach> {
    let breach = |rule| RuleBreach {
        handled: handled.to_owned(),
        emitted: emitted.to_owned(),
        rule,
        note: h.note.clone(),
    };
    if h.must_not_emit.iter().any(|t| t == emitted) {
        return Err(breach(Rule::MustNotEmit));
    }
    if let Some(may) = &h.may_emit
        && !may.iter().any(|t| t == emitted)
    {
        return Err(breach(Rule::MayEmit));
    }
    Ok(())
}
