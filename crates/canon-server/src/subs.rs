//! Subscriptions: a named consumer group on a topic, pulled by clients or pushed to a URL.
//! Kept in the backend's `canon.subscriptions` KV bucket so every server over one backend sees
//! the same set. Leases travel as `ack_id`s (`<sequence>.<lease handle>`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use canon_backend::{
    Backend, DeadLetter, DeadLetterFilter, DeadLetterReason, Delivery, GroupConfig, LeaseToken,
    RedriveOptions, RetryPolicy, StartPosition,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Identity;
use crate::metrics::SubOutcome;
use crate::problem::Problem;
use crate::{SUBSCRIPTIONS, Shared, parse_time, push, rfc3339, with_code};

/// How a push subscription's requests look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PushFormat {
    /// The event as `application/cloudevents+json`.
    #[default]
    Structured,
    /// `ce-` headers, the data as the body.
    Binary,
    /// The data only, with its content type.
    Data,
}

/// The HTTP version of push requests, named as Dapr's `--app-protocol` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PushProtocol {
    /// HTTP/1.1: a connection per request in flight.
    #[default]
    Http,
    /// HTTP/2 without TLS, with prior knowledge (the subscriber must accept HTTP/2 on a plain
    /// connection). All requests in flight share one connection.
    H2c,
}

/// Where and how events are pushed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushSpec {
    /// The subscriber's URL (http).
    pub url: String,
    /// The request format.
    #[serde(default)]
    pub format: PushFormat,
    /// The HTTP version: `http` (HTTP/1.1, the default) or `h2c`.
    #[serde(default)]
    pub protocol: PushProtocol,
    /// Requests in flight at once (default: the server's `push.concurrency`).
    pub concurrency: Option<usize>,
    /// Events per request (default 1). Above 1 the body is a JSON array of events
    /// (`application/cloudevents-batch+json`, structured format only) and the subscriber may
    /// answer per event: `{"statuses":[{"entryId":"<event id>","status":"SUCCESS|RETRY|DROP"}]}`.
    pub batch: Option<usize>,
    /// Set for subscriptions of Dapr apps: where and how each event goes (docs/dapr.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dapr: Option<DaprDelivery>,
}

/// Delivery to a Dapr app: the route of each event, the dead-letter topic, raw payloads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DaprDelivery {
    /// The app's id.
    pub app_id: String,
    /// The pub/sub component.
    pub pubsub: String,
    /// Routing rules, tried in order: the first whose `match` holds gives the path.
    #[serde(default)]
    pub rules: Vec<DaprRule>,
    /// The path when no rule matches; without one, such events are dropped (to the
    /// dead-letter topic if set).
    pub default_path: Option<String>,
    /// Where an event goes after its last failed attempt (or a DROP, or no route).
    pub dead_letter_topic: Option<String>,
    /// Deliver the stored bytes wrapped as Dapr does for `rawPayload` subscriptions.
    #[serde(default)]
    pub raw_payload: bool,
}

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DaprRule {
    /// A CEL expression in the supported subset.
    #[serde(rename = "match")]
    pub when: String,
    /// The app path.
    pub path: String,
}

/// How failed deliveries are retried. Unset fields come from the catalog's `delivery` defaults,
/// then Canon's (8 attempts, 1 s doubling to 5 min, 20 % jitter).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Deliveries before the DLQ.
    pub max_attempts: Option<u32>,
    /// First retry delay, ms.
    pub initial_backoff_ms: Option<u64>,
    /// Growth per attempt.
    pub multiplier: Option<f64>,
    /// Delay cap, ms.
    pub max_backoff_ms: Option<u64>,
    /// Randomness, 0 to 1.
    pub jitter: Option<f64>,
}

/// A subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Unique name; also the consumer group's.
    pub name: String,
    /// The topic.
    pub topic: String,
    /// Only these types (catalog names). Empty: every type of the topic the consumer may read.
    #[serde(default)]
    pub types: Vec<String>,
    /// The service that consumes it (default: the caller's). Must be a declared consumer of
    /// the types.
    pub consumer: Option<String>,
    /// One event in flight per aggregate, in order. Default: the catalog's `delivery.ordering`.
    pub ordered: Option<bool>,
    /// Lease (visibility timeout), ms. Default 30 s.
    pub lease_ms: Option<u64>,
    /// Events leased at once across the subscription's consumers. Default 1,000.
    pub max_in_flight: Option<usize>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Push delivery; absent for a pull subscription.
    pub push: Option<PushSpec>,
    /// A topic that takes this subscription's dead letters: each one is published there (the
    /// event as it was stored, same id) and then leaves the DLQ. Absent: dead letters stay in
    /// the DLQ. With catalogs loaded it must be one of `schemaless_topics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
}

