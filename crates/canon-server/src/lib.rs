//! `canon serve`: Canon's HTTP API over a backend.
//!
//! - [`config`]: the TOML configuration with `CANON_*` overrides.
//! - `publish`: the CloudEvents HTTP binding (structured, binary, batch) and the seed dialects.
//! - `subs`: subscriptions, pull with leases, ack/nack/extend, DLQ, replay.
//! - `query`: topics, events by id, causation chains, correlations, the catalog.
//! - `tail`: live tail as Server-Sent Events.
//! - `push`: push delivery to subscriber URLs, under the Dapr answer contract.
//! - `auth`: API keys and JWTs naming catalog services; `problem`: RFC 9457 errors;
//!   `metrics`: Prometheus; `openapi`: the OpenAPI 3.1 document, generated from the handlers.
//!
//! The server is generic over [`canon_backend::Backend`]; [`run`] opens the embedded backend.

pub mod auth;
pub mod config;
pub mod dapr;
mod files;
mod metrics;
pub mod openapi;
mod outbox;
pub mod problem;
mod publish;
mod push;
mod query;
mod storage;
mod subs;
mod tail;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use canon_backend::{Backend, BackendError};
use canon_catalog::{Catalog, Severity};
use canon_embedded::Durability;
use canon_engine::{Engine, SchemaLess};
pub use storage::{AnyBackend, Location};
use tokio::sync::watch;

use crate::auth::{Authenticator, Identity};
use crate::config::{Config, DurabilitySetting};
use crate::metrics::{CodeLabel, Metrics};
use crate::problem::Problem;
pub use crate::subs::{PushFormat, PushProtocol, PushSpec, RetrySpec, Subscription};

/// Makes jemalloc the global allocator of the binary that invokes it, with Canon's options
/// ([`alloc::OPTIONS`]). `canon` and `canon-load` invoke it at their crate root.
///
/// jemalloc, not the system allocator: glibc's malloc was a third of the HTTP publish path's
/// CPU. jemalloc, not mimalloc: mimalloc v3 returns freed memory inside `free`, on whichever
/// thread frees (tokio workers included, about 750 `madvise` calls in a 5 s latency phase),
/// while jemalloc's background thread does it off the request path (BENCHMARKS.md, "jemalloc").
#[macro_export]
macro_rules! jemalloc {
    () => {
        #[global_allocator]
        static GLOBAL: $crate::alloc::Jemalloc = $crate::alloc::Jemalloc;

        // jemalloc reads its options from this symbol at start-up; `_RJEM_MALLOC_CONF` in the
        // environment overrides them one by one.
        // SAFETY: `_rjem_malloc_conf` is the options symbol of the jemalloc that
        // tikv-jemallocator links (a `const char *` to a NUL-terminated string, which `Options`
        // is laid out as); nothing else in a binary defines it.
        #[allow(unsafe_code)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static MALLOC_CONF: $crate::alloc::Options = $crate::alloc::OPTIONS;
    };
}

/// What [`jemalloc!`] builds on.
pub mod alloc {
    pub use tikv_jemallocator::Jemalloc;

    /// A pointer to jemalloc's options, laid out as the `const char *` it reads.
    #[derive(Debug)]
    #[repr(transparent)]
    pub struct Options(*const std::ffi::c_char);

    // SAFETY: it points to a string literal, which is never written.
    #[allow(unsafe_code)]
    unsafe impl Sync for Options {}

    /// Freed memory goes back to the OS from a background thread, spread over about a second
    /// after it was freed (`dirty_decay_ms`), with `MADV_DONTNEED` at once rather than a
    /// second stage of lazily freed pages (`muzzy_decay_ms:0`). The embedded backend allocates
    /// and frees memtables at the rate events arrive (about 90 MB/s at full-rate ingest), so
    /// how soon freed memory goes back sets the process's peak RSS: 156 MB over ten million
    /// events with these options (BENCHMARKS.md).
    pub const OPTIONS: Options =
        Options(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());
}

