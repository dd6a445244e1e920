//! The in-process dispatcher: handlers per type and version range; every compatible handler
//! runs, isolated from the others; events emitted by handlers are dispatched in turn.

use std::any::TypeId;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use canon_catalog::Catalog;
use canon_envelope::{CloudEvent, Data, ExtValue, ext};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use semver::VersionReq;

use crate::context::{AsyncContext, Context, Pending};
use crate::event::{Event, Invalid};
use crate::id::{EventId, Meta};
use crate::log::{EventLog, LogEntry, LogOutcome};
use crate::privacy::{AuditOutcome, AuditRecord, AuditSink, ConsentProvider, EventView};
use crate::raw::{Dyn, RawEvent};

/// A handler's error. Anything that implements `std::error::Error` converts with `?`
/// (including `anyhow::Error`).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// An error meaning "this event can never be handled": remote consumers dead-letter it at
/// once instead of retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rejected: {0}")]
pub struct Reject(pub String);

/// Names a registered handler, for [`Dispatcher::off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

/// Why a handler could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Another handler of the same type has this name. Names identify handlers in reports,
    /// audit records, inbox keys and emitted event ids: give each its own.
    #[error("a handler named {handler} is already registered for {ty}")]
    DuplicateName {
        /// The handler's name.
        handler: String,
        /// The type.
        ty: String,
    },
    /// The version range does not parse. Use Cargo's syntax: `>=1.0, <2.0`, `^1`, `*`.
    #[error("version range {range:?} of handler {handler}: {source}")]
    Range {
        /// The handler's name.
        handler: String,
        /// The range as given.
        range: String,
        /// The parser's complaint.
        source: semver::Error,
    },
}

type SyncFn = dyn Fn(&dyn Dyn, &mut Context<'_>) -> HandlerResult + Send + Sync;
type AsyncFn =
    dyn Fn(Arc<dyn Dyn>, AsyncContext) -> BoxFuture<'static, HandlerResult> + Send + Sync;

struct Entry {
    id: u64,
    name: Arc<str>,
    req: VersionReq,
    run: Run,
}

enum Run {
    Sync(Box<SyncFn>),
    Async(Box<AsyncFn>),
}

/// Handlers by type. Replaced whole on every change, so a dispatch reads one snapshot.
#[derive(Default, Clone)]
struct Registry {
    by_type: HashMap<String, Arc<[Arc<Entry>]>, Fx>,
    /// The same lists keyed by the Rust types typed handlers were registered for: the
    /// typed publish path finds its handlers without hashing and comparing a string.
    by_rust_type: HashMap<TypeId, Arc<[Arc<Entry>]>, Fx>,
    rust_types: Vec<(TypeId, &'static str)>,
    /// What the first typed handler of each type knows about it.
    facts: HashMap<String, TypeFacts, Fx>,
}

/// A type's consent purpose, personal data and handler rules, from its `Event` constants.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TypeFacts {
    pub(crate) consent: Option<&'static str>,
    pub(crate) personal_data: bool,
    pub(crate) rules: crate::event::HandlerRules,
}

impl Registry {
    fn entries(&self, ty: &str) -> &[Arc<Entry>] {
        self.by_type.get(ty).map_or(&[], |e| e)
    }

    fn typed_entries<E: Event>(&self) -> &[Arc<Entry>] {
        match self.by_rust_type.get(&TypeId::of::<E>()) {
            Some(e) => e,
            None => self.entries(E::TYPE),
        }
    }

    fn reindex(&mut self) {
        self.by_rust_type = self
            .rust_types
            .iter()
            .filter_map(|(id, ty)| Some((*id, Arc::clone(self.by_type.get(*ty)?))))
            .collect();
    }
}

/// A multiply-rotate hash over 8-byte words (as rustc's FxHash): type names are short and
/// registered in code, so a keyed hash buys nothing, and this one costs a few nanoseconds per
/// lookup instead of SipHash's twenty.
#[derive(Default, Clone, Copy)]
struct Fx;

impl std::hash::BuildHasher for Fx {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }
    fn write_u64(&mut self, w: u64) {
        self.add(w);
    }
}

