//! Publishing over HTTP: the CloudEvents HTTP binding (structured, binary and batched modes) and
//! the seed dialects (`?dialect=bme`). Every event is checked against its catalog before
//! anything is stored; the answer gives every event's outcome.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canon_backend::{Backend, BackendError, PublishOutcome, PublishRequest};
use canon_catalog::Violation;
use canon_engine::{Refusal, Submit};
use canon_envelope::{CloudEvent, Dialect, EnvelopeErrors, HttpMode, ext, rules};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::metrics::{TopicLabel, TopicOutcome};
use crate::problem::Problem;
use crate::{Shared, with_code};

/// Options of a publish request.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct PublishParams {
    /// The body's envelope dialect: `cloudevents` (default; the HTTP binding decides the mode),
    /// `bme`, `go4u` or `lifeos`. A dialect body is one document or a JSON array of them.
    dialect: Option<String>,
    /// `true`: store the valid events of a batch and reject the others. Default: a batch is
    /// all-or-nothing.
    #[serde(default)]
    partial: bool,
}

/// One event's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct EventResult {
    /// Position in the request (0 for a single event).
    index: usize,
    /// The event id, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// `stored`, `duplicate`, `rejected`, or `not-stored` (valid, but its all-or-nothing
    /// batch was rejected).
    status: &'static str,
    /// The topic it went to.
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<String>,
    /// Its sequence in the topic (for a duplicate: the original's).
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    /// Every reason for a rejection.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    problems: Vec<Violation>,
}

/// The answer to a publish.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PublishResponse {
    /// One entry per event, in request order.
    results: Vec<EventResult>,
}

/// Publishes events routed by their catalog type.
#[utoipa::path(
    post, path = "/v1/events", tag = "publish",
    params(PublishParams),
    request_body(content = Object, description = "A CloudEvent (structured, binary or batched mode) or dialect documents", content_type = "application/cloudevents+json"),
    responses(
        (status = 200, body = PublishResponse, description = "Every event stored or a duplicate (or, with partial=true, each one's outcome)"),
        (status = 400, description = "Not a valid envelope (invalid-event)"),
        (status = 403, description = "The caller is not a declared producer (forbidden)"),
        (status = 409, description = "Expected sequence mismatch (conflict)"),
        (status = 413, description = "Body larger than body_limit"),
        (status = 415, description = "Not a CloudEvents content type, and no dialect named"),
        (status = 422, description = "An event breaks its catalog (rejected); nothing stored"),
    )
)]
pub(crate) async fn publish_routed<B: Backend>(
    State(app): State<Shared<B>>,
    Query(params): Query<PublishParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    publish(app, None, params, headers, body).await
}

/// Publishes events to a named topic (schema-less topics, or a check that types go where their
/// catalog says).
#[utoipa::path(
    post, path = "/v1/topics/{topic}/events", tag = "publish",
    params(("topic" = String, Path, description = "The topic"), PublishParams),
    request_body(content = Object, description = "As for /v1/events", content_type = "application/cloudevents+json"),
    responses(
        (status = 200, body = PublishResponse, description = "Outcome per event"),
        (status = 422, description = "An event is refused (rejected)"),
    )
)]
pub(crate) async fn publish_to_topic<B: Backend>(
    State(app): State<Shared<B>>,
    Path(topic): Path<String>,
    Query(params): Query<PublishParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    publish(app, Some(topic), params, headers, body).await
}

fn envelope_problem(errors: &EnvelopeErrors) -> Problem {
    let status_415 = errors
        .iter()
        .any(|e| e.code == canon_envelope::ErrorCode::UnsupportedFormat);
    let list: Vec<serde_json::Value> = errors
        .iter()
        .map(|e| json!({"code": e.code.as_str(), "location": e.location, "message": e.message}))
        .collect();
    let code = if status_415 {
        "unsupported-media-type"
    } else {
        "invalid-event"
    };
    Problem::new(code, errors.to_string()).with("errors", list)
}

