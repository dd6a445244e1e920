//! RFC 9457 problem details: every error answer of the API. `code` is stable (docs/http-api.md
//! lists them); `title` and `detail` are for people.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canon_backend::BackendError;
use serde_json::{Map, Value, json};

/// An error answer.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `invalid-event`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub detail: String,
    /// Further members (`errors`, `results`, `current_sequence`, ...).
    pub extra: Map<String, Value>,
    /// Seconds after which retrying may help (sets `Retry-After`).
    pub retry_after: Option<u64>,
}

/// Every problem code the API answers with, and its status. docs/http-api.md lists the same
/// set; a test checks that.
pub const CODES: &[(&str, u16)] = &[
    ("invalid-event", 400),
    ("invalid-request", 400),
    ("unauthenticated", 401),
    ("forbidden", 403),
    ("not-found", 404),
    ("conflict", 409),
    ("already-exists", 409),
    ("lease-lost", 409),
    ("revision-mismatch", 409),
    ("request-timeout", 408),
    ("payload-too-large", 413),
    ("unsupported-media-type", 415),
    ("rejected", 422),
    ("unsupported-capability", 422),
    ("storage-unavailable", 503),
    ("app-unreachable", 502),
    ("shutting-down", 503),
    ("internal", 500),
];

impl Problem {
    /// A problem with a code from [`CODES`].
    pub fn new(code: &'static str, detail: impl Into<String>) -> Problem {
        let status = CODES
            .iter()
            .find(|(c, _)| *c == code)
            .and_then(|(_, s)| StatusCode::from_u16(*s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Problem {
            status,
            code,
            detail: detail.into(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    /// Adds a member.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Problem {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("https://canon.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "code": self.code,
            "detail": self.detail,
        });
        if let Value::Object(m) = &mut body {
            m.extend(self.extra.clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

impl From<BackendError> for Problem {
    fn from(e: BackendError) -> Problem {
        match &e {
            BackendError::UnknownTopic(_) | BackendError::UnknownGroup { .. } => {
                Problem::new("not-found", e.to_string())
            }
            BackendError::Conflict { current, .. } => {
                Problem::new("conflict", e.to_string()).with("current_sequence", *current)
            }
            BackendError::ExpectedSequenceWithoutKey | BackendError::InvalidConfig(_) => {
                Problem::new("invalid-request", e.to_string())
            }
            BackendError::LeaseLost => Problem::new("lease-lost", e.to_string()),
            BackendError::RevisionMismatch { current } => {
                Problem::new("revision-mismatch", e.to_string()).with("current_revision", *current)
            }
            BackendError::UnsupportedCapability(_) => {
                Problem::new("unsupported-capability", e.to_string())
            }
            BackendError::Storage { retry_after, .. } => {
                let mut p = Problem::new("storage-unavailable", e.to_string());
                p.retry_after = Some(retry_after.map_or(1, |d| d.as_secs().max(1)));
                p
            }
            _ => Problem::new("internal", e.to_string()),
        }
    }
}