pub(crate) struct Inner {
    registry: RwLock<Arc<Registry>>,
    next_id: AtomicU64,
    pub(crate) catalogs: Vec<Catalog>,
    pub(crate) validate: bool,
    consent: Option<Box<dyn ConsentProvider>>,
    audit: Option<Box<dyn AuditSink>>,
    log: Option<EventLog>,
    dispatch_emitted: bool,
    max_depth: u32,
}

/// Dispatches events to the handlers registered for their type and version. Cloning shares
/// the dispatcher.
///
/// - Every handler whose version range accepts the event runs; an event no handler accepts
///   is reported (`Report::unhandled`), never dropped silently.
/// - A handler that fails or panics never stops the others; its error is in the report.
/// - Events a handler emits get `causationid` and `correlationid` from the event it handles,
///   are checked against the handled type's side-effect rules, and are released only when that
///   handler succeeds; then they are dispatched in turn (unless `dispatch_emitted(false)`).
/// - `publish` runs everything on the calling thread (async handlers are driven to completion
///   there): the synchronous mode, for fast tests and sync code. `publish_async` awaits the
///   async handlers of an event concurrently.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reg = self.registry();
        f.debug_struct("Dispatcher")
            .field("types", &reg.by_type.keys().collect::<Vec<_>>())
            .field("catalogs", &self.inner.catalogs.len())
            .finish_non_exhaustive()
    }
}

impl Default for Dispatcher {
    fn default() -> Self {
        Dispatcher::new()
    }
}

/// Settings of a [`Dispatcher`].
pub struct Builder {
    inner: Inner,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder").finish_non_exhaustive()
    }
}

impl Builder {
    /// Adds a catalog: its handler rules, consent purposes and personal data apply to raw
    /// events, and its rules to typed events too.
    pub fn catalog(mut self, catalog: Catalog) -> Self {
        self.inner.catalogs.push(catalog);
        self
    }

    /// Validates every published and emitted typed event against its catalog first (off by
    /// default: generated types already hold the catalog's shape). An invalid event runs no
    /// handler; an invalid emit is refused.
    pub fn validate(mut self, on: bool) -> Self {
        self.inner.validate = on;
        self
    }

    /// Consults `provider` before running handlers of a type that declares a consent purpose.
    /// Without a provider, handlers of such types never run (their events are reported as
    /// skipped): consent cannot be assumed.
    pub fn consent(mut self, provider: impl ConsentProvider) -> Self {
        self.inner.consent = Some(Box::new(provider));
        self
    }

    /// Records every processing of an event whose type holds personal data.
    pub fn audit(mut self, sink: impl AuditSink) -> Self {
        self.inner.audit = Some(Box::new(sink));
        self
    }

    /// Records every dispatched event in `log`.
    pub fn log(mut self, log: EventLog) -> Self {
        self.inner.log = Some(log);
        self
    }

    /// Whether emitted events are dispatched here too (default true). A remote consumer turns
    /// it off and publishes them to the server instead.
    pub fn dispatch_emitted(mut self, on: bool) -> Self {
        self.inner.dispatch_emitted = on;
        self
    }

    /// The longest chain of emits dispatched (default 64); deeper emits fail, which stops a
    /// handler loop the catalog's rules did not forbid.
    pub fn max_depth(mut self, depth: u32) -> Self {
        self.inner.max_depth = depth;
        self
    }

    /// The dispatcher.
    pub fn build(self) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(self.inner),
        }
    }
}

/// A synchronous handler implemented as a type.
pub trait Handler<E: Event>: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: &E, cx: &mut Context<'_>) -> HandlerResult;
}

/// An asynchronous handler implemented as a type.
pub trait AsyncHandler<E: Event>: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: Arc<E>, cx: AsyncContext)
    -> impl Future<Output = HandlerResult> + Send;
}

impl Dispatcher {
    /// A dispatcher with default settings.
    pub fn new() -> Dispatcher {
        Dispatcher::builder().build()
    }

    /// Settings first.
    pub fn builder() -> Builder {
        Builder {
            inner: Inner {
                registry: RwLock::default(),
                next_id: AtomicU64::new(1),
                catalogs: Vec::new(),
                validate: false,
                consent: None,
                audit: None,
                log: None,
                dispatch_emitted: true,
                max_depth: 64,
            },
        }
    }