impl Subscription {
    /// The consumer group configuration, defaults filled from `defaults` (the catalog's).
    pub(crate) fn group_config(
        &self,
        defaults: Option<&canon_catalog::DeliveryModel>,
    ) -> GroupConfig {
        let base = RetryPolicy::default();
        let d = |s: &Option<String>| s.as_deref().and_then(parse_duration);
        let retry = RetryPolicy {
            max_attempts: self
                .retry
                .max_attempts
                .or(defaults.and_then(|d| d.max_attempts))
                .unwrap_or(base.max_attempts),
            initial_backoff: self
                .retry
                .initial_backoff_ms
                .map(Duration::from_millis)
                .or(defaults.and_then(|x| d(&x.initial_backoff)))
                .unwrap_or(base.initial_backoff),
            multiplier: self
                .retry
                .multiplier
                .or(defaults.and_then(|d| d.multiplier))
                .unwrap_or(base.multiplier),
            max_backoff: self
                .retry
                .max_backoff_ms
                .map(Duration::from_millis)
                .or(defaults.and_then(|x| d(&x.max_backoff)))
                .unwrap_or(base.max_backoff),
            jitter: self
                .retry
                .jitter
                .or(defaults.and_then(|d| d.jitter))
                .unwrap_or(base.jitter),
        };
        GroupConfig {
            ordered: self.ordered.unwrap_or_else(|| {
                defaults.and_then(|d| d.ordering) == Some(canon_catalog::Ordering::Aggregate)
            }),
            lease: Duration::from_millis(self.lease_ms.unwrap_or(30_000)),
            retry,
            max_in_flight: self.max_in_flight.unwrap_or(1000),
        }
    }

    /// The types this subscription delivers; `None`: all.
    pub(crate) fn filter<B: Backend>(&self, app: &crate::App<B>) -> Option<TypeFilter> {
        if !self.types.is_empty() {
            return Some(TypeFilter {
                types: self.types.iter().cloned().collect(),
                undeclared: false,
            });
        }
        app.consumable(&self.topic, self.consumer.as_deref())
            .map(|types| TypeFilter {
                types,
                // On a schema-less topic, types no catalog declares are anyone's to read.
                undeclared: app.engine.schemaless().allows(&self.topic),
            })
    }
}

/// The types a subscription delivers, when not all.
pub(crate) struct TypeFilter {
    /// Catalog type names.
    types: HashSet<String>,
    /// Also every type no catalog declares.
    undeclared: bool,
}

impl TypeFilter {
    fn admits<B: Backend>(&self, app: &crate::App<B>, ty: &str) -> bool {
        self.types.contains(app.base_type(ty))
            || (self.undeclared && app.engine.catalog_of(ty).is_none())
    }
}

/// `1s`, `500ms`, `5m`, `2h`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

pub(crate) fn routes<B: Backend>() -> Router<Shared<B>> {
    Router::new()
        .route("/v1/subscriptions", get(list::<B>).post(create::<B>))
        .route(
            "/v1/subscriptions/{name}",
            get(show::<B>).delete(delete::<B>),
        )
        .route("/v1/subscriptions/{name}/ack", post(ack::<B>))
        .route("/v1/subscriptions/{name}/nack", post(nack::<B>))
        .route("/v1/subscriptions/{name}/extend", post(extend::<B>))
        .route("/v1/subscriptions/{name}/reject", post(reject::<B>))
        .route("/v1/subscriptions/{name}/replay", post(replay::<B>))
        .route("/v1/subscriptions/{name}/dlq", get(dlq_list::<B>))
        .route(
            "/v1/subscriptions/{name}/dlq/redrive",
            post(dlq_redrive::<B>),
        )
        .route("/v1/subscriptions/{name}/dlq/purge", post(dlq_purge::<B>))
        .route("/v1/subscriptions/{name}/dlq/{id}", get(dlq_show::<B>))
}

type Answer<T> = Result<T, Problem>;

fn fail(p: Problem) -> Problem {
    p
}

/// The caller, or the refusal.
fn who<B: Backend>(app: &Shared<B>, headers: &HeaderMap) -> Answer<Identity> {
    app.identify(headers).map_err(fail)
}

/// The subscription, if the caller may consume it: its consumer service, or an admin.
async fn owned<B: Backend>(
    app: &Shared<B>,
    id: &Identity,
    name: &str,
) -> Answer<Arc<Subscription>> {
    let sub = app.subscription(name).await.map_err(fail)?;
    if id.admin || id.service.is_none() || id.service == sub.consumer {
        Ok(sub)
    } else {
        Err(fail(
            Problem::new(
                "forbidden",
                format!(
                    "subscription {name} belongs to {}",
                    sub.consumer.as_deref().unwrap_or("the operator")
                ),
            )
            .with("rule", "subscription-owner"),
        ))
    }
}

/// Creates a subscription (or answers 409 if one with that name differs).
#[utoipa::path(post, path = "/v1/subscriptions", tag = "subscriptions",
    request_body = Subscription,
    responses((status = 201, body = Subscription, description = "Created, with every default filled in"),
              (status = 200, body = Subscription, description = "The same subscription existed already"),
              (status = 403, description = "The consumer may not read these types"),
              (status = 409, description = "Another subscription has that name")))]
pub(crate) async fn create<B: Backend>(
    State(app): State<Shared<B>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match create_inner(&app, &headers, &body).await {
        Ok(r) => r,
        Err(p) => with_code(p),
    }
}