/// The KV bucket holding subscriptions.
const SUBSCRIPTIONS: &str = "canon.subscriptions";

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// A catalog has errors.
    #[error("catalog {file}: {message}")]
    Catalog {
        /// The file.
        file: String,
        /// Its errors.
        message: String,
    },
    /// The backend failed.
    #[error("storage: {0}")]
    Backend(#[from] canon_backend::BackendError),
    /// The engine refused the catalogs.
    #[error("{0}")]
    Engine(#[from] canon_engine::EngineError),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The shared state of a running server.
pub struct App<B: Backend> {
    pub(crate) engine: Engine<B>,
    pub(crate) config: Config,
    pub(crate) auth: Authenticator,
    pub(crate) metrics: Metrics,
    /// Subscriptions by name, as stored in the backend's KV bucket.
    pub(crate) subs: RwLock<BTreeMap<String, Arc<Subscription>>>,
    /// Push workers by subscription name.
    pub(crate) pushers: std::sync::Mutex<HashMap<String, push::Worker>>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Names this server's consumers (`<host>-<pid>`).
    pub(crate) instance: String,
    /// The Dapr API's secret stores.
    pub(crate) secrets: dapr::SecretStores,
    /// Dapr resources read at start-up (declarative subscriptions).
    pub(crate) dapr_resources: dapr::apps::Resources,
    /// The Jobs API's scheduler.
    pub(crate) jobs: dapr::jobs::Scheduler,
    /// The configured Dapr apps' clients, by app id.
    pub(crate) dapr_apps: HashMap<String, dapr::apps::AppClient>,
    /// The outbox relays' tasks.
    pub(crate) relays: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<B: Backend> std::fmt::Debug for App<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

type Shared<B> = Arc<App<B>>;

impl<B: Backend> App<B> {
    /// A server over an engine.
    pub async fn new(engine: Engine<B>, mut config: Config) -> Result<Shared<B>, ServeError> {
        let auth = Authenticator::new(&config.auth).map_err(ServeError::Config)?;
        // Dapr resources: their components add pub/sub and state store names.
        let dapr_resources =
            dapr::apps::load(&config.dapr.resources).map_err(ServeError::Config)?;
        for name in &dapr_resources.pubsubs {
            if !config.dapr.pubsubs.iter().any(|p| &p.name == name) {
                config.dapr.pubsubs.push(config::PubsubConfig {
                    name: name.clone(),
                    catalogs: true,
                });
            }
        }
        for name in &dapr_resources.state_stores {
            if !config.dapr.state_stores.contains(name) {
                config.dapr.state_stores.push(name.clone());
            }
        }
        // The engine made the catalogs' topics with their settings; every other topic the
        // server knows takes its own here (creating an existing topic reconfigures it): the
        // schema-less ones, and those made while serving (Dapr, dead-letter topics) that the
        // backend already holds. A configured topic that is none of these gets its settings
        // when it is made.
        if let Some((name, _)) = std::iter::once(("topic_defaults", &config.topic_defaults))
            .chain(config.topics.iter().map(|(t, s)| (t.as_str(), s)))
            .find(|(_, s)| s.dedup_window_ms.is_some_and(|w| w < 1000))
        {
            return Err(ServeError::Config(format!(
                "{name}: dedup_window_ms is at least 1000 (JetStream counts it in seconds)"
            )));
        }
        let declared: BTreeSet<&str> = engine
            .catalogs()
            .iter()
            .flat_map(|c| c.types.values().map(|t| t.topic.as_str()))
            .collect();
        let existing = engine.backend().topics().await?;
        let mut topics: BTreeSet<&str> = config
            .schemaless_topics
            .iter()
            .chain(&existing)
            .map(String::as_str)
            .collect();
        if *engine.schemaless() == SchemaLess::All {
            topics.extend(config.topics.keys().map(String::as_str));
        }
        topics.retain(|t| !declared.contains(t));
        for t in config.topics.keys() {
            if !declared.contains(t.as_str()) && !topics.contains(t.as_str()) {
                tracing::warn!(topic = %t, "topics.{t:?}: no catalog declares it, it is not \
                    schema-less and not stored yet; its settings apply when it is made");
            }
        }
        for t in topics {
            engine.backend().create_topic(config.topic(t)).await?;
        }
        let mut subs = BTreeMap::new();
        for (name, entry) in engine.backend().kv_list(SUBSCRIPTIONS).await? {
            match serde_json::from_slice::<Subscription>(&entry.value) {
                Ok(s) => drop(subs.insert(name, Arc::new(s))),
                Err(e) => {
                    tracing::error!(subscription = %name, error = %e, "unreadable subscription record skipped");
                }
            }
        }
        let (shutdown, _) = watch::channel(false);
        let secrets =
            dapr::SecretStores::open(&config.dapr.secret_stores).map_err(ServeError::Config)?;
        let dapr_apps = dapr::apps::clients(
            &config.dapr.apps,
            Duration::from_millis(config.push.timeout_ms),
        )
        .map_err(ServeError::Config)?;
        let app = Arc::new(App {
            dapr_apps,
            secrets,
            dapr_resources,
            jobs: dapr::jobs::Scheduler::default(),
            engine,
            config,
            auth,
            metrics: Metrics::new(),
            subs: RwLock::new(subs),
            pushers: std::sync::Mutex::new(HashMap::new()),
            shutdown,
            instance: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "canon".to_owned()),
                std::process::id()
            ),
            relays: std::sync::Mutex::new(Vec::new()),
        });
        outbox::start(&app)?;
        let names: Vec<Arc<Subscription>> = app.subscriptions();
        for s in names {
            push::ensure(&app, &s);
        }
        dapr::apps::start(&app);
        dapr::jobs::start(&app).await?;
        tokio::spawn(sync_loop(Arc::downgrade(&app)));
        tokio::spawn(subs::forward_dead_letters(Arc::downgrade(&app)));
        Ok(app)
    }

    /// The engine.
    pub fn engine(&self) -> &Engine<B> {
        &self.engine
    }

    pub(crate) fn subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.subs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// A subscription by name. One this server does not know yet (another server on the same
    /// backend created it) is read from the backend.
    pub(crate) async fn subscription(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Arc<Subscription>, Problem> {
        if let Some(s) = self
            .subs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return Ok(Arc::clone(s));
        }
        let entry = self
            .engine
            .backend()
            .kv_get(SUBSCRIPTIONS, name)
            .await
            .map_err(Problem::from)?
            .ok_or_else(|| Problem::new("not-found", format!("no subscription named {name}")))?;
        let sub: Arc<Subscription> = Arc::new(
            serde_json::from_slice(&entry.value)
                .map_err(|e| Problem::new("internal", format!("subscription {name}: {e}")))?,
        );
        self.subs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), Arc::clone(&sub));
        push::ensure(self, &sub);
        Ok(sub)
    }

    /// Brings this server's subscriptions in line with the backend's, where other servers may
    /// have created or deleted some: new ones are taken up (their push workers started),
    /// deleted ones dropped (their push workers stopped).
    pub(crate) async fn sync_subscriptions(self: &Arc<Self>) -> Result<(), BackendError> {
        let stored: BTreeMap<String, Arc<Subscription>> = self
            .engine
            .backend()
            .kv_list(SUBSCRIPTIONS)
            .await?
            .into_iter()
            .filter_map(|(name, e)| Some((name, Arc::new(serde_json::from_slice(&e.value).ok()?))))
            .collect();
        let (added, gone): (Vec<Arc<Subscription>>, Vec<String>) = {
            let mut subs = self
                .subs
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let gone: Vec<String> = subs
                .keys()
                .filter(|k| !stored.contains_key(*k))
                .cloned()
                .collect();
            for g in &gone {
                subs.remove(g);
            }
            let added: Vec<Arc<Subscription>> = stored
                .into_iter()
                .filter(|(k, s)| subs.get(k) != Some(s))
                .collect::<Vec<_>>()
                .into_iter()
                .map(|(k, s)| {
                    subs.insert(k, Arc::clone(&s));
                    s
                })
                .collect();
            (added, gone)
        };
        for g in gone {
            push::remove(self, &g).await;
        }
        for s in added {
            push::remove(self, &s.name).await;
            push::ensure(self, &s);
        }
        Ok(())
    }

    /// Creates topic `name`, with its configured settings (`Config::topic`), unless it exists:
    /// how every topic made while serving is made (schema-less publishes, Dapr topics,
    /// dead-letter topics).
    pub(crate) async fn ensure_topic(&self, name: &str) -> Result<(), BackendError> {
        if self.topic_exists(name).await? {
            return Ok(());
        }
        self.engine
            .backend()
            .create_topic(self.config.topic(name))
            .await
    }

    /// Whether the backend holds topic `name`. Only `UnknownTopic` means no: any other failure
    /// is an error, not a reason to create the topic or to answer 404.
    pub(crate) async fn topic_exists(&self, name: &str) -> Result<bool, BackendError> {
        match self.engine.backend().topic_info(name).await {
            Ok(_) => Ok(true),
            Err(BackendError::UnknownTopic(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn identify(&self, headers: &HeaderMap) -> Result<Identity, Problem> {
        self.auth.identify(headers)
    }

    /// The catalog types on a topic that `service` consumes (on a schema-less topic, every type
    /// it consumes); `None`: every type.
    pub(crate) fn consumable(&self, topic: &str, service: Option<&str>) -> Option<HashSet<String>> {
        let service = service?;
        Some(
            self.engine
                .catalogs()
                .iter()
                .flat_map(|c| c.types.values())
                // A schema-less topic may carry any type (a dead-letter topic does): there a
                // service reads every type it is a declared consumer of, wherever it travels.
                .filter(|t| {
                    (t.topic == topic || self.engine.schemaless().allows(topic))
                        && t.consumers.iter().any(|c| c == service)
                })
                .map(|t| t.name.clone())
                .collect(),
        )
    }

    /// The catalog name of a type (`name.v2` → `name`), or the type itself.
    pub(crate) fn base_type<'t>(&'t self, ty: &'t str) -> &'t str {
        self.engine
            .catalog_of(ty)
            .and_then(|c| c.lookup(ty))
            .map_or(ty, |(t, _)| t.name.as_str())
    }

    /// Stops accepting work: push workers finish what they hold, then stop.
    pub async fn stop(&self) {
        let _ = self.shutdown.send(true);
        let workers: Vec<push::Worker> = self
            .pushers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, w)| w)
            .collect();
        let grace = Duration::from_millis(self.config.shutdown_grace_ms);
        for w in workers {
            w.stop(grace).await;
        }
        let relays: Vec<_> = self
            .relays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect();
        for r in relays {
            let _ = tokio::time::timeout(grace, r).await;
        }
    }
}

/// Every two seconds, takes up subscriptions and jobs other servers on the same backend
/// created, changed or deleted. Ends with the app, or when it shuts down.
async fn sync_loop<B: Backend>(app: std::sync::Weak<App<B>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        if *app.shutdown.borrow() {
            return;
        }
        if let Err(e) = app.sync_subscriptions().await {
            tracing::warn!(error = %e, "cannot read the subscriptions from the backend");
        }
        if let Err(e) = dapr::jobs::sync(&app).await {
            tracing::warn!(error = %e, "cannot read the jobs from the backend");
        }
    }
}

