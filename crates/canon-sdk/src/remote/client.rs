//! The HTTP client for `canon serve` (docs/http-api.md).

use std::time::Duration;

use canon_envelope::CloudEvent;
use serde::Deserialize;
use serde_json::Value;

use crate::dispatch::typed_cloud_event;
use crate::event::Event;
use crate::id::Meta;

/// A client of one Canon server. Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    source: String,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The server could not be reached or the connection broke. Retry.
    #[error("canon server unreachable: {0}")]
    Unreachable(#[from] reqwest::Error),
    /// The server refused the request (RFC 9457 problem); `code` is the stable code of
    /// docs/http-api.md.
    #[error("canon server answered {status} {code}: {detail}")]
    Problem {
        /// The HTTP status.
        status: u16,
        /// The problem's stable code.
        code: String,
        /// What is wrong.
        detail: String,
        /// The whole problem document.
        body: Value,
    },
    /// The server's answer could not be read.
    #[error("unexpected answer from the canon server: {0}")]
    Answer(String),
}

/// What the server did with one published event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Published {
    /// The event id.
    pub id: Option<String>,
    /// Stored, or a duplicate of an event already stored.
    pub status: PublishStatus,
    /// The topic.
    pub topic: Option<String>,
    /// Its sequence in the topic (for a duplicate: the original's).
    pub sequence: Option<u64>,
}

/// The outcome of a publish the server accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishStatus {
    /// Stored now.
    Stored,
    /// Already stored (same source and id, or same idempotency key).
    Duplicate,
}

/// One leased delivery from a pull.
#[derive(Debug, Clone, Deserialize)]
pub struct Delivery {
    /// Names the lease in ack, nack, extend and reject.
    pub ack_id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The event's sequence in its topic.
    pub sequence: u64,
    /// When the lease ends unless extended (RFC 3339).
    pub leased_until: String,
    /// The event (CloudEvents JSON).
    pub event: Box<serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Results {
    results: Vec<Published>,
}

#[derive(Deserialize)]
struct Pulled {
    deliveries: Vec<Delivery>,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8480`). Events it makes name
    /// `canon-sdk` as their source until [`Client::with_source`].
    pub fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_owned(),
            token: None,
            source: "canon-sdk".to_owned(),
        }
    }

    /// Authenticates with an API key or JWT (`Authorization: Bearer`).
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    /// The CloudEvents `source` of events this client makes (usually the service's name).
    pub fn with_source(mut self, source: &str) -> Client {
        source.clone_into(&mut self.source);
        self
    }

    /// The source events made by this client carry.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.post(format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Publishes a typed event as a new root event.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Published, RemoteError> {
        self.publish_with(event, &Meta::root()).await
    }

    /// Publishes a typed event with given envelope facts (id, correlation, causation, actor).
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        meta: &Meta,
    ) -> Result<Published, RemoteError> {
        self.publish_event(&typed_cloud_event(event, meta, &self.source))
            .await
    }

    /// Publishes one CloudEvent (structured mode).
    pub async fn publish_event(&self, event: &CloudEvent) -> Result<Published, RemoteError> {
        let answer = self
            .post("/v1/events")
            .header("content-type", canon_envelope::MEDIA_TYPE)
            .body(event.to_json())
            .send()
            .await?;
        let mut results = read::<Results>(answer).await?.results;
        results
            .pop()
            .ok_or_else(|| RemoteError::Answer("no result for the event".into()))
    }

    /// Publishes a batch atomically (all or nothing).
    pub async fn publish_batch(
        &self,
        events: &[CloudEvent],
    ) -> Result<Vec<Published>, RemoteError> {
        let answer = self
            .post("/v1/events")
            .header("content-type", canon_envelope::BATCH_MEDIA_TYPE)
            .body(CloudEvent::batch_to_json(events))
            .send()
            .await?;
        Ok(read::<Results>(answer).await?.results)
    }

    /// Leases up to `max` deliveries of a subscription, waiting up to `wait` for the first.
    pub async fn pull(
        &self,
        subscription: &str,
        max: usize,
        wait: Duration,
        consumer: &str,
    ) -> Result<Vec<Delivery>, RemoteError> {
        let body = serde_json::json!({
            "max": max,
            "wait_ms": u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "consumer": consumer,
        });
        let answer = self
            .post(&format!("/v1/subscriptions/{subscription}/pull"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(wait + Duration::from_secs(30))
            .send()
            .await?;
        Ok(read::<Pulled>(answer).await?.deliveries)
    }

    /// Acknowledges deliveries; returns the ids whose lease was lost (redelivered or expired).
    pub async fn ack(
        &self,
        subscription: &str,
        ack_ids: &[&str],
    ) -> Result<Vec<String>, RemoteError> {
        self.settle(subscription, "ack", ack_ids, None, None).await
    }

    /// Gives deliveries back for a retry after `delay` (default: the retry policy).
    pub async fn nack(
        &self,
        subscription: &str,
        ack_ids: &[&str],
        delay: Option<Duration>,
        error: Option<&str>,
    ) -> Result<Vec<String>, RemoteError> {
        self.settle(subscription, "nack", ack_ids, delay, error)
            .await
    }

    /// Extends leases to now + `lease` (default: the subscription's lease).
    pub async fn extend(
        &self,
        subscription: &str,
        ack_ids: &[&str],
        lease: Option<Duration>,
    ) -> Result<Vec<String>, RemoteError> {
        self.settle(subscription, "extend", ack_ids, lease, None)
            .await
    }

    /// Moves deliveries to the dead-letter queue now.
    pub async fn reject(
        &self,
        subscription: &str,
        ack_ids: &[&str],
        error: Option<&str>,
    ) -> Result<Vec<String>, RemoteError> {
        self.settle(subscription, "reject", ack_ids, None, error)
            .await
    }

    async fn settle(
        &self,
        subscription: &str,
        how: &str,
        ack_ids: &[&str],
        delay: Option<Duration>,
        error: Option<&str>,
    ) -> Result<Vec<String>, RemoteError> {
        #[derive(Deserialize)]
        struct Settled {
            results: Vec<Item>,
        }
        #[derive(Deserialize)]
        struct Item {
            ack_id: String,
            status: String,
        }
        let mut body = serde_json::json!({ "ack_ids": ack_ids });
        if let Some(d) = delay {
            body["delay_ms"] = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).into();
        }
        if let Some(e) = error {
            body["error"] = e.into();
        }
        let answer = self
            .post(&format!("/v1/subscriptions/{subscription}/{how}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let settled = read::<Settled>(answer).await?;
        Ok(settled
            .results
            .into_iter()
            .filter(|i| i.status != "ok")
            .map(|i| i.ack_id)
            .collect())
    }

    /// Creates a subscription (`spec` as in docs/http-api.md); an identical one is fine.
    pub async fn subscribe(&self, spec: &Value) -> Result<Value, RemoteError> {
        let answer = self
            .post("/v1/subscriptions")
            .header("content-type", "application/json")
            .body(spec.to_string())
            .send()
            .await?;
        read::<Value>(answer).await
    }
}

async fn read<T: serde::de::DeserializeOwned>(answer: reqwest::Response) -> Result<T, RemoteError> {
    let status = answer.status();
    let bytes = answer.bytes().await?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| RemoteError::Answer(e.to_string()));
    }
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Err(RemoteError::Problem {
        status: status.as_u16(),
        code: text("code"),
        detail: text("detail"),
        body,
    })
}
