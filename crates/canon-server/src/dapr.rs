//! The Dapr sidecar API (docs/dapr.md): publish and bulk publish, state and secrets, as seed
//! 004 uses them, so that an app written for a Dapr sidecar talks to Canon unchanged. Errors
//! are Dapr's: `application/json` with `{"errorCode","message"}`.

pub(crate) mod apps;
pub(crate) mod deliver;
pub(crate) mod jobs;
mod publish;
mod secrets;
mod state;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use canon_backend::Backend;
use serde_json::json;

use crate::Shared;

pub(crate) use secrets::SecretStores;

/// The Dapr routes.
pub(crate) fn routes<B: Backend>() -> Router<Shared<B>> {
    Router::new()
        .route("/v1.0/healthz", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(publish::single::<B>),
        )
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
            post(publish::bulk::<B>),
        )
        .route(
            "/v1.0/publish/bulk/{pubsub}/{*topic}",
            post(publish::bulk::<B>),
        )
        .route("/v1.0/state/{store}", post(state::save::<B>))
        .route(
            "/v1.0/state/{store}/{key}",
            get(state::get::<B>).delete(state::delete::<B>),
        )
        .route("/v1.0/secrets/{store}/{name}", get(secrets::get::<B>))
        .route("/v1/dapr/apps/{id}/subscribe", post(apps::rediscover::<B>))
        .route(
            "/v1.0-alpha1/jobs/{name}",
            post(jobs::create::<B>)
                .get(jobs::get::<B>)
                .delete(jobs::delete::<B>),
        )
        .route(
            "/v1.0/jobs/{name}",
            post(jobs::create::<B>)
                .get(jobs::get::<B>)
                .delete(jobs::delete::<B>),
        )
}

/// The configured pub/sub component of that name.
pub(crate) fn component<'a, B: Backend>(
    app: &'a crate::App<B>,
    name: &str,
) -> Option<&'a crate::config::PubsubConfig> {
    app.config.dapr.pubsubs.iter().find(|p| p.name == name)
}

/// A new random (version 4) UUID, for the envelopes Dapr makes.
pub(crate) fn new_id() -> String {
    uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes())
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// A Dapr-shaped error.
#[derive(Debug)]
pub(crate) struct DaprError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<serde_json::Value>,
}

impl DaprError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        DaprError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }

    fn with(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

impl IntoResponse for DaprError {
    fn into_response(self) -> Response {
        let mut body = json!({"errorCode": self.code, "message": self.message});
        if let (Some(serde_json::Value::Object(extra)), Some(map)) =
            (self.extra, body.as_object_mut())
        {
            map.extend(extra);
        }
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Every `errorCode` the Dapr API answers with, and its status (docs/dapr.md lists the same;
/// a test checks both ways).
pub const CODES: &[(&str, u16)] = &[
    ("ERR_PUBSUB_NOT_FOUND", 404),
    ("ERR_PUBSUB_REQUEST_METADATA", 400),
    ("ERR_PUBSUB_CLOUD_EVENTS_SER", 400),
    ("ERR_PUBSUB_EVENTS_SER", 400),
    ("ERR_PUBSUB_FORBIDDEN", 403),
    ("ERR_PUBSUB_CATALOG", 400),
    ("ERR_TOPIC_NAME_EMPTY", 404),
    ("ERR_PUBSUB_PUBLISH_MESSAGE", 500),
    ("ERR_STATE_STORE_NOT_FOUND", 400),
    ("ERR_MALFORMED_REQUEST", 400),
    ("ERR_STATE_SAVE", 409),
    ("ERR_STATE_GET", 500),
    ("ERR_STATE_DELETE", 409),
    ("ERR_SECRET_STORE_NOT_FOUND", 400),
    ("ERR_SECRET_GET", 404),
    ("ERR_UNAUTHENTICATED", 401),
    ("ERR_BODY_TOO_LARGE", 413),
    ("ERR_REQUEST_TIMEOUT", 408),
    ("ERR_NOT_FOUND", 404),
    ("ERR_METHOD_NOT_ALLOWED", 405),
    ("ERR_INTERNAL", 500),
    ("DAPR_SCHEDULER_SCHEDULE_EMPTY", 400),
    ("DAPR_SCHEDULER_JOB_EXISTS", 409),
    ("DAPR_SCHEDULER_SCHEDULE_JOB", 500),
    ("DAPR_SCHEDULER_GET_JOB", 404),
    ("DAPR_SCHEDULER_DELETE_JOB", 500),
];

/// The caller, or a Dapr-shaped 401.
pub(crate) fn caller<B: Backend>(
    app: &crate::App<B>,
    headers: &axum::http::HeaderMap,
) -> Result<crate::auth::Identity, DaprError> {
    app.identify(headers)
        .map_err(|p| DaprError::new(StatusCode::UNAUTHORIZED, "ERR_UNAUTHENTICATED", p.detail))
}