/// Counts refusals by code, for `/metrics`.
async fn count_refusals<B: Backend>(
    State(app): State<Shared<B>>,
    req: Request,
    next: Next,
) -> Response {
    let res = next.run(req).await;
    if res.status().is_client_error() || res.status().is_server_error() {
        let code = res
            .extensions()
            .get::<ProblemCode>()
            .map_or("other", |c| c.0);
        app.metrics.refused.get_or_create(&CodeLabel { code }).inc();
    }
    res
}

/// The code of a problem answer, for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProblemCode(pub(crate) &'static str);

/// The router with every route.
pub fn router<B: Backend>(app: Shared<B>) -> Router {
    let timeout = Duration::from_millis(app.config.request_timeout_ms);
    let limit = app.config.body_limit;
    let api = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready::<B>))
        .route("/metrics", get(metrics_text::<B>))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/events", post(publish::publish_routed::<B>))
        .route(
            "/v1/topics/{topic}/events",
            post(publish::publish_to_topic::<B>),
        )
        .merge(query::routes::<B>())
        .merge(subs::routes::<B>())
        .merge(dapr::routes::<B>())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    // Long polls and streams run past the request timeout.
    let long = Router::new()
        .route("/v1/subscriptions/{name}/pull", post(subs::pull::<B>))
        .route("/v1/topics/{topic}/tail", get(tail::tail::<B>));
    api.merge(long)
        .fallback(|| async { Problem::new("not-found", "no such route; see /openapi.json") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(problem_for_plain_errors))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            count_refusals::<B>,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

/// Errors axum produces itself (413 from the body limit, 408, 405, extractor rejections) become
/// problem+json too.
async fn problem_for_plain_errors(req: axum::extract::Request, next: middleware::Next) -> Response {
    let dapr = req.uri().path().starts_with("/v1.0");
    let res = next.run(req).await;
    let status = res.status();
    let content_type = res.headers().get(axum::http::header::CONTENT_TYPE);
    let is_problem =
        content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    let is_json = content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    // The Dapr API answers every error in Dapr's shape, with the status it has.
    if dapr {
        if is_json {
            return res;
        }
        let (code, message) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => (
                "ERR_BODY_TOO_LARGE",
                "the request body is larger than the configured body_limit",
            ),
            StatusCode::REQUEST_TIMEOUT => (
                "ERR_REQUEST_TIMEOUT",
                "the request took longer than request_timeout_ms",
            ),
            StatusCode::NOT_FOUND => ("ERR_NOT_FOUND", "no such Dapr route"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "ERR_METHOD_NOT_ALLOWED",
                "this route does not take that method",
            ),
            s if s.is_server_error() => ("ERR_INTERNAL", "the server failed"),
            _ => ("ERR_MALFORMED_REQUEST", "the request cannot be read"),
        };
        let status = match code {
            "ERR_MALFORMED_REQUEST" => StatusCode::BAD_REQUEST,
            "ERR_INTERNAL" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => status,
        };
        return dapr::DaprError::new(status, code, message).into_response();
    }
    if is_problem || is_json {
        return res;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::REQUEST_TIMEOUT => "request-timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::NOT_FOUND => "not-found",
        s if s.is_server_error() => "internal",
        _ => "invalid-request",
    };
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            "the request body is larger than the configured body_limit".to_owned()
        }
        StatusCode::REQUEST_TIMEOUT => "the request took longer than request_timeout_ms".to_owned(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_owned(),
        _ => {
            let bytes = axum::body::to_bytes(res.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    let mut p = Problem::new(code, detail);
    p.status = status;
    with_code(p)
}

/// A problem response that remembers its code for the metrics.
pub(crate) fn with_code(p: Problem) -> Response {
    let code = p.code;
    let mut r = p.into_response();
    r.extensions_mut().insert(ProblemCode(code));
    r
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "healthy",
        "service": "canon",
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn ready<B: Backend>(State(app): State<Shared<B>>) -> Response {
    if *app.shutdown.borrow() {
        return with_code(Problem::new("shutting-down", "the server is shutting down"));
    }
    match app.engine.backend().kv_get("canon.health", "probe").await {
        Ok(_) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(e) => with_code(Problem::new("storage-unavailable", e.to_string())),
    }
}

async fn metrics_text<B: Backend>(State(app): State<Shared<B>>) -> Response {
    for s in app.subscriptions() {
        if let Ok(info) = app.engine.backend().group_info(&s.topic, &s.name).await {
            let label = metrics::SubLabel {
                subscription: s.name.clone(),
            };
            app.metrics
                .lag
                .get_or_create(&label)
                .set(i64::try_from(info.pending).unwrap_or(i64::MAX));
            app.metrics
                .dlq_depth
                .get_or_create(&label)
                .set(i64::try_from(info.dead_letters).unwrap_or(i64::MAX));
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::document())
}

/// Loads catalog files and directories (every `*.yaml` / `*.yml` inside, sorted).
pub fn load_catalogs(paths: &[PathBuf]) -> Result<Vec<Catalog>, ServeError> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(p.clone());
        }
    }
    let mut out = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(&f).map_err(|e| ServeError::Catalog {
            file: name.clone(),
            message: e.to_string(),
        })?;
        let loaded = Catalog::load(&text, &name);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        match loaded.catalog {
            Some(c) if errors.is_empty() => out.push(c),
            _ => {
                return Err(ServeError::Catalog {
                    file: name,
                    message: format!("{} (run `canon catalog check`)", errors.join("; ")),
                });
            }
        }
    }
    Ok(out)
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Shuts down gracefully and waits for the end.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task
            .await
            .map_err(|e| ServeError::Io(std::io::Error::other(e)))?
    }
}

