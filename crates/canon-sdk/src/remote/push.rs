//! A push subscription's endpoint in an axum app: the server POSTs each event (structured or
//! binary mode, or a batch) and reads the Dapr-style answer.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use canon_envelope::{CloudEvent, HttpMode};
use serde_json::json;

use super::client::Client;
use crate::dispatch::{Dispatcher, Report};
use crate::raw::RawEvent;

/// A `POST` route that dispatches pushed events and answers as Canon (and Dapr) expect, by
/// the consumer's table: `{"status":"SUCCESS"}` when every handler succeeded (after the events
/// they emitted were published through `client`) or consent skipped the event,
/// `{"status":"RETRY"}` when a handler failed or the emitted events could not be published,
/// `{"status":"DROP"}` (to the DLQ) when a handler rejected the event, it is invalid or not a
/// CloudEvent, or no handler accepts it. A batch gets
/// `{"statuses":[{"entryId":"<id>","status":...}]}`.
///
/// ```no_run
/// # let dispatcher = canon_sdk::Dispatcher::new();
/// let client = canon_sdk::remote::Client::new("http://127.0.0.1:8480").with_source("billing");
/// let app: axum::Router = axum::Router::new()
///     .route("/events", canon_sdk::remote::push_handler(dispatcher, client));
/// ```
pub fn push_handler<S: Clone + Send + Sync + 'static>(
    dispatcher: Dispatcher,
    client: Client,
) -> MethodRouter<S> {
    post(move |headers: HeaderMap, body: Bytes| {
        let (d, c) = (dispatcher.clone(), client.clone());
        async move { receive(&d, &c, &headers, &body).await }
    })
}

async fn receive(d: &Dispatcher, client: &Client, headers: &HeaderMap, body: &[u8]) -> Response {
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
            // Retrying cannot make it a CloudEvent: to the DLQ, with the reason in the log.
            tracing::warn!(error = %e, "pushed body is not a CloudEvent; answering DROP");
            return answer(json!({"status": "DROP", "error": e.to_string()}));
        }
    };
    let batch = matches!(HttpMode::detect(ct, has_ce), Ok(HttpMode::Batched));
    let mut statuses = Vec::with_capacity(events.len());
    for event in events {
        let id = event.id.clone();
        let report = d
            .dispatch_raw(RawEvent::new(event, d.catalogs()), false)
            .await;
        let mut status = status(&report);
        if status == "SUCCESS" && !report.emitted.is_empty() {
            for e in &report.emitted {
                if let Err(err) = client
                    .publish_event(&e.to_cloud_event(client.source()))
                    .await
                {
                    tracing::warn!(error = %err, "publishing an emitted event failed; answering RETRY");
                    status = "RETRY";
                    break;
                }
            }
        }
        statuses.push((id, status));
    }
    let body = if batch {
        json!({"statuses": statuses.iter().map(|(id, s)| json!({"entryId": id, "status": s})).collect::<Vec<_>>()})
    } else {
        json!({"status": statuses.first().map_or("SUCCESS", |(_, s)| *s)})
    };
    answer(body)
}

fn answer(body: serde_json::Value) -> Response {
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
