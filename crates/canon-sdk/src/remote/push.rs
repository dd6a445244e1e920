//! A push subscription's endpoint in an axum app: the server POSTs each event (structured or
//! binary mode, or a batch) and reads the Dapr-style answer.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use canon_envelope::{CloudEvent, HttpMode};
use serde_json::json;

use crate::dispatch::{Dispatcher, Report};
use crate::raw::RawEvent;

/// A `POST` route that dispatches pushed events and answers as Canon (and Dapr) expect:
/// `{"status":"SUCCESS"}` when every handler succeeded or consent skipped the event,
/// `{"status":"RETRY"}` when a handler failed, `{"status":"DROP"}` (to the DLQ) when a handler
/// rejected the event, it is invalid, or no handler accepts it. A batch gets
/// `{"statuses":[{"entryId":"<id>","status":...}]}`. A body that is not a CloudEvent is
/// answered 400 and counts as a failed attempt.
///
/// ```no_run
/// # let dispatcher = canon_sdk::Dispatcher::new();
/// let app: axum::Router = axum::Router::new()
///     .route("/events", canon_sdk::remote::push_handler(dispatcher));
/// ```
pub fn push_handler<S: Clone + Send + Sync + 'static>(dispatcher: Dispatcher) -> MethodRouter<S> {
    post(move |headers: HeaderMap, body: Bytes| {
        let d = dispatcher.clone();
        async move { receive(&d, &headers, &body).await }
    })
}

async fn receive(d: &Dispatcher, headers: &HeaderMap, body: &[u8]) -> Response {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let has_ce = headers.keys().any(|k| k.as_str().starts_with("ce-"));
    let events = match HttpMode::detect(ct, has_ce) {
        Ok(HttpMode::Structured) => CloudEvent::from_json(body).map(|e| vec![e]),
        Ok(HttpMode::Batched) => CloudEvent::batch_from_json(body),
        Ok(HttpMode::Binary) => CloudEvent::from_http_binary(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
            body,
        )
        .map(|e| vec![e]),
        Ok(HttpMode::NotCloudEvent) => CloudEvent::from_json(body).map(|e| vec![e]),
        Err(e) => Err(e),
    };
    let events = match events {
        Ok(e) => e,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                json!({"status": "RETRY", "error": e.to_string()}).to_string(),
            )
                .into_response();
        }
    };
    let batch = matches!(HttpMode::detect(ct, has_ce), Ok(HttpMode::Batched));
    let mut statuses = Vec::with_capacity(events.len());
    for event in events {
        let id = event.id.clone();
        let report = d.dispatch(RawEvent::new(event, d.catalogs())).await;
        statuses.push((id, status(&report)));
    }
    let body = if batch {
        json!({"statuses": statuses.iter().map(|(id, s)| json!({"entryId": id, "status": s})).collect::<Vec<_>>()})
    } else {
        json!({"status": statuses.first().map_or("SUCCESS", |(_, s)| *s)})
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn status(report: &Report) -> &'static str {
    if report.rejected() || report.invalid.is_some() || report.unhandled {
        "DROP"
    } else if !report.failures.is_empty() {
        "RETRY"
    } else {
        "SUCCESS"
    }
}