async fn create_inner<B: Backend>(
    app: &Shared<B>,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer<Response> {
    let id = who(app, headers)?;
    let mut sub: Subscription = serde_json::from_slice(body).map_err(|e| {
        fail(Problem::new(
            "invalid-request",
            format!("not a subscription: {e}"),
        ))
    })?;
    if sub.name.is_empty() || sub.name.len() > 200 || sub.name.contains(['/', '\0']) {
        return Err(fail(Problem::new(
            "invalid-request",
            "a subscription name is 1 to 200 bytes without / or NUL",
        )));
    }
    match (&id.service, &sub.consumer) {
        (Some(me), None) => sub.consumer = Some(me.clone()),
        (Some(me), Some(other)) if me != other && !id.admin => {
            return Err(fail(
                Problem::new(
                    "forbidden",
                    format!("{me} may not subscribe on behalf of {other}"),
                )
                .with("rule", "subscription-owner"),
            ));
        }
        _ => {}
    }
    if let Some(dlt) = &sub.dead_letter_topic
        && (*dlt == sub.topic || !app.engine.schemaless().allows(dlt))
    {
        return Err(fail(Problem::new(
            "invalid-request",
            "dead_letter_topic must be a schema-less topic (schemaless_topics), \
             since it takes events of any type, and not the subscription's own",
        )));
    }
    if !app
        .topic_exists(&sub.topic)
        .await
        .map_err(|e| fail(e.into()))?
    {
        return Err(fail(Problem::new(
            "not-found",
            format!("no topic named {}", sub.topic),
        )));
    }
    // Only declared consumers may subscribe to a type.
    if let Some(consumer) = &sub.consumer
        && !app.engine.catalogs().is_empty()
    {
        let allowed = app
            .consumable(&sub.topic, Some(consumer))
            .unwrap_or_default();
        for t in &sub.types {
            let declared = app.engine.catalog_of(t).is_some();
            if declared && !allowed.contains(app.base_type(t)) {
                return Err(fail(
                    Problem::new(
                        "forbidden",
                        format!("{consumer} is not a declared consumer of {t}"),
                    )
                    .with("rule", "declared-consumer"),
                ));
            }
        }
        if sub.types.is_empty() && allowed.is_empty() && !app.engine.schemaless().allows(&sub.topic)
        {
            return Err(fail(
                Problem::new(
                    "forbidden",
                    format!("{consumer} consumes no type of topic {}", sub.topic),
                )
                .with("rule", "declared-consumer"),
            ));
        }
    }
    if let Some(dlt) = &sub.dead_letter_topic {
        app.ensure_topic(dlt).await.map_err(|e| fail(e.into()))?;
    }
    install(app, sub)
        .await
        .map(|(status, sub)| (status, Json(sub)).into_response())
}

/// Fills a checked subscription's defaults, creates its group, stores it and starts its push
/// worker. 200 when the same subscription exists already, 409 when a different one does.
pub(crate) async fn install<B: Backend>(
    app: &Shared<B>,
    mut sub: Subscription,
) -> Answer<(StatusCode, Subscription)> {
    if let Some(p) = &sub.push
        && (p.batch.unwrap_or(1) > 1000
            || (p.batch.unwrap_or(1) > 1 && p.format != PushFormat::Structured))
    {
        return Err(fail(Problem::new(
            "invalid-request",
            "push.batch is 1 to 1000, and above 1 only with the structured format",
        )));
    }
    if let Some(p) = &sub.push
        && !url::Url::parse(&p.url).is_ok_and(|u| u.scheme() == "http" && u.host().is_some())
    {
        return Err(fail(Problem::new(
            "invalid-request",
            "push.url must be an http:// URL (put a TLS-terminating proxy in front of https subscribers)",
        )));
    }
    let defaults = app
        .engine
        .catalogs()
        .iter()
        .find(|c| c.types.values().any(|t| t.topic == sub.topic))
        .and_then(|c| c.delivery.as_ref());
    let config = sub.group_config(defaults);
    if config.ordered {
        // K1: refused by name rather than delivered out of order.
        app.engine
            .backend()
            .capabilities()
            .require(canon_backend::Capability::OrderedDelivery)
            .map_err(|e| fail(e.into()))?;
    }
    // Store every effective setting, so the subscription reads back as it behaves.
    sub.ordered = Some(config.ordered);
    sub.lease_ms = Some(u64::try_from(config.lease.as_millis()).unwrap_or(u64::MAX));
    sub.max_in_flight = Some(config.max_in_flight);
    sub.retry = RetrySpec {
        max_attempts: Some(config.retry.max_attempts),
        initial_backoff_ms: Some(
            u64::try_from(config.retry.initial_backoff.as_millis()).unwrap_or(u64::MAX),
        ),
        multiplier: Some(config.retry.multiplier),
        max_backoff_ms: Some(
            u64::try_from(config.retry.max_backoff.as_millis()).unwrap_or(u64::MAX),
        ),
        jitter: Some(config.retry.jitter),
    };
    if let Some(p) = &mut sub.push {
        p.concurrency = Some(p.concurrency.unwrap_or(app.config.push.concurrency).max(1));
    }
    if let Ok(existing) = app.subscription(&sub.name).await {
        return if *existing == sub {
            Ok((StatusCode::OK, sub))
        } else {
            Err(fail(Problem::new(
                "already-exists",
                format!(
                    "a different subscription is named {}; delete it first",
                    sub.name
                ),
            )))
        };
    }
    let backend = app.engine.backend();
    backend
        .create_group(&sub.topic, &sub.name, config)
        .await
        .map_err(|e| fail(e.into()))?;
    let record =
        serde_json::to_vec(&sub).map_err(|e| fail(Problem::new("internal", e.to_string())))?;
    backend
        .kv_put(SUBSCRIPTIONS, &sub.name, record, Some(0))
        .await
        .map_err(|e| match e {
            canon_backend::BackendError::RevisionMismatch { .. } => fail(Problem::new(
                "already-exists",
                format!(
                    "subscription {} was just created by another request",
                    sub.name
                ),
            )),
            e => fail(e.into()),
        })?;
    let sub = Arc::new(sub);
    app.subs
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(sub.name.clone(), sub.clone());
    push::ensure(app, &sub);
    Ok((StatusCode::CREATED, sub.as_ref().clone()))
}

/// Replaces the push settings of an existing subscription (same topic and delivery policy),
/// keeping its group and position; restarts its push worker.
pub(crate) async fn replace_push<B: Backend>(
    app: &Shared<B>,
    existing: &Subscription,
    push: Option<PushSpec>,
) -> Answer<()> {
    let mut sub = existing.clone();
    sub.push = push;
    if let Some(p) = &mut sub.push {
        p.concurrency = Some(p.concurrency.unwrap_or(app.config.push.concurrency).max(1));
    }
    let record =
        serde_json::to_vec(&sub).map_err(|e| fail(Problem::new("internal", e.to_string())))?;
    app.engine
        .backend()
        .kv_put(SUBSCRIPTIONS, &sub.name, record, None)
        .await
        .map_err(|e| fail(e.into()))?;
    push::remove(app, &sub.name).await;
    let sub = Arc::new(sub);
    app.subs
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(sub.name.clone(), sub.clone());
    push::ensure(app, &sub);
    Ok(())
}

/// Deletes a subscription with its group state and DLQ.
pub(crate) async fn remove_subscription<B: Backend>(
    app: &Shared<B>,
    sub: &Subscription,
) -> Answer<()> {
    push::remove(app, &sub.name).await;
    let backend = app.engine.backend();
    backend
        .kv_delete(SUBSCRIPTIONS, &sub.name, None)
        .await
        .map_err(|e| fail(e.into()))?;
    app.subs
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&sub.name);
    match backend.delete_group(&sub.topic, &sub.name).await {
        Ok(()) | Err(canon_backend::BackendError::UnknownGroup { .. }) => Ok(()),
        Err(e) => Err(fail(e.into())),
    }
}