    /// The catalogs given to the builder.
    pub fn catalogs(&self) -> &[Catalog] {
        &self.inner.catalogs
    }

    /// Registers a synchronous closure for `E` events whose version is in `versions`
    /// (Cargo's syntax: `>=1.0, <2.0`, `^1`, `*`). An event of another Rust type with the same
    /// type name (another version's struct, or a raw event) is decoded into `E` first.
    pub fn on<E, F>(&self, name: &str, versions: &str, f: F) -> Result<HandlerId, RegisterError>
    where
        E: Event,
        F: Fn(&E, &mut Context<'_>) -> HandlerResult + Send + Sync + 'static,
    {
        let run = move |ev: &dyn Dyn, cx: &mut Context<'_>| match ev.as_any().downcast_ref::<E>() {
            Some(e) => f(e, cx),
            None => f(&decode::<E>(ev)?, cx),
        };
        self.add_typed::<E>(name, versions, Run::Sync(Box::new(run)))
    }

    /// Registers a [`Handler`] implementation.
    pub fn register<E: Event>(
        &self,
        name: &str,
        versions: &str,
        handler: impl Handler<E>,
    ) -> Result<HandlerId, RegisterError> {
        self.on::<E, _>(name, versions, move |e, cx| handler.handle(e, cx))
    }

