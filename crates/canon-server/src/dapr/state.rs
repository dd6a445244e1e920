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

/// An etag: the key's revision and a digest of its value. Revisions restart after a delete,
/// so the digest keeps an etag of an earlier life of the key from matching a new one (unless
/// the value is the same again, which is the same state).
fn etag(revision: u64, value: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(value);
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{revision}-{hex}")
}

/// The revision an etag names, with the etag (checked against the value by [`current_at`]).
fn etag_of(raw: &str) -> Result<(u64, String), DaprError> {
    let bad = || {
        DaprError::new(
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
            format!("etag {raw:?} is not an etag this store issued"),
        )
    };
    let text = raw.trim().trim_matches('"');
    let (rev, _) = text.split_once('-').ok_or_else(bad)?;
    let rev = rev.parse::<u64>().ok().filter(|r| *r > 0).ok_or_else(bad)?;
    Ok((rev, text.to_owned()))
}

/// The revision to write at if `etag` is the key's current one; `Err(its etag)` otherwise.
async fn current_at<B: Backend>(
    app: &crate::App<B>,
    store: &str,
    key: &str,
    (rev, etag_text): &(u64, String),
) -> Result<u64, String> {
    match app.engine.backend().kv_get(&bucket(store), key).await {
        Ok(Some(e)) if e.revision == *rev && etag(e.revision, &e.value) == *etag_text => Ok(*rev),
        Ok(Some(e)) => Err(etag(e.revision, &e.value)),
        Ok(None) => Err("none (the key has no value)".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// The condition of one save.
enum Expect {
    Any,
    Absent,
    Etag((u64, String)),
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
                (Some(e), _) => Expect::Etag(etag_of(e)?),
                // First write wins: only if nobody wrote the key yet.
                (None, true) => Expect::Absent,
                (None, false) => Expect::Any,
            };
            plan.push((
                item.key.as_str(),
                item.value.get().as_bytes().to_vec(),
                expect,
            ));
        }
        let backend = app.engine.backend();
        for (key, value, expect) in plan {
            let expect = match expect {
                Expect::Any => None,
                Expect::Absent => Some(0),
                Expect::Etag(e) => match current_at(&app, &store, key, &e).await {
                    Ok(rev) => Some(rev),
                    Err(current) => {
                        return Err(DaprError::new(
                            StatusCode::CONFLICT,
                            "ERR_STATE_SAVE",
                            format!("possible etag mismatch for key {key}: its etag is {current}"),
                        ));
                    }
                },
            };
            match backend.kv_put(&bucket(&store), key, value, expect).await {
                Ok(_) => {}
                Err(BackendError::RevisionMismatch { .. }) => {
                    return Err(DaprError::new(
                        StatusCode::CONFLICT,
                        "ERR_STATE_SAVE",
                        format!(
                            "possible etag mismatch for key {key}: it changed meanwhile, or first-write found a value"
                        ),
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
                    (header::ETAG, etag(entry.revision, &entry.value)),
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
            Some(Ok(v)) => {
                let e = etag_of(v)?;
                match current_at(&app, &store, &key, &e).await {
                    Ok(rev) => Some(rev),
                    Err(current) => {
                        return Err(DaprError::new(
                            StatusCode::CONFLICT,
                            "ERR_STATE_DELETE",
                            format!("possible etag mismatch for key {key}: its etag is {current}"),
                        ));
                    }
                }
            }
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
            Err(BackendError::RevisionMismatch { .. }) => Err(DaprError::new(
                StatusCode::CONFLICT,
                "ERR_STATE_DELETE",
                format!("possible etag mismatch for key {key}: it changed meanwhile"),
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