/// A subscription with where it stands.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SubscriptionStatus {
    #[serde(flatten)]
    subscription: Subscription,
    /// Every event at or below this sequence is done.
    acked_through: u64,
    /// Stored, not yet done (in flight included).
    pending: u64,
    /// Leased now.
    in_flight: u64,
    /// DLQ entries.
    dead_letters: u64,
}

async fn status<B: Backend>(app: &Shared<B>, s: &Subscription) -> SubscriptionStatus {
    let info = app
        .engine
        .backend()
        .group_info(&s.topic, &s.name)
        .await
        .ok();
    SubscriptionStatus {
        subscription: s.clone(),
        acked_through: info.as_ref().map_or(0, |i| i.acked_through),
        pending: info.as_ref().map_or(0, |i| i.pending),
        in_flight: info.as_ref().map_or(0, |i| i.in_flight),
        dead_letters: info.as_ref().map_or(0, |i| i.dead_letters),
    }
}

/// Lists the subscriptions the caller may see (an admin: all).
#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions",
    responses((status = 200, body = [SubscriptionStatus])))]
pub(crate) async fn list<B: Backend>(State(app): State<Shared<B>>, headers: HeaderMap) -> Response {
    let id = match who(&app, &headers) {
        Ok(i) => i,
        Err(p) => return with_code(p),
    };
    let mut out = Vec::new();
    for s in app.subscriptions() {
        if id.admin || id.service == s.consumer {
            out.push(status(&app, &s).await);
        }
    }
    Json(out).into_response()
}

/// One subscription with where it stands.
#[utoipa::path(get, path = "/v1/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path)),
    responses((status = 200, body = SubscriptionStatus), (status = 404)))]
pub(crate) async fn show<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let sub = match who(&app, &headers) {
        Ok(id) => match owned(&app, &id, &name).await {
            Ok(s) => s,
            Err(p) => return with_code(p),
        },
        Err(p) => return with_code(p),
    };
    Json(status(&app, &sub).await).into_response()
}

/// Deletes a subscription with its group state and DLQ.
#[utoipa::path(delete, path = "/v1/subscriptions/{name}", tag = "subscriptions",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404)))]
pub(crate) async fn delete<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let sub = match who(&app, &headers) {
        Ok(id) => match owned(&app, &id, &name).await {
            Ok(s) => s,
            Err(p) => return with_code(p),
        },
        Err(p) => return with_code(p),
    };
    match remove_subscription(&app, &sub).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => with_code(p),
    }
}

/// A pull request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PullRequest {
    /// At most this many deliveries (default 10, at most 1,000).
    max: Option<usize>,
    /// Wait up to this long for the first delivery, ms (default 0, at most 60,000).
    wait_ms: Option<u64>,
    /// Names the consumer in attempt records (default: the caller's service).
    consumer: Option<String>,
}

/// One delivery.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeliveryBody {
    /// Names the lease in ack, nack, extend and reject.
    ack_id: String,
    /// 1 for the first delivery.
    attempt: u32,
    /// The event's sequence in its topic.
    sequence: u64,
    /// When the event was stored.
    published_at: String,
    /// When the lease ends unless extended.
    leased_until: String,
    /// The event (CloudEvents JSON).
    #[schema(value_type = Object)]
    event: Box<RawValue>,
}