    /// Registers an asynchronous closure; see [`Dispatcher::on`].
    pub fn on_async<E, F, Fut>(
        &self,
        name: &str,
        versions: &str,
        f: F,
    ) -> Result<HandlerId, RegisterError>
    where
        E: Event,
        F: Fn(Arc<E>, AsyncContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let run = move |ev: Arc<dyn Dyn>, cx: AsyncContext| -> BoxFuture<'static, HandlerResult> {
            let typed = match Arc::clone(&ev).into_any().downcast::<E>() {
                Ok(e) => Ok(e),
                Err(_) => decode::<E>(ev.as_ref()).map(Arc::new),
            };
            match typed {
                Ok(e) => f(e, cx).boxed(),
                Err(err) => std::future::ready(Err(err)).boxed(),
            }
        };
        self.add_typed::<E>(name, versions, Run::Async(Box::new(run)))
    }

    /// Registers an [`AsyncHandler`] implementation.
    pub fn register_async<E: Event>(
        &self,
        name: &str,
        versions: &str,
        handler: impl AsyncHandler<E>,
    ) -> Result<HandlerId, RegisterError> {
        let handler = Arc::new(handler);
        self.on_async::<E, _, _>(name, versions, move |e, cx| {
            let h = Arc::clone(&handler);
            async move { h.handle(e, cx).await }
        })
    }

    /// Registers a closure that takes the payload as JSON, for a type named at run time.
    pub fn on_json<F>(
        &self,
        name: &str,
        ty: &str,
        versions: &str,
        f: F,
    ) -> Result<HandlerId, RegisterError>
    where
        F: Fn(&serde_json::Value, &mut Context<'_>) -> HandlerResult + Send + Sync + 'static,
    {
        let run = move |ev: &dyn Dyn, cx: &mut Context<'_>| {
            let payload: serde_json::Value = serde_json::from_str(&ev.payload_json()?)?;
            f(&payload, cx)
        };
        self.add(name, ty, versions, Run::Sync(Box::new(run)))
    }

    fn add_typed<E: Event>(
        &self,
        name: &str,
        versions: &str,
        run: Run,
    ) -> Result<HandlerId, RegisterError> {
        let id = self.add(name, E::TYPE, versions, run)?;
        self.change(|reg| {
            let key = (TypeId::of::<E>(), E::TYPE);
            if !reg.rust_types.contains(&key) {
                reg.rust_types.push(key);
            }
            reg.facts
                .entry(E::TYPE.to_owned())
                .or_insert_with(|| TypeFacts {
                    consent: E::CONSENT,
                    personal_data: E::PERSONAL_DATA,
                    rules: E::RULES,
                });
        });
        Ok(id)
    }

    fn add(
        &self,
        name: &str,
        ty: &str,
        versions: &str,
        run: Run,
    ) -> Result<HandlerId, RegisterError> {
        let req = VersionReq::parse(versions).map_err(|source| RegisterError::Range {
            handler: name.to_owned(),
            range: versions.to_owned(),
            source,
        })?;
        if self.registry().entries(ty).iter().any(|e| &*e.name == name) {
            return Err(RegisterError::DuplicateName {
                handler: name.to_owned(),
                ty: ty.to_owned(),
            });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            id,
            name: name.into(),
            req,
            run,
        });
        self.change(|reg| {
            let mut list: Vec<Arc<Entry>> = reg.entries(ty).to_vec();
            list.push(entry);
            reg.by_type.insert(ty.to_owned(), list.into());
        });
        Ok(HandlerId(id))
    }

    /// Unregisters a handler; false if it was not registered.
    pub fn off(&self, id: HandlerId) -> bool {
        let mut found = false;
        self.change(|reg| {
            for list in reg.by_type.values_mut() {
                if list.iter().any(|e| e.id == id.0) {
                    found = true;
                    *list = list.iter().filter(|e| e.id != id.0).cloned().collect();
                }
            }
            reg.by_type.retain(|_, l| !l.is_empty());
        });
        found
    }

    /// Unregisters every handler.
    pub fn clear(&self) {
        self.change(|reg| reg.by_type.clear());
    }

    /// How many handlers are registered for a type name.
    pub fn handlers_of(&self, ty: &str) -> usize {
        self.registry().entries(ty).len()
    }

    fn change(&self, f: impl FnOnce(&mut Registry)) {
        let mut guard = self
            .inner
            .registry
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Registry::clone(&guard);
        f(&mut next);
        next.reindex();
        *guard = Arc::new(next);
    }

    fn registry(&self) -> Arc<Registry> {
        Arc::clone(
            &self
                .inner
                .registry
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Dispatches an event published here, synchronously: every handler runs on this thread
    /// before it returns.
    pub fn publish<E: Event>(&self, event: E) -> Report {
        self.publish_with(event, Meta::root())
    }

    /// [`Dispatcher::publish`] with given envelope facts (an actor, a correlation id).
    pub fn publish_with<E: Event>(&self, event: E, meta: Meta) -> Report {
        let reg = self.registry();
        let all = reg.typed_entries::<E>();
        if all.iter().any(|e| matches!(e.run, Run::Async(_))) {
            self.run_blocking(all, Ev::Shared(Arc::new(event)), meta)
        } else {
            self.run_blocking(all, Ev::Borrowed(&event), meta)
        }
    }

    /// Dispatches an event published here; the async handlers of each event run concurrently.
    pub async fn publish_async<E: Event>(&self, event: E) -> Report {
        let local = self.inner.dispatch_emitted;
        self.dispatch_shared(Arc::new(event), Meta::root(), local)
            .await
    }

    /// Dispatches an event that arrived from elsewhere (a server, a broker). Its envelope
    /// facts come from the CloudEvent: id, `correlationid` (else the id), `causationid`,
    /// `actor`, `time`.
    pub async fn dispatch(&self, event: RawEvent) -> Report {
        let local = self.inner.dispatch_emitted;
        self.dispatch_raw(event, local).await
    }

    /// Dispatches a raw event; its emits are dispatched here too only if `local` (remote
    /// runners publish them to the server instead, whatever the builder said).
    pub(crate) async fn dispatch_raw(&self, event: RawEvent, local: bool) -> Report {
        let meta = meta_of(event.cloud_event());
        let event = self.with_facts(&self.registry(), event);
        self.dispatch_shared(Arc::new(event), meta, local).await
    }

    /// A raw event whose type no catalog declares takes its consent purpose, personal data
    /// and handler rules from the typed handlers registered for it, so that privacy and
    /// rules hold for remote events even without a catalog.
    fn with_facts(&self, reg: &Registry, mut event: RawEvent) -> RawEvent {
        if !event.known()
            && let Some(facts) = reg.facts.get(event.dispatch_type())
        {
            event.adopt(facts);
        }
        event
    }

    /// [`Dispatcher::dispatch`], synchronously.
    pub fn dispatch_blocking(&self, event: RawEvent) -> Report {
        let meta = meta_of(event.cloud_event());
        let reg = self.registry();
        let event = self.with_facts(&reg, event);
        let all = reg.entries(event.dispatch_type());
        self.run_blocking(all, Ev::Shared(Arc::new(event)), meta)
    }

    fn run_blocking(&self, all: &[Arc<Entry>], ev: Ev<'_>, meta: Meta) -> Report {
        let mut round = self.round(ev.as_dyn(), &meta);
        self.begin(&mut round, all, ev.as_dyn(), &meta);
        let waiting = std::mem::take(&mut round.waiting);
        for entry in &waiting {
            let (cx, emitted) = self.async_cx(&ev.to_arc(), &meta, entry);
            let run = match &entry.run {
                Run::Async(f) => start_async(f, ev.to_arc(), cx),
                Run::Sync(_) => continue,
            };
            let result = futures_executor::block_on(AssertUnwindSafe(run).catch_unwind());
            self.settle(&mut round, ev.as_dyn(), &meta, entry, result, &emitted);
        }
        let pending = self.finish(&mut round, ev.as_dyn(), &meta);
        if pending.is_empty() {
            return round.report;
        }
        for p in pending {
            let report = self.dispatch_emitted_blocking(p.event.clone(), p.meta.clone());
            round.report.emitted.push(Emission::new(p, report));
        }
        round.report
    }

    fn dispatch_emitted_blocking(&self, event: Arc<dyn Dyn>, meta: Meta) -> Option<Report> {
        if !self.inner.dispatch_emitted {
            return None;
        }
        let reg = self.registry();
        let all = reg.entries(event.dispatch_ty());
        Some(self.run_blocking(all, Ev::Shared(event), meta))
    }

    fn dispatch_shared(
        &self,
        ev: Arc<dyn Dyn>,
        meta: Meta,
        local: bool,
    ) -> BoxFuture<'static, Report> {
        let this = self.clone();
        async move {
            let reg = this.registry();
            let mut round = this.round(ev.as_ref(), &meta);
            this.begin(
                &mut round,
                reg.entries(ev.dispatch_ty()),
                ev.as_ref(),
                &meta,
            );
            let waiting = std::mem::take(&mut round.waiting);
            type Running =
                BoxFuture<'static, (std::thread::Result<HandlerResult>, Arc<Mutex<Vec<Pending>>>)>;
            let mut runs: Vec<Running> = Vec::with_capacity(waiting.len());
            for entry in &waiting {
                let (cx, emitted) = this.async_cx(&ev, &meta, entry);
                if let Run::Async(f) = &entry.run {
                    runs.push(
                        AssertUnwindSafe(start_async(f, Arc::clone(&ev), cx))
                            .catch_unwind()
                            .map(move |r| (r, emitted))
                            .boxed(),
                    );
                }
            }
            let results = futures_util::future::join_all(runs).await;
            for (entry, (result, emitted)) in waiting.iter().zip(results) {
                this.settle(&mut round, ev.as_ref(), &meta, entry, result, &emitted);
            }
            let pending = this.finish(&mut round, ev.as_ref(), &meta);
            for p in pending {
                let report = if local {
                    Some(
                        this.dispatch_shared(p.event.clone(), p.meta.clone(), true)
                            .await,
                    )
                } else {
                    None
                };
                round.report.emitted.push(Emission::new(p, report));
            }
            round.report
        }
        .boxed()
    }

    fn async_cx(
        &self,
        ev: &Arc<dyn Dyn>,
        meta: &Meta,
        entry: &Arc<Entry>,
    ) -> (AsyncContext, Arc<Mutex<Vec<Pending>>>) {
        let emitted = Arc::new(Mutex::new(Vec::new()));
        let cx = AsyncContext {
            meta: meta.clone(),
            handled: Arc::clone(ev),
            handler: Arc::clone(&entry.name),
            inner: Arc::clone(&self.inner),
            emitted: Arc::clone(&emitted),
        };
        (cx, emitted)
    }

    /// Checks, consent, and the synchronous handlers; the async ones are left in `waiting`.
    fn round(&self, ev: &dyn Dyn, meta: &Meta) -> Round {
        Round {
            report: Report::new(meta.id.clone(), ev.ty(), ev.version()),
            waiting: Vec::new(),
            pending: Vec::new(),
            outcome: self.inner.log.as_ref().map(|_| Box::default()),
        }
    }

    fn begin(&self, round: &mut Round, all: &[Arc<Entry>], ev: &dyn Dyn, meta: &Meta) {
        if meta.depth > self.inner.max_depth {
            round.report.failures.push(HandlerFailure {
                handler: "canon-sdk".into(),
                error: format!(
                    "emit chain deeper than {} events (correlation {}): a handler loop?",
                    self.inner.max_depth, meta.correlation_id
                )
                .into(),
                panicked: false,
            });
            return;
        }
        let version = ev.semver();
        let accepts = |e: &&Arc<Entry>| version.is_some_and(|v| e.req.matches(v));
        if !all.iter().any(|e| accepts(&e)) {
            round.report.unhandled = true;
            tracing::warn!(
                event.id = %meta.id, event.r#type = ev.ty_str(), version = %ev.version(),
                "no handler's version range accepts this event"
            );
            return;
        }
        if self.inner.validate
            && let Some(typed_invalid) = validate_dyn(&self.inner.catalogs, ev)
        {
            round.report.invalid = Some(typed_invalid);
            return;
        }
        // Without a provider nobody can have consented: handlers of such a type do not run.
        if let Some(purpose) = ev.consent()
            && !self
                .inner
                .consent
                .as_ref()
                .is_some_and(|p| p.allows(purpose, &EventView { meta, event: ev }))
        {
            round.report.skipped = Some(purpose.to_owned());
            for entry in all.iter().filter(accepts) {
                self.audit(
                    ev,
                    meta,
                    entry,
                    AuditOutcome::Skipped {
                        purpose: purpose.to_owned(),
                    },
                );
            }
            return;
        }
        for entry in all.iter().filter(accepts) {
            let f = match &entry.run {
                Run::Sync(f) => f,
                Run::Async(_) => {
                    round.waiting.push(Arc::clone(entry));
                    continue;
                }
            };
            let mut emitted = Vec::new();
            let result = catch_unwind(AssertUnwindSafe(|| {
                let mut cx = Context {
                    meta,
                    handled: ev,
                    handler: &entry.name,
                    inner: &self.inner,
                    emitted: &mut emitted,
                };
                f(ev, &mut cx)
            }));
            self.record(round, ev, meta, entry, result, emitted);
        }
    }

    fn settle(
        &self,
        round: &mut Round,
        ev: &dyn Dyn,
        meta: &Meta,
        entry: &Arc<Entry>,
        result: std::thread::Result<HandlerResult>,
        emitted: &Mutex<Vec<Pending>>,
    ) {
        let emitted = std::mem::take(&mut *emitted.lock().unwrap_or_else(PoisonError::into_inner));
        self.record(round, ev, meta, entry, result, emitted);
    }

    fn record(
        &self,
        round: &mut Round,
        ev: &dyn Dyn,
        meta: &Meta,
        entry: &Arc<Entry>,
        result: std::thread::Result<HandlerResult>,
        emitted: Vec<Pending>,
    ) {
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some((error, false)),
            Err(panic) => Some((panic_message(panic).into(), true)),
        };
        match failure {
            None => {
                round.report.handled += 1;
                // Emits are released only by a handler that succeeded.
                round.pending.extend(emitted);
                if let Some(o) = &mut round.outcome {
                    o.handled_by.push(Arc::clone(&entry.name));
                }
                self.audit(ev, meta, entry, AuditOutcome::Processed);
            }
            Some((error, panicked)) => {
                let message = error.to_string();
                tracing::warn!(
                    event.id = %meta.id, event.r#type = ev.ty_str(), handler = %entry.name,
                    panicked, error = %message, "handler failed"
                );
                if let Some(o) = &mut round.outcome {
                    o.failed.push((Arc::clone(&entry.name), message.clone()));
                }
                self.audit(ev, meta, entry, AuditOutcome::Failed(message));
                round.report.failures.push(HandlerFailure {
                    handler: Arc::clone(&entry.name),
                    error,
                    panicked,
                });
            }
        }
    }

    #[inline]
    fn audit(&self, ev: &dyn Dyn, meta: &Meta, entry: &Entry, outcome: AuditOutcome) {
        if let Some(sink) = &self.inner.audit
            && ev.personal_data()
        {
            sink.record(AuditRecord {
                handler: Arc::clone(&entry.name),
                actor: meta.actor.clone(),
                event_id: meta.id.clone(),
                ty: ev.ty(),
                version: ev.version(),
                at: SystemTime::now(),
                outcome,
            });
        }
    }

    /// Logs the event and hands back what its handlers emitted.
    fn finish(&self, round: &mut Round, ev: &dyn Dyn, meta: &Meta) -> Vec<Pending> {
        if let Some(log) = &self.inner.log {
            let mut outcome = *round.outcome.take().unwrap_or_default();
            outcome.unhandled = round.report.unhandled;
            outcome.skipped.clone_from(&round.report.skipped);
            log.push(LogEntry {
                meta: meta.clone(),
                ty: ev.ty(),
                version: ev.version(),
                payload: ev
                    .payload_json()
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_default(),
                outcome,
            });
        }
        std::mem::take(&mut round.pending)
    }
}

