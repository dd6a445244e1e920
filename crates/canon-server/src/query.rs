//! Reading: topics, events by id, causation chains, correlations, and the catalog.

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use canon_backend::{Backend, StoredEvent, codec};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::auth::Identity;
use crate::problem::Problem;
use crate::{Shared, rfc3339, with_code};

pub(crate) fn routes<B: Backend>() -> Router<Shared<B>> {
    Router::new()
        .route("/v1/topics", get(topics::<B>))
        .route("/v1/topics/{topic}", get(topic::<B>))
        .route("/v1/events/{id}", get(event::<B>))
        .route("/v1/events/{id}/chain", get(chain::<B>))
        .route("/v1/correlations/{id}", get(correlation::<B>))
        .route("/v1/catalog", get(catalog::<B>))
        .route("/v1/catalog/types/{ty}", get(catalog_type::<B>))
}

/// A topic and what it holds.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicBody {
    name: String,
    /// Oldest retained sequence.
    first: u64,
    /// Newest sequence (0: empty).
    last: u64,
    /// Retained bytes.
    bytes: u64,
    /// How long event ids and idempotency keys are remembered, in ms (`topics` in the
    /// configuration).
    dedup_window_ms: u64,
    /// Events older than this are deleted, in ms; absent: no age limit.
    max_age_ms: Option<u64>,
    /// The oldest events are deleted while the topic holds more; absent: no size limit.
    max_bytes: Option<u64>,
    /// Types no catalog declares are accepted.
    schemaless: bool,
    /// Catalog types that travel on it.
    types: Vec<String>,
    /// Its subscriptions.
    subscriptions: Vec<String>,
}

async fn topic_body<B: Backend>(app: &Shared<B>, name: &str) -> Result<TopicBody, Problem> {
    let info = app.engine.backend().topic_info(name).await?;
    let types = app
        .engine
        .catalogs()
        .iter()
        .flat_map(|c| c.types.values())
        .filter(|t| t.topic == name)
        .map(|t| t.name.clone())
        .collect();
    Ok(TopicBody {
        name: name.to_owned(),
        first: info.first,
        last: info.last,
        bytes: info.bytes,
        dedup_window_ms: codec::ms(info.config.dedup_window),
        max_age_ms: info.config.max_age.map(codec::ms),
        max_bytes: info.config.max_bytes,
        schemaless: app.engine.schemaless().allows(name),
        types,
        subscriptions: app
            .subscriptions()
            .iter()
            .filter(|s| s.topic == name)
            .map(|s| s.name.clone())
            .collect(),
    })
}

fn answer<T: Serialize>(r: Result<T, Problem>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(p) => with_code(p),
    }
}

/// Lists topics.
#[utoipa::path(get, path = "/v1/topics", tag = "topics", responses((status = 200, body = [TopicBody])))]
pub(crate) async fn topics<B: Backend>(
    State(app): State<Shared<B>>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            app.identify(&headers)?;
            let mut out = Vec::new();
            for t in app.engine.backend().topics().await? {
                out.push(topic_body(&app, &t).await?);
            }
            Ok(out)
        }
        .await,
    )
}

/// One topic.
#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics",
    params(("topic" = String, Path)), responses((status = 200, body = TopicBody), (status = 404)))]
pub(crate) async fn topic<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            app.identify(&headers)?;
            topic_body(&app, &name).await
        }
        .await,
    )
}

/// A stored event.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventBody {
    topic: String,
    sequence: u64,
    published_at: String,
    #[schema(value_type = Object)]
    event: Box<RawValue>,
}

pub(crate) fn event_body(topic: &str, e: &StoredEvent) -> EventBody {
    EventBody {
        topic: topic.to_owned(),
        sequence: e.seq,
        published_at: rfc3339(e.published_at),
        event: crate::raw_event(&e.event),
    }
}

/// Whether the caller may read events of a type: an admin, or a declared producer or consumer
/// (any caller for types no catalog declares).
fn may_read<B: Backend>(app: &Shared<B>, id: &Identity, ty: &str) -> bool {
    if id.admin {
        return true;
    }
    let Some(service) = id.service.as_deref() else {
        return true;
    };
    match app.engine.catalog_of(ty).and_then(|c| c.lookup(ty)) {
        None => true,
        Some((t, _)) => t.producers.iter().chain(&t.consumers).any(|s| s == service),
    }
}

async fn find_by_id<B: Backend>(
    app: &Shared<B>,
    id: &str,
) -> Result<Vec<(String, StoredEvent)>, Problem> {
    let mut out = Vec::new();
    for t in app.engine.backend().topics().await? {
        for e in app.engine.backend().events_by_id(&t, id).await? {
            out.push((t.clone(), e));
        }
    }
    Ok(out)
}

/// Events with an id (one per source that used it), across topics.
#[utoipa::path(get, path = "/v1/events/{id}", tag = "events",
    params(("id" = String, Path)), responses((status = 200, body = [EventBody]), (status = 404)))]