pub(crate) fn delivery_body(d: &Delivery) -> DeliveryBody {
    DeliveryBody {
        ack_id: format!("{}.{}", d.token.seq, d.token.handle),
        attempt: d.attempt,
        sequence: d.event.seq,
        published_at: rfc3339(d.event.published_at),
        leased_until: rfc3339(d.leased_until),
        event: crate::raw_event(&d.event.event),
    }
}

/// The answer to a pull.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PullResponse {
    deliveries: Vec<DeliveryBody>,
}

/// Leases events of a subscription (long poll).
#[utoipa::path(post, path = "/v1/subscriptions/{name}/pull", tag = "consume",
    params(("name" = String, Path)),
    request_body = PullRequest,
    responses((status = 200, body = PullResponse)))]
pub(crate) async fn pull<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match pull_inner(&app, &name, &headers, &body).await {
        Ok(r) => r,
        Err(p) => with_code(p),
    }
}

async fn pull_inner<B: Backend>(
    app: &Shared<B>,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Answer<Response> {
    let id = who(app, headers)?;
    let sub = owned(app, &id, name).await?;
    let req: PullRequest = if body.is_empty() {
        PullRequest {
            max: None,
            wait_ms: None,
            consumer: None,
        }
    } else {
        serde_json::from_slice(body).map_err(|e| {
            fail(Problem::new(
                "invalid-request",
                format!("not a pull request: {e}"),
            ))
        })?
    };
    let max = req.max.unwrap_or(10).clamp(1, 1000);
    let wait = Duration::from_millis(req.wait_ms.unwrap_or(0).min(60_000));
    let consumer = req
        .consumer
        .or(id.service.clone())
        .unwrap_or_else(|| "anonymous".to_owned());
    let deliveries = filtered_pull(
        app,
        &sub,
        sub.filter(app).as_ref(),
        &consumer,
        max,
        wait,
        &app.shutdown.subscribe(),
    )
    .await
    .map_err(|e| fail(e.into()))?;
    Ok(Json(PullResponse {
        deliveries: deliveries.iter().map(delivery_body).collect(),
    })
    .into_response())
}

/// The longest a pull waits without looking at its stop signal.
const PULL_SLICE: Duration = Duration::from_millis(500);

/// Pulls, acknowledging at once (as `filtered`) the events of types the subscription does not
/// deliver, until something is left, the wait is over, or `stop` is raised. The wait runs in
/// slices with `stop` read between them, never by dropping a pull: a pull dropped after it
/// leased would leave its events waiting for their lease to expire (and spend an attempt).
pub(crate) async fn filtered_pull<B: Backend>(
    app: &Shared<B>,
    sub: &Subscription,
    filter: Option<&TypeFilter>,
    consumer: &str,
    max: usize,
    wait: Duration,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<Delivery>, canon_backend::BackendError> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = app
            .engine
            .backend()
            .pull(&sub.topic, &sub.name, consumer, max, left.min(PULL_SLICE))
            .await?;
        let (keep, skip): (Vec<Delivery>, Vec<Delivery>) = match filter {
            Some(f) => got
                .into_iter()
                .partition(|d| f.admits(app, &d.event.event.ty)),
            None => (got, Vec::new()),
        };
        if !skip.is_empty() {
            let acks = skip.iter().map(|d| app.engine.backend().ack(&d.token));
            for r in futures_util::future::join_all(acks).await {
                r?;
            }
            app.metrics
                .delivered
                .get_or_create(&SubOutcome {
                    subscription: sub.name.clone(),
                    outcome: "filtered",
                })
                .inc_by(u64::try_from(skip.len()).unwrap_or(u64::MAX));
        }
        if !keep.is_empty() || Instant::now() >= deadline || *stop.borrow() {
            return Ok(keep);
        }
    }
}

/// Ack ids and what to do with them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettleRequest {
    /// The deliveries' `ack_id`s.
    ack_ids: Vec<String>,
    /// nack: retry after this many ms (default: the retry policy's backoff). extend: the new
    /// lease length from now, ms (default: the subscription's lease).
    delay_ms: Option<u64>,
    /// nack and reject: the consumer's error, kept with the attempt.
    error: Option<String>,
}

/// Per-id outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SettleResult {
    ack_id: String,
    /// `ok`, `lease-lost` (the lease expired or the event was redelivered), or `invalid`.
    status: &'static str,
}

/// The answer to ack, nack, extend and reject.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SettleResponse {
    results: Vec<SettleResult>,
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack,
    Extend,
    Reject,
}