/// Reads the events of a request.
fn decode(
    params: &PublishParams,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<CloudEvent>, Problem> {
    let dialect = match params.dialect.as_deref() {
        None => Dialect::CloudEvents,
        Some(name) => name.parse::<Dialect>().map_err(|e| {
            Problem::new("invalid-request", e.to_string()).with("parameter", "dialect")
        })?,
    };
    if dialect != Dialect::CloudEvents {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            let docs: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)
                .map_err(|e| Problem::new("invalid-event", format!("not a JSON array: {e}")))?;
            let mut out = Vec::with_capacity(docs.len());
            let mut problems = Vec::new();
            for (i, d) in docs.iter().enumerate() {
                match dialect.decode(d.get().as_bytes()) {
                    Ok(ev) => out.push(ev),
                    Err(errs) => problems.extend(errs.iter().map(|e| {
                        json!({"code": e.code.as_str(), "location": format!("/{i}{}", e.location), "message": e.message})
                    })),
                }
            }
            if !problems.is_empty() {
                return Err(Problem::new(
                    "invalid-event",
                    "some documents are not valid envelopes",
                )
                .with("errors", problems));
            }
            return Ok(out);
        }
        return dialect
            .decode(body)
            .map(|e| vec![e])
            .map_err(|e| envelope_problem(&e));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let has_ce = headers.keys().any(|k| k.as_str().starts_with("ce-"));
    let mode = HttpMode::detect(content_type, has_ce).map_err(|e| envelope_problem(&e))?;
    match mode {
        HttpMode::Structured => CloudEvent::from_json(body)
            .map(|e| vec![e])
            .map_err(|e| envelope_problem(&e)),
        HttpMode::Batched => CloudEvent::batch_from_json(body).map_err(|e| envelope_problem(&e)),
        HttpMode::Binary => {
            let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
            CloudEvent::from_http_binary(pairs, body)
                .map(|e| vec![e])
                .map_err(|e| envelope_problem(&e))
        }
        HttpMode::NotCloudEvent => Err(Problem::new(
            "unsupported-media-type",
            "send Content-Type application/cloudevents+json (structured), \
             application/cloudevents-batch+json (batch), ce- headers (binary mode), \
             or name a dialect with ?dialect=",
        )),
    }
}

fn rejected(index: usize, id: Option<String>, problems: Vec<Violation>) -> EventResult {
    EventResult {
        index,
        id,
        status: "rejected",
        topic: None,
        sequence: None,
        problems,
    }
}

fn refusal_violations(r: Refusal) -> Vec<Violation> {
    match r {
        Refusal::Invalid(v) => v,
        other => vec![Violation {
            code: match other {
                Refusal::WrongTopic { .. } => "wrong-topic",
                Refusal::TopicRequired => "topic-required",
                _ => "unknown-type",
            },
            type_name: None,
            version: None,
            location: "/type".to_owned(),
            message: other.to_string(),
        }],
    }
}