/// The event being dispatched: on the caller's stack, or shared (async handlers need it).
enum Ev<'a> {
    Borrowed(&'a dyn Dyn),
    Shared(Arc<dyn Dyn>),
}

impl Ev<'_> {
    fn as_dyn(&self) -> &dyn Dyn {
        match self {
            Ev::Borrowed(e) => *e,
            Ev::Shared(e) => e.as_ref(),
        }
    }

    /// Only called for events with async handlers, which are always shared.
    fn to_arc(&self) -> Arc<dyn Dyn> {
        match self {
            Ev::Shared(e) => Arc::clone(e),
            Ev::Borrowed(_) => unreachable!("events with async handlers are dispatched shared"),
        }
    }
}

struct Round {
    report: Report,
    waiting: Vec<Arc<Entry>>,
    pending: Vec<Pending>,
    outcome: Option<Box<LogOutcome>>,
}

/// Checks an event against the catalog that declares its type, if one does.
pub(crate) fn validate_dyn(catalogs: &[Catalog], ev: &dyn Dyn) -> Option<Invalid> {
    let catalog = catalogs.iter().find(|c| c.lookup(ev.ty_str()).is_some())?;
    let mut ce = CloudEvent::new("validation", "canon-sdk", ev.ty_str());
    ce.data = ev.payload_json().ok().and_then(|s| Data::json(s).ok());
    ce.extensions.insert(
        ext::DATA_VERSION.to_owned(),
        ExtValue::String(ev.version().into_owned()),
    );
    let violations = catalog.validate(&ce);
    (!violations.is_empty()).then_some(Invalid(violations))
}