async fn settle<B: Backend>(
    app: Shared<B>,
    name: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    how: Settle,
) -> Response {
    let inner = async {
        let id = who(&app, &headers)?;
        let sub = owned(&app, &id, &name).await?;
        let req: SettleRequest = serde_json::from_slice(&body).map_err(|e| {
            fail(Problem::new(
                "invalid-request",
                format!("expected {{\"ack_ids\": [...]}}: {e}"),
            ))
        })?;
        let backend = app.engine.backend();
        // The tokens of the ids that parse, and for each id whether it did.
        let mut valid = Vec::with_capacity(req.ack_ids.len());
        let parsed: Vec<bool> = req
            .ack_ids
            .iter()
            .map(|ack_id| {
                let token = ack_id.split_once('.').and_then(|(s, h)| {
                    Some(LeaseToken {
                        topic: sub.topic.clone(),
                        group: sub.name.clone(),
                        seq: s.parse().ok()?,
                        handle: h.parse().ok()?,
                    })
                });
                let ok = token.is_some();
                valid.extend(token);
                ok
            })
            .collect();
        // Every id at once: the backend commits them together (one sync for the request).
        let (delay, error) = (req.delay_ms, req.error.as_ref());
        let mut answers = match how {
            Settle::Ack => backend.ack_many(&valid).await,
            Settle::Nack => {
                let delay = delay.map(Duration::from_millis);
                each_token(&valid, |t| backend.nack(t, delay, error.cloned())).await
            }
            Settle::Extend => {
                let by = Duration::from_millis(delay.unwrap_or(sub.lease_ms.unwrap_or(30_000)));
                each_token(&valid, |t| backend.extend(t, by)).await
            }
            Settle::Reject => each_token(&valid, |t| backend.dead_letter(t, error.cloned())).await,
        }
        .into_iter();
        let outcomes: Vec<Option<Result<(), canon_backend::BackendError>>> = parsed
            .iter()
            .map(|&ok| if ok { answers.next() } else { None })
            .collect();
        let mut results = Vec::with_capacity(outcomes.len());
        let mut settled = 0u64;
        for (ack_id, r) in req.ack_ids.into_iter().zip(outcomes) {
            let status = match r {
                None => "invalid",
                Some(Ok(())) => {
                    settled += 1;
                    "ok"
                }
                Some(Err(canon_backend::BackendError::LeaseLost)) => "lease-lost",
                Some(Err(e)) => return Err(fail(e.into())),
            };
            results.push(SettleResult { ack_id, status });
        }
        let outcome = match how {
            Settle::Ack => Some("success"),
            Settle::Nack => Some("retry"),
            Settle::Reject => Some("dead-letter"),
            Settle::Extend => None,
        };
        if let Some(outcome) = outcome {
            app.metrics
                .delivered
                .get_or_create(&SubOutcome {
                    subscription: sub.name.clone(),
                    outcome,
                })
                .inc_by(settled);
        }
        Ok(Json(SettleResponse { results }).into_response())
    };
    match inner.await {
        Ok(r) => r,
        Err(p) => with_code(p),
    }
}

/// Runs `op` on every token at once, answers in order. Each future is boxed: a backend's is
/// several KB, and `join_all` moves each into a task of its own (memmove showed in profiles).
async fn each_token<'a, F, Fut>(
    tokens: &'a [LeaseToken],
    op: F,
) -> Vec<Result<(), canon_backend::BackendError>>
where
    F: Fn(&'a LeaseToken) -> Fut,
    Fut: Future<Output = Result<(), canon_backend::BackendError>> + 'a,
{
    futures_util::future::join_all(tokens.iter().map(|t| Box::pin(op(t)))).await
}

/// Acknowledges deliveries: done for this subscription.
#[utoipa::path(post, path = "/v1/subscriptions/{name}/ack", tag = "consume",
    params(("name" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse)))]
pub(crate) async fn ack<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    settle(app, name, headers, body, Settle::Ack).await
}

/// Gives deliveries back for a retry (after `delay_ms`, or the retry policy's backoff).
#[utoipa::path(post, path = "/v1/subscriptions/{name}/nack", tag = "consume",
    params(("name" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse)))]
pub(crate) async fn nack<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    settle(app, name, headers, body, Settle::Nack).await
}

/// Extends leases to now + `delay_ms`.
#[utoipa::path(post, path = "/v1/subscriptions/{name}/extend", tag = "consume",
    params(("name" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse)))]
pub(crate) async fn extend<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    settle(app, name, headers, body, Settle::Extend).await
}

/// Sends deliveries to the DLQ now (reason `rejected`).
#[utoipa::path(post, path = "/v1/subscriptions/{name}/reject", tag = "consume",
    params(("name" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse)))]
pub(crate) async fn reject<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    settle(app, name, headers, body, Settle::Reject).await
}

/// Where to replay from: exactly one of `from` and `event_id`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    /// `earliest`, `latest`, or an RFC 3339 time.
    from: Option<String>,
    /// This event and everything after it.
    event_id: Option<String>,
}

pub(crate) fn position(
    from: Option<&str>,
    event_id: Option<&str>,
) -> Result<StartPosition, Problem> {
    match (from, event_id) {
        (Some("earliest"), None) => Ok(StartPosition::Earliest),
        (Some("latest" | "now"), None) => Ok(StartPosition::Latest),
        (Some(t), None) => parse_time(t).map(StartPosition::Time).ok_or_else(|| {
            Problem::new(
                "invalid-request",
                format!("from = {t:?}: expected earliest, latest or an RFC 3339 time"),
            )
        }),
        (None, Some(id)) => Ok(StartPosition::EventId(id.to_owned())),
        _ => Err(Problem::new(
            "invalid-request",
            "give exactly one of from and event_id",
        )),
    }
}

/// Moves a subscription to a position: later events are delivered again, ids unchanged.
#[utoipa::path(post, path = "/v1/subscriptions/{name}/replay", tag = "dlq",
    params(("name" = String, Path)), request_body = ReplayRequest,
    responses((status = 204), (status = 403, description = "Admin only")))]