pub(crate) async fn event<B: Backend>(
    State(app): State<Shared<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let who = app.identify(&headers)?;
            let found: Vec<EventBody> = find_by_id(&app, &id)
                .await?
                .iter()
                .filter(|(_, e)| may_read(&app, &who, &e.event.ty))
                .map(|(t, e)| event_body(t, e))
                .collect();
            if found.is_empty() {
                return Err(Problem::new(
                    "not-found",
                    format!("no retained event has id {id}"),
                ));
            }
            Ok(found)
        }
        .await,
    )
}

/// An event's causes and effects.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ChainBody {
    event: EventBody,
    /// Following `causationid`, nearest first.
    causes: Vec<EventBody>,
    /// Events it caused, directly or not, breadth first.
    effects: Vec<EventBody>,
}

/// The causation chain of an event, across topics.
#[utoipa::path(get, path = "/v1/events/{id}/chain", tag = "events",
    params(("id" = String, Path)), responses((status = 200, body = ChainBody), (status = 404)))]
pub(crate) async fn chain<B: Backend>(
    State(app): State<Shared<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let who = app.identify(&headers)?;
            let backend = app.engine.backend();
            let topics = backend.topics().await?;
            let (topic, root) = find_by_id(&app, &id)
                .await?
                .into_iter()
                .find(|(_, e)| may_read(&app, &who, &e.event.ty))
                .ok_or_else(|| {
                    Problem::new("not-found", format!("no retained event has id {id}"))
                })?;
            let (causes, effects) = canon_backend::causation_chain(backend, &topics, &id).await?;
            let causes: Vec<EventBody> = causes.iter().map(|(t, e)| event_body(t, e)).collect();
            let effects: Vec<EventBody> = effects.iter().map(|(t, e)| event_body(t, e)).collect();
            Ok(ChainBody {
                event: event_body(&topic, &root),
                causes,
                effects,
            })
        }
        .await,
    )
}

/// Every event of a correlation id, across topics, in storage order per topic.
#[utoipa::path(get, path = "/v1/correlations/{id}", tag = "events",
    params(("id" = String, Path)), responses((status = 200, body = [EventBody])))]
pub(crate) async fn correlation<B: Backend>(
    State(app): State<Shared<B>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            let who = app.identify(&headers)?;
            let backend = app.engine.backend();
            let mut found = Vec::new();
            for t in backend.topics().await? {
                for e in backend.events_by_correlation(&t, &id).await? {
                    if may_read(&app, &who, &e.event.ty) {
                        found.push((e.published_at, t.clone(), e));
                    }
                }
            }
            // By storage time (then topic and sequence): the times, not their text, which
            // omits a zero fraction and so does not sort.
            found.sort_by(|a, b| (a.0, &a.1, a.2.seq).cmp(&(b.0, &b.1, b.2.seq)));
            let out: Vec<EventBody> = found.iter().map(|(_, t, e)| event_body(t, e)).collect();
            Ok(out)
        }
        .await,
    )
}

/// A catalog type in brief.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TypeBrief {
    name: String,
    catalog: String,
    topic: String,
    summary: String,
    producers: Vec<String>,
    consumers: Vec<String>,
    versions: Vec<String>,
}

fn brief(c: &canon_catalog::Catalog, t: &canon_catalog::EventType) -> TypeBrief {
    TypeBrief {
        name: t.name.clone(),
        catalog: c.name.clone(),
        topic: t.topic.clone(),
        summary: t.summary.clone(),
        producers: t.producers.clone(),
        consumers: t.consumers.clone(),
        versions: t
            .versions
            .iter()
            .map(|v| v.version.as_str().to_owned())
            .collect(),
    }
}

/// The loaded catalogs' types.
#[utoipa::path(get, path = "/v1/catalog", tag = "catalog", responses((status = 200, body = [TypeBrief])))]
pub(crate) async fn catalog<B: Backend>(
    State(app): State<Shared<B>>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            app.identify(&headers)?;
            Ok(app
                .engine
                .catalogs()
                .iter()
                .flat_map(|c| c.types.values().map(move |t| (c, t)))
                .map(|(c, t)| brief(c, t))
                .collect::<Vec<_>>())
        }
        .await,
    )
}

/// One type with its payload schema per version.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TypeDetail {
    #[serde(flatten)]
    brief: TypeBrief,
    /// Version → JSON Schema (2020-12).
    #[schema(value_type = Object)]
    schemas: serde_json::Map<String, serde_json::Value>,
}

/// A type of the catalog with its schemas.
#[utoipa::path(get, path = "/v1/catalog/types/{ty}", tag = "catalog",
    params(("ty" = String, Path)), responses((status = 200, body = TypeDetail), (status = 404)))]
pub(crate) async fn catalog_type<B: Backend>(
    State(app): State<Shared<B>>,
    Path(ty): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            app.identify(&headers)?;
            let (c, t) = app
                .engine
                .catalog_of(&ty)
                .and_then(|c| c.lookup(&ty).map(|(t, _)| (c, t)))
                .ok_or_else(|| Problem::new("not-found", format!("no catalog declares {ty}")))?;
            Ok(TypeDetail {
                brief: brief(c, t),
                schemas: t
                    .versions
                    .iter()
                    .map(|v| (v.version.as_str().to_owned(), v.schema.clone()))
                    .collect(),
            })
        }
        .await,
    )
}
