//! Live tail: a topic's events as Server-Sent Events, from now, an offset or a time, filtered by
//! type and subject. Each SSE `id` is the event's sequence, so a reconnecting client's
//! `Last-Event-ID` resumes right after the last event it saw. Tailing consumes nothing.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use canon_backend::{Backend, StoredEvent};
use futures_util::stream;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Identity;
use crate::problem::Problem;
use crate::subs::position;
use crate::{Shared, with_code};

/// What to tail.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct TailParams {
    /// `now` (default), `earliest`, a sequence number, or an RFC 3339 time.
    from: Option<String>,
    /// Comma-separated types (catalog names); default all the caller may read.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    types: Option<String>,
    /// Only events with this subject.
    subject: Option<String>,
}

/// Streams a topic's events as they are stored.
#[utoipa::path(get, path = "/v1/topics/{topic}/tail", tag = "topics",
    params(("topic" = String, Path), TailParams),
    responses((status = 200, description = "text/event-stream: `event: cloudevent`, `id: <sequence>`, `data: <CloudEvent JSON>`")))]
pub(crate) async fn tail<B: Backend>(
    State(app): State<Shared<B>>,
    Path(topic): Path<String>,
    Query(params): Query<TailParams>,
    headers: HeaderMap,
) -> Response {
    let id = match app.identify(&headers) {
        Ok(i) => i,
        Err(p) => return with_code(p),
    };
    match start(&app, &topic, &params, &headers).await {
        Ok(from) => stream_from(app, topic, from, params, id).into_response(),
        Err(p) => with_code(p),
    }
}

async fn start<B: Backend>(
    app: &Shared<B>,
    topic: &str,
    params: &TailParams,
    headers: &HeaderMap,
) -> Result<u64, Problem> {
    let backend = app.engine.backend();
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        backend.topic_info(topic).await?;
        return Ok(last + 1);
    }
    match params.from.as_deref() {
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            backend.topic_info(topic).await?;
            s.parse::<u64>()
                .map_err(|e| Problem::new("invalid-request", format!("from: {e}")))
        }
        other => {
            let pos = position(Some(other.unwrap_or("now")), None)?;
            Ok(backend.locate(topic, &pos).await?)
        }
    }
}

fn keep<B: Backend>(
    app: &Shared<B>,
    id: &Identity,
    topic: &str,
    params: &TailParams,
    e: &StoredEvent,
) -> bool {
    let ty = app.base_type(&e.event.ty);
    let type_ok = match &params.types {
        Some(list) => list
            .split(',')
            .any(|t| t.trim() == ty || t.trim() == e.event.ty),
        None => true,
    };
    let subject_ok = params
        .subject
        .as_deref()
        .is_none_or(|s| e.event.subject.as_deref() == Some(s));
    let allowed = id.admin
        || id.service.is_none()
        || app.engine.catalog_of(&e.event.ty).is_none()
        || app
            .consumable(topic, id.service.as_deref())
            .is_some_and(|set| set.contains(ty))
        || app
            .engine
            .catalog_of(&e.event.ty)
            .and_then(|c| c.lookup(&e.event.ty))
            .is_some_and(|(t, _)| t.producers.iter().any(|p| Some(p) == id.service.as_ref()));
    type_ok && subject_ok && allowed
}

fn stream_from<B: Backend>(
    app: Shared<B>,
    topic: String,
    from: u64,
    params: TailParams,
    id: Identity,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let stop = app.shutdown.subscribe();
    let state = (
        app,
        topic,
        from,
        params,
        id,
        std::collections::VecDeque::<StoredEvent>::new(),
    );
    let s = stream::unfold(state, move |(app, topic, mut next, params, id, mut buf)| {
        let mut stop = stop.clone();
        async move {
            loop {
                if next == u64::MAX {
                    return None;
                }
                if let Some(e) = buf.pop_front() {
                    if !keep(&app, &id, &topic, &params, &e) {
                        continue;
                    }
                    let data = String::from_utf8(e.event.to_json()).unwrap_or_default();
                    let ev = Event::default()
                        .event("cloudevent")
                        .id(e.seq.to_string())
                        .data(data);
                    return Some((Ok(ev), (app, topic, next, params, id, buf)));
                }
                if *stop.borrow() {
                    return None;
                }
                let read = tokio::select! {
                    r = app.engine.backend().read(&topic, next, 256, Duration::from_secs(15)) => r,
                    _ = stop.wait_for(|s| *s) => return None,
                };
                match read {
                    Ok(events) => {
                        if let Some(last) = events.last() {
                            next = last.seq + 1;
                        }
                        buf.extend(events);
                    }
                    Err(e) => {
                        let ev = Event::default().event("error").data(e.to_string());
                        return Some((Ok(ev), (app, topic, u64::MAX, params, id, buf)));
                    }
                }
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default())
}