pub(crate) async fn replay<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let inner = async {
        let id = who(&app, &headers)?;
        id.require_admin("replay a subscription").map_err(fail)?;
        let sub = app.subscription(&name).await.map_err(fail)?;
        let req: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
            fail(Problem::new(
                "invalid-request",
                format!("not a replay request: {e}"),
            ))
        })?;
        let pos = position(req.from.as_deref(), req.event_id.as_deref()).map_err(fail)?;
        app.engine
            .backend()
            .reset(&sub.topic, &sub.name, pos)
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    match inner.await {
        Ok(r) => r,
        Err(p) => with_code(p),
    }
}

/// Which DLQ entries (every field optional; empty matches all).
#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct DlqQuery {
    /// Comma-separated event ids (a JSON array in request bodies).
    #[serde(default, deserialize_with = "comma_list")]
    ids: Vec<String>,
    /// Comma-separated types.
    #[serde(default, rename = "type", deserialize_with = "comma_list")]
    #[param(rename = "type")]
    types: Vec<String>,
    /// `max-attempts`, `rejected` or `expired`.
    reason: Option<String>,
    /// Dead-lettered at or after (RFC 3339).
    since: Option<String>,
    /// Dead-lettered before (RFC 3339).
    until: Option<String>,
    /// At most this many.
    limit: Option<usize>,
    /// Redrive: report only.
    #[serde(default)]
    dry_run: bool,
    /// Redrive: events per second (0: no limit).
    per_second: Option<u32>,
}

fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Text(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

impl DlqQuery {
    fn filter(&self) -> Result<DeadLetterFilter, Problem> {
        let time = |s: &Option<String>,
                    name: &str|
         -> Result<Option<std::time::SystemTime>, Problem> {
            s.as_deref()
                .map(|t| {
                    parse_time(t).ok_or_else(|| {
                        Problem::new("invalid-request", format!("{name} is not an RFC 3339 time"))
                    })
                })
                .transpose()
        };
        let reason = match self.reason.as_deref() {
            None => None,
            Some("max-attempts") => Some(DeadLetterReason::MaxAttempts),
            Some("rejected") => Some(DeadLetterReason::Rejected),
            Some("expired") => Some(DeadLetterReason::Expired),
            Some(other) => {
                return Err(Problem::new(
                    "invalid-request",
                    format!("reason {other:?}: expected max-attempts, rejected or expired"),
                ));
            }
        };
        Ok(DeadLetterFilter {
            ids: self.ids.clone(),
            types: self.types.clone(),
            seqs: Vec::new(),
            reason,
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            limit: self.limit.unwrap_or(0),
        })
    }
}

/// A DLQ entry.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DeadLetterBody {
    sequence: u64,
    /// `max-attempts`, `rejected` or `expired`.
    reason: &'static str,
    last_error: Option<String>,
    attempts: u32,
    dead_lettered_at: String,
    /// Every failed attempt: at, consumer, outcome, error.
    #[schema(value_type = Vec<Object>)]
    history: Vec<serde_json::Value>,
    /// The event, unchanged.
    #[schema(value_type = Object)]
    event: Box<RawValue>,
}

fn dead_letter_body(d: &DeadLetter) -> DeadLetterBody {
    DeadLetterBody {
        sequence: d.event.seq,
        reason: d.reason.as_str(),
        last_error: d.last_error.clone(),
        attempts: d.attempts,
        dead_lettered_at: rfc3339(d.at),
        history: d
            .history
            .iter()
            .map(|a| serde_json::json!({"at": rfc3339(a.at), "consumer": a.consumer, "outcome": a.outcome, "error": a.error}))
            .collect(),
        event: crate::raw_event(&d.event.event),
    }
}

/// Lists DLQ entries without consuming them.
#[utoipa::path(get, path = "/v1/subscriptions/{name}/dlq", tag = "dlq",
    params(("name" = String, Path), DlqQuery),
    responses((status = 200, body = [DeadLetterBody])))]
pub(crate) async fn dlq_list<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<DlqQuery>,
) -> Response {
    let inner = async {
        let id = who(&app, &headers)?;
        let sub = owned(&app, &id, &name).await?;
        let filter = q.filter().map_err(fail)?;
        let entries = app
            .engine
            .backend()
            .dead_letters(&sub.topic, &sub.name, &filter)
            .await
            .map_err(|e| fail(e.into()))?;
        Ok(Json(entries.iter().map(dead_letter_body).collect::<Vec<_>>()).into_response())
    };
    match inner.await {
        Ok(r) => r,
        Err(p) => with_code(p),
    }
}

/// One DLQ entry by event id.
#[utoipa::path(get, path = "/v1/subscriptions/{name}/dlq/{id}", tag = "dlq",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = DeadLetterBody), (status = 404)))]
pub(crate) async fn dlq_show<B: Backend>(
    State(app): State<Shared<B>>,
    Path((name, event_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let inner = async {
        let id = who(&app, &headers)?;
        let sub = owned(&app, &id, &name).await?;
        let filter = DeadLetterFilter {
            ids: vec![event_id.clone()],
            ..DeadLetterFilter::default()
        };
        let entries = app
            .engine
            .backend()
            .dead_letters(&sub.topic, &sub.name, &filter)
            .await
            .map_err(|e| fail(e.into()))?;
        let first = entries.first().ok_or_else(|| {
            fail(Problem::new(
                "not-found",
                format!("no DLQ entry for event {event_id}"),
            ))
        })?;
        Ok(Json(dead_letter_body(first)).into_response())
    };
    match inner.await {
        Ok(r) => r,
        Err(p) => with_code(p),
    }
}

/// What a redrive or purge did.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DlqReport {
    /// Ids of the matching entries.
    matched: Vec<String>,
    /// Entries moved back (redrive) or deleted (purge); 0 in a dry run.
    count: usize,
}

/// Puts DLQ entries back into the subscription's work (admin).
#[utoipa::path(post, path = "/v1/subscriptions/{name}/dlq/redrive", tag = "dlq",
    params(("name" = String, Path)), request_body = DlqQuery,
    responses((status = 200, body = DlqReport)))]