async fn publish<B: Backend>(
    app: Shared<B>,
    topic: Option<String>,
    params: PublishParams,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let identity = match app.identify(&headers) {
        Ok(i) => i,
        Err(p) => return with_code(p),
    };
    let mut events = match decode(&params, &headers, &body) {
        Ok(e) => e,
        Err(p) => return with_code(p),
    };
    // The W3C trace context of the request travels with events that carry none.
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok())
        && rules::parse_traceparent(tp).is_some()
    {
        for ev in &mut events {
            if ev.traceparent().is_none() {
                ev.set_extension(ext::TRACEPARENT, tp);
            }
        }
    }
    let expected = match headers.get("canon-expected-sequence") {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) if events.len() == 1 => Some(n),
            _ => {
                return with_code(Problem::new(
                    "invalid-request",
                    "Canon-Expected-Sequence takes a non-negative integer, on single-event publishes",
                ));
            }
        },
    };
    let producer = identity.service.as_deref();
    let mut results: Vec<Option<EventResult>> = Vec::with_capacity(events.len());
    let mut prepared: BTreeMap<String, Vec<(usize, PublishRequest)>> = BTreeMap::new();
    for (index, event) in events.into_iter().enumerate() {
        let id = event.id.clone();
        let submit = Submit {
            event,
            expected_sequence: expected,
        };
        match app.engine.prepare(submit, producer, topic.as_deref()) {
            Ok(p) => {
                prepared
                    .entry(p.topic)
                    .or_default()
                    .push((index, p.request));
                results.push(None);
            }
            Err(Refusal::NotAProducer { producer, ty }) => {
                return with_code(
                    Problem::new(
                        "forbidden",
                        format!("{producer} is not a declared producer of {ty}"),
                    )
                    .with("rule", "declared-producer")
                    .with("index", index),
                );
            }
            Err(r) => results.push(Some(rejected(index, Some(id), refusal_violations(r)))),
        }
    }
    let any_rejected = results.iter().any(Option::is_some);
    if !params.partial {
        if any_rejected {
            for t in prepared.values() {
                for (i, r) in t {
                    results[*i] = Some(EventResult {
                        index: *i,
                        id: Some(r.event.id.clone()),
                        status: "not-stored",
                        topic: None,
                        sequence: None,
                        problems: Vec::new(),
                    });
                }
            }
            let n = results
                .iter()
                .flatten()
                .filter(|r| r.status == "rejected")
                .count();
            count_rejected(&app, topic.as_deref(), n);
            let results: Vec<EventResult> = results.into_iter().flatten().collect();
            return with_code(
                Problem::new(
                    "rejected",
                    format!("{n} event(s) break their catalog; nothing was stored"),
                )
                .with("results", serde_json::to_value(results).unwrap_or_default()),
            );
        }
        if prepared.len() > 1 {
            return with_code(Problem::new(
                "invalid-request",
                "a batch is atomic within one topic and these events travel on several; \
                 split the batch or send ?partial=true",
            ));
        }
    }
    for (topic, batch) in prepared {
        // A server without catalogs makes topics as they are named.
        if *app.engine.schemaless() == canon_engine::SchemaLess::All
            && let Err(e) = app.ensure_topic(&topic).await
        {
            return with_code(Problem::from(e));
        }
        let (indexes, requests): (Vec<usize>, Vec<PublishRequest>) = batch.into_iter().unzip();
        let ids: Vec<String> = requests.iter().map(|r| r.event.id.clone()).collect();
        let label = TopicLabel {
            topic: topic.clone(),
        };
        match app.engine.backend().publish(&topic, requests).await {
            Ok(outcomes) => {
                for ((i, id), o) in indexes.into_iter().zip(ids).zip(outcomes) {
                    let (status, seq) = match o {
                        PublishOutcome::Stored { seq } => ("stored", seq),
                        PublishOutcome::Duplicate { seq } => ("duplicate", seq),
                    };
                    app.metrics
                        .published
                        .get_or_create(&TopicOutcome {
                            topic: topic.clone(),
                            outcome: status,
                        })
                        .inc();
                    results[i] = Some(EventResult {
                        index: i,
                        id: Some(id),
                        status,
                        topic: Some(topic.clone()),
                        sequence: Some(seq),
                        problems: Vec::new(),
                    });
                }
            }
            Err(e) if !params.partial => return with_code(Problem::from(e)),
            Err(e) => {
                let code = match &e {
                    BackendError::Conflict { .. } => "conflict",
                    _ => "storage-unavailable",
                };
                for (i, id) in indexes.into_iter().zip(ids) {
                    results[i] = Some(rejected(
                        i,
                        Some(id),
                        vec![Violation {
                            code,
                            type_name: None,
                            version: None,
                            location: String::new(),
                            message: e.to_string(),
                        }],
                    ));
                }
            }
        }
        app.metrics
            .publish_seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
    }
    let results: Vec<EventResult> = results.into_iter().flatten().collect();
    count_rejected(
        &app,
        topic.as_deref(),
        results.iter().filter(|r| r.status == "rejected").count(),
    );
    (StatusCode::OK, axum::Json(PublishResponse { results })).into_response()
}

/// Counts rejected events under the topic the request named (`-`: none; a rejected event's
/// own topic may be unknown).
fn count_rejected<B: Backend>(app: &Shared<B>, topic: Option<&str>, n: usize) {
    if n > 0 {
        app.metrics
            .published
            .get_or_create(&TopicOutcome {
                topic: topic.unwrap_or("-").to_owned(),
                outcome: "rejected",
            })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }
}