/// Opens the embedded backend of `config.data_dir` and the catalogs, binds, and serves in the
/// background until [`Running::shutdown`].
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let task =
        tokio::spawn(async move { serve(config, async { drop(rx.await) }, Some(bound_tx)).await });
    match bound_rx.await {
        Ok(addr) => Ok(Running {
            addr,
            stop: Some(tx),
            task,
        }),
        Err(_) => match task.await {
            Ok(Err(e)) => Err(e),
            _ => Err(ServeError::Config(
                "the server stopped while starting".to_owned(),
            )),
        },
    }
}

/// Serves until `shutdown` completes, then stops gracefully: no new requests, in-flight
/// requests and push deliveries finish (up to `shutdown_grace_ms`), storage is flushed.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), ServeError> {
    let addr: SocketAddr = config
        .listen
        .parse()
        .map_err(|e| ServeError::Config(format!("listen = {:?}: {e}", config.listen)))?;
    if !config.auth.enabled() && !is_loopback(&addr) {
        return Err(ServeError::Config(format!(
            "refusing to listen on {addr} without credentials: configure [auth] api_keys or jwt, \
             or listen on a loopback address"
        )));
    }
    // Before storage opens and connections come (files.rs).
    match files::reserve(files::SLOTS) {
        Some(slots) => tracing::debug!(slots, "file table sized"),
        None => tracing::debug!("file table left to grow on demand"),
    }
    let catalogs = load_catalogs(&config.catalogs)?;
    let durability = match config.durability {
        DurabilitySetting::Sync => Durability::Sync,
        DurabilitySetting::LoseRecentOnOsCrash => Durability::LoseRecentOnOsCrash,
    };
    let location = storage::Location::parse(&config.backend, &config.data_dir)?;
    let backend = AnyBackend::open(&location, durability).await?;
    tracing::info!(backend = %location.display(), "storage opened");
    let schemaless = if catalogs.is_empty() {
        tracing::warn!(
            "no catalog loaded: running schema-less, every valid CloudEvent is accepted on any topic"
        );
        SchemaLess::All
    } else if config.schemaless_topics.is_empty() {
        SchemaLess::None
    } else {
        SchemaLess::Topics(config.schemaless_topics.clone())
    };
    let engine = Engine::with_topics(backend, catalogs, |t| config.topic(t))
        .await?
        .with_schemaless(schemaless);
    let app = App::new(engine, config).await?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "canon serving");
    if let Some(b) = bound {
        let _ = b.send(local);
    }
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let draining = Arc::downgrade(&app);
    tokio::spawn(async move {
        shutdown.await;
        // Long polls, live tails and push workers learn it first: the drain below waits for
        // every request in flight, and a long poll or a tail would otherwise hold it up.
        if let Some(app) = draining.upgrade() {
            let _ = app.shutdown.send(true);
        }
        let _ = stop_tx.send(true);
    });
    let mut requests_done = stop_rx.clone();
    axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await?;
    let _ = requests_done.wait_for(|s| *s).await;
    app.stop().await;
    drop(app);
    Ok(())
}

/// An event's JSON format as a raw value, to embed in answers without parsing it again.
pub(crate) fn raw_event(e: &canon_envelope::CloudEvent) -> Box<serde_json::value::RawValue> {
    // `to_json` writes valid UTF-8 JSON; the fallbacks are never taken.
    let json = String::from_utf8(e.to_json()).unwrap_or_default();
    serde_json::value::RawValue::from_string(json).unwrap_or_default()
}

/// Formats a time as RFC 3339.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses RFC 3339.
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}
