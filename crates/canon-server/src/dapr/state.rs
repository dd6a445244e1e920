//! The state API: `POST /v1.0/state/{store}` (bulk save with etags and first-write or
//! last-write concurrency), `GET` and `DELETE /v1.0/state/{store}/{key}`. A store is the
//! backend's key-value bucket `canon.state.<store>`; an etag is the key's revision.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canon_backend::{Backend, BackendError};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{DaprError, caller};
use crate::Shared;

fn bucket(store: &str) -> String {
    format!("canon.state.{store}")
}

fn known<B: Backend>(app: &crate::App<B>, store: &str) -> Result<(), DaprError> {
    if app.config.dapr.state_stores.iter().any(|s| s == store) {
        Ok(())
    } else {
        Err(DaprError::new(
            StatusCode::BAD_REQUEST,
            "ERR_STATE_STORE_NOT_FOUND",
            format!("state store {store} is not configured (dapr.state_stores)"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    key: String,
    value: Box<RawValue>,
    etag: Option<String>,
    #[serde(default)]
    options: Options,
    #[allow(
        dead_code,
        reason = "accepted as Dapr sends it; no store-specific metadata applies"
    )]
    metadata: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Options {
    concurrency: Option<String>,
    #[allow(dead_code, reason = "every write here is strongly consistent")]
    consistency: Option<String>,
}

fn etag_of(raw: &str) -> Result<u64, DaprError> {
    raw.trim()
        .trim_matches('"')
        .parse::<u64>()
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| {
            DaprError::new(
                StatusCode::BAD_REQUEST,
                "ERR_MALFORMED_REQUEST",
                format!("etag {raw:?} is not an etag this store issued"),
            )
        })
}

/// Saves every item, in order. Items are all checked before the first is written.
pub(crate) async fn save<B: Backend>(
    State(app): State<Shared<B>>,
    Path(store): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        caller(&app, &headers)?;
        known(&app, &store)?;
        let items: Vec<Item> = serde_json::from_slice(&body).map_err(|e| {
            DaprError::new(
                StatusCode::BAD_REQUEST,
                "ERR_MALFORMED_REQUEST",
                format!("expected a JSON array of {{\"key\",\"value\"}}: {e}"),
            )
        })?;
        let mut plan = Vec::with_capacity(items.len());
        for item in &items {
            if item.key.is_empty() {
                return Err(DaprError::new(
                    StatusCode::BAD_REQUEST,
                    "ERR_MALFORMED_REQUEST",
                    "a state key must not be empty",
                ));
            }
            let first_write = match item.options.concurrency.as_deref() {
                None | Some("last-write") => false,
                Some("first-write") => true,
                Some(other) => {
                    return Err(DaprError::new(
                        StatusCode::BAD_REQUEST,
                        "ERR_MALFORMED_REQUEST",
                        format!("concurrency {other:?}: use first-write or last-write"),
                    ));
                }
            };
            let expect = match (&item.etag, first_write) {
                (Some(e), _) => Some(etag_of(e)?),
                // First write wins: only if nobody wrote the key yet.
                (None, true) => Some(0),
                (None, false) => None,
            };
            plan.push((
                item.key.as_str(),
                item.value.get().as_bytes().to_vec(),
                expect,
            ));
        }
        let backend = app.engine.backend();
        for (key, value, expect) in plan {
            match backend.kv_put(&bucket(&store), key, value, expect).await {
                Ok(_) => {}
                Err(BackendError::RevisionMismatch { current }) => {
                    return Err(DaprError::new(
                        StatusCode::CONFLICT,
                        "ERR_STATE_SAVE",
                        format!("possible etag mismatch for key {key}: it is at etag {current}"),
                    ));
                }
                Err(e) => {
                    return Err(DaprError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "ERR_STATE_SAVE",
                        format!("failed saving state for key {key}: {e}"),
                    ));
                }
            }
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// The value with its `ETag`; 204 when the key has none.
pub(crate) async fn get<B: Backend>(
    State(app): State<Shared<B>>,
    Path((store, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        caller(&app, &headers)?;
        known(&app, &store)?;
        match app.engine.backend().kv_get(&bucket(&store), &key).await {
            Ok(Some(entry)) => Ok((
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json".to_owned()),
                    (header::ETAG, entry.revision.to_string()),
                ],
                entry.value,
            )
                .into_response()),
            Ok(None) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(e) => Err(DaprError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_STATE_GET",
                format!("failed getting state for key {key}: {e}"),
            )),
        }
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Deletes a key; with `If-Match: <etag>`, only at that etag (409 otherwise).
pub(crate) async fn delete<B: Backend>(
    State(app): State<Shared<B>>,
    Path((store, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        caller(&app, &headers)?;
        known(&app, &store)?;
        let expect = match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) => Some(etag_of(v)?),
            Some(Err(_)) => {
                return Err(DaprError::new(
                    StatusCode::BAD_REQUEST,
                    "ERR_MALFORMED_REQUEST",
                    "If-Match is not text",
                ));
            }
        };
        match app
            .engine
            .backend()
            .kv_delete(&bucket(&store), &key, expect)
            .await
        {
            Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(BackendError::RevisionMismatch { current }) => Err(DaprError::new(
                StatusCode::CONFLICT,
                "ERR_STATE_DELETE",
                format!("possible etag mismatch for key {key}: it is at etag {current}"),
            )),
            Err(e) => Err(DaprError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_STATE_DELETE",
                format!("failed deleting state for key {key}: {e}"),
            )),
        }
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