/// Calls an async handler's closure; a panic in its synchronous part becomes a future that
/// panics when polled, so it is caught and reported like any other.
fn start_async(
    f: &AsyncFn,
    ev: Arc<dyn Dyn>,
    cx: AsyncContext,
) -> BoxFuture<'static, HandlerResult> {
    match catch_unwind(AssertUnwindSafe(|| f(ev, cx))) {
        Ok(fut) => fut,
        Err(panic) => async move { std::panic::resume_unwind(panic) }.boxed(),
    }
}

fn decode<E: Event>(ev: &dyn Dyn) -> Result<E, HandlerError> {
    let json = ev.payload_json()?;
    serde_json::from_str(&json).map_err(|e| {
        format!(
            "cannot read {} version {} as {}: {e}",
            ev.ty_str(),
            ev.version(),
            std::any::type_name::<E>()
        )
        .into()
    })
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".to_owned());
    format!("handler panicked: {text}")
}

pub(crate) fn meta_of(ce: &CloudEvent) -> Meta {
    let id = EventId::from(ce.id.as_str());
    let time = ce.time_value().map(SystemTime::from);
    Meta {
        correlation_id: ce
            .correlation_id()
            .map(EventId::from)
            .unwrap_or_else(|| id.clone()),
        causation_id: ce.causation_id().map(EventId::from),
        actor: ce.actor().map(Arc::from),
        id,
        time,
        depth: 0,
    }
}