pub(crate) async fn dlq_redrive<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    dlq_change(app, name, headers, body, true).await
}

/// Deletes DLQ entries (admin).
#[utoipa::path(post, path = "/v1/subscriptions/{name}/dlq/purge", tag = "dlq",
    params(("name" = String, Path)), request_body = DlqQuery,
    responses((status = 200, body = DlqReport)))]
pub(crate) async fn dlq_purge<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    dlq_change(app, name, headers, body, false).await
}

async fn dlq_change<B: Backend>(
    app: Shared<B>,
    name: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    redrive: bool,
) -> Response {
    let inner = async {
        let id = who(&app, &headers)?;
        id.require_admin(if redrive {
            "redrive a DLQ"
        } else {
            "purge a DLQ"
        })
        .map_err(fail)?;
        let sub = app.subscription(&name).await.map_err(fail)?;
        let q: DlqQuery = if body.is_empty() {
            DlqQuery::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                fail(Problem::new(
                    "invalid-request",
                    format!("not a DLQ filter: {e}"),
                ))
            })?
        };
        let filter = q.filter().map_err(fail)?;
        let backend = app.engine.backend();
        let report = if redrive {
            let r = backend
                .redrive(
                    &sub.topic,
                    &sub.name,
                    &filter,
                    RedriveOptions {
                        dry_run: q.dry_run,
                        per_second: q.per_second.unwrap_or(0),
                    },
                )
                .await
                .map_err(|e| fail(e.into()))?;
            DlqReport {
                matched: r.matched,
                count: r.redriven,
            }
        } else {
            let matched: Vec<String> = backend
                .dead_letters(&sub.topic, &sub.name, &filter)
                .await
                .map_err(|e| fail(e.into()))?
                .iter()
                .map(|d| d.event.event.id.clone())
                .collect();
            let count = if q.dry_run {
                0
            } else {
                backend
                    .purge(&sub.topic, &sub.name, &filter)
                    .await
                    .map_err(|e| fail(e.into()))?
            };
            DlqReport { matched, count }
        };
        Ok(Json(report).into_response())
    };
    match inner.await {
        Ok(r) => r,
        Err(p) => with_code(p),
    }
}

/// Moves the dead letters of subscriptions that name a `dead_letter_topic` there, every half
/// second, until the app ends or shuts down. Publishing comes before removing: after a crash
/// in between, the next round publishes again, and the topic's dedup by (source, id) answers
/// "duplicate" instead of storing the event twice. Several servers on one backend may do the
/// same at once, for the same reason.
pub(crate) async fn forward_dead_letters<B: Backend>(app: std::sync::Weak<crate::App<B>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        if *app.shutdown.borrow() {
            return;
        }
        for sub in app.subscriptions() {
            let Some(dlt) = &sub.dead_letter_topic else {
                continue;
            };
            // Batches of 100 until the DLQ is empty, at most 10,000 a round per subscription.
            for _ in 0..100 {
                match forward_once(&app, &sub, dlt).await {
                    Ok(n) if n == FORWARD_BATCH => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(subscription = %sub.name, topic = %dlt, error = %e,
                            "dead letters not forwarded, trying again");
                        break;
                    }
                }
            }
        }
    }
}

/// Dead letters forwarded per publish.
const FORWARD_BATCH: usize = 100;

/// Forwards up to `FORWARD_BATCH` dead letters of `sub` to `dlt`; returns how many.
async fn forward_once<B: Backend>(
    app: &crate::App<B>,
    sub: &Subscription,
    dlt: &str,
) -> Result<usize, canon_backend::BackendError> {
    let backend = app.engine.backend();
    let entries = backend
        .dead_letters(
            &sub.topic,
            &sub.name,
            &DeadLetterFilter {
                limit: FORWARD_BATCH,
                ..DeadLetterFilter::default()
            },
        )
        .await?;
    if entries.is_empty() {
        return Ok(0);
    }
    let requests = entries
        .iter()
        .map(|d| canon_backend::PublishRequest {
            ordering_key: d.event.ordering_key.clone(),
            ..canon_backend::PublishRequest::new(d.event.event.clone())
        })
        .collect();
    backend.publish(dlt, requests).await?;
    // Exactly the entries listed: another entry with one of these ids (from another source,
    // or dead-lettered since) stays for the next round.
    let seqs = entries.iter().map(|d| d.event.seq).collect();
    backend
        .purge(
            &sub.topic,
            &sub.name,
            &DeadLetterFilter {
                seqs,
                ..DeadLetterFilter::default()
            },
        )
        .await?;
    tracing::warn!(subscription = %sub.name, topic = %dlt, count = entries.len(),
        "dead letters forwarded");
    Ok(entries.len())
}