/// What happened when an event was dispatched.
#[must_use]
#[derive(Debug)]
pub struct Report {
    /// The event's id.
    pub event_id: EventId,
    /// Its type.
    pub ty: Cow<'static, str>,
    /// Its payload version.
    pub version: Cow<'static, str>,
    /// How many handlers ran and succeeded.
    pub handled: usize,
    /// Handlers that failed or panicked.
    pub failures: Vec<HandlerFailure>,
    /// No handler's version range accepted the event (or its version is not a version).
    pub unhandled: bool,
    /// No handler ran: consent for this purpose was refused.
    pub skipped: Option<String>,
    /// No handler ran: the event does not satisfy its catalog (with `validate(true)`).
    pub invalid: Option<Invalid>,
    /// Events the handlers emitted, each with its own report when dispatched here.
    pub emitted: Vec<Emission>,
}

impl Report {
    fn new(event_id: EventId, ty: Cow<'static, str>, version: Cow<'static, str>) -> Report {
        Report {
            event_id,
            ty,
            version,
            handled: 0,
            failures: Vec::new(),
            unhandled: false,
            skipped: None,
            invalid: None,
            emitted: Vec::new(),
        }
    }

    /// True when every handler of this event and of every event it caused succeeded, and
    /// each of those events had a handler.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
            && !self.unhandled
            && self.invalid.is_none()
            && self
                .emitted
                .iter()
                .all(|e| e.report.as_ref().is_none_or(Report::is_ok))
    }

    /// Every event this dispatch touched, depth first: this one, then what it caused.
    pub fn walk(&self) -> Vec<&Report> {
        let mut out = vec![self];
        for e in &self.emitted {
            if let Some(r) = &e.report {
                out.extend(r.walk());
            }
        }
        out
    }

    /// Whether a failure of this event (not of the events it caused) is a [`Reject`].
    pub fn rejected(&self) -> bool {
        self.failures.iter().any(|f| f.error.is::<Reject>())
    }
}

/// A handler that failed.
#[derive(Debug)]
pub struct HandlerFailure {
    /// The handler's name.
    pub handler: Arc<str>,
    /// Its error (a panic's message for a panic).
    pub error: HandlerError,
    /// Whether it panicked.
    pub panicked: bool,
}

/// An event a handler emitted.
pub struct Emission {
    event: Arc<dyn Dyn>,
    /// Its envelope facts (causation and correlation included).
    pub meta: Meta,
    /// Its type.
    pub ty: Cow<'static, str>,
    /// What happened when it was dispatched here (`None` with `dispatch_emitted(false)`).
    pub report: Option<Report>,
}

impl fmt::Debug for Emission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Emission")
            .field("ty", &self.ty)
            .field("meta", &self.meta)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl Emission {
    fn new(p: Pending, report: Option<Report>) -> Emission {
        Emission {
            ty: p.event.ty(),
            event: p.event,
            meta: p.meta,
            report,
        }
    }

    /// The event as a CloudEvent from `source`: `id`, `type`, `time`, `dataversion`,
    /// `correlationid`, `causationid`, `actor`, and the payload as JSON data.
    pub fn to_cloud_event(&self, source: &str) -> CloudEvent {
        to_cloud_event(self.event.as_ref(), &self.meta, source)
    }
}

/// A typed event as a CloudEvent, with the envelope facts of `meta`.
pub(crate) fn typed_cloud_event<E: Event>(event: &E, meta: &Meta, source: &str) -> CloudEvent {
    to_cloud_event(event, meta, source)
}

pub(crate) fn to_cloud_event(ev: &dyn Dyn, meta: &Meta, source: &str) -> CloudEvent {
    let mut ce = CloudEvent::new(meta.id.to_string(), source, ev.ty_str());
    ce.time = time::OffsetDateTime::from(meta.time.unwrap_or_else(SystemTime::now))
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    ce.data = ev.payload_json().ok().and_then(|s| Data::json(s).ok());
    let mut set = |name: &str, value: String| {
        ce.extensions
            .insert(name.to_owned(), ExtValue::String(value));
    };
    set(ext::DATA_VERSION, ev.version().into_owned());
    set(ext::CORRELATION_ID, meta.correlation_id.to_string());
    if let Some(c) = &meta.causation_id {
        set(ext::CAUSATION_ID, c.to_string());
    }
    if let Some(a) = &meta.actor {
        set(ext::ACTOR, a.to_string());
    }
    ce
}
