//! The JetStream calls Canon makes below async-nats' typed API: publishing with Canon's
//! headers and reading the publish answer's error codes, atomic batches (ADR-50), direct gets
//! (one message, or a batch of them by subject filter), and the `$JS.API` requests async-nats
//! has no call for.

use std::time::{Duration, SystemTime};

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use canon_backend::BackendError;
use futures_util::StreamExt;
use serde_json::Value;

/// Error codes of JetStream's answers that Canon acts on.
pub(crate) mod code {
    /// `wrong last sequence: N` (an expected-sequence header did not hold).
    pub(crate) const WRONG_LAST_SEQUENCE: u64 = 10071;
    /// An atomic batch holds a message id the stream already has.
    pub(crate) const BATCH_DUPLICATE: u64 = 10201;
    /// The stream does not exist.
    pub(crate) const STREAM_NOT_FOUND: u64 = 10059;
    /// The consumer does not exist.
    pub(crate) const CONSUMER_NOT_FOUND: u64 = 10014;
}

/// How long Canon waits for one JetStream answer.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);

/// An error answer of JetStream, or a failure to get one.
#[derive(Debug, Clone)]
pub(crate) enum JsError {
    Api { err_code: u64, description: String },
    Transport(String),
}

impl JsError {
    pub(crate) fn code(&self) -> Option<u64> {
        match self {
            JsError::Api { err_code, .. } => Some(*err_code),
            JsError::Transport(_) => None,
        }
    }

    /// The `N` of `wrong last sequence: N`.
    pub(crate) fn last_sequence(&self) -> Option<u64> {
        match self {
            JsError::Api { description, .. } => description.rsplit(' ').next()?.parse().ok(),
            JsError::Transport(_) => None,
        }
    }
}

impl std::fmt::Display for JsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsError::Api {
                err_code,
                description,
            } => write!(f, "JetStream: {description} ({err_code})"),
            JsError::Transport(m) => write!(f, "NATS: {m}"),
        }
    }
}

impl From<JsError> for BackendError {
    fn from(e: JsError) -> Self {
        BackendError::Storage {
            message: e.to_string(),
            retry_after: matches!(e, JsError::Transport(_)).then(|| Duration::from_secs(1)),
        }
    }
}

fn transport(e: impl std::fmt::Display) -> JsError {
    JsError::Transport(e.to_string())
}

/// Reads a JSON answer, turning `{"error": ...}` into [`JsError::Api`].
fn answer(payload: &[u8]) -> Result<Value, JsError> {
    let v: Value = serde_json::from_slice(payload).map_err(transport)?;
    if let Some(e) = v.get("error") {
        return Err(JsError::Api {
            err_code: e.get("err_code").and_then(Value::as_u64).unwrap_or(0),
            description: e
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
        });
    }
    Ok(v)
}

/// What a publish was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PubAck {
    /// The stored sequence (of the last message, for a batch; of the original, for a duplicate).
    pub(crate) seq: u64,
    pub(crate) duplicate: bool,
}

/// JetStream's answer to a publish.
#[derive(serde::Deserialize)]
struct PubAnswer {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    description: Option<String>,
}

/// A message read from a stream.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) subject: String,
    pub(crate) time: SystemTime,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// The JetStream connection.
#[derive(Debug, Clone)]
pub(crate) struct Js {
    pub(crate) client: Client,
    pub(crate) ctx: async_nats::jetstream::Context,
}

impl Js {
    /// A `$JS.API.<subject>` request.
    pub(crate) async fn api(&self, subject: &str, body: &Value) -> Result<Value, JsError> {
        let reply = tokio::time::timeout(
            TIMEOUT,
            self.client
                .request(format!("$JS.API.{subject}"), body.to_string().into()),
        )
        .await
        .map_err(|_| transport("no answer from JetStream"))?
        .map_err(transport)?;
        answer(&reply.payload)
    }

    /// Publishes one message and waits for its answer (within the client's request timeout,
    /// [`TIMEOUT`]).
    pub(crate) async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PubAck, JsError> {
        let reply = self
            .client
            .request_with_headers(subject, headers, payload)
            .await
            .map_err(transport)?;
        // The publish answer read straight into its fields: this is on every publish's path.
        let a: PubAnswer = serde_json::from_slice(&reply.payload).map_err(transport)?;
        if let Some(e) = a.error {
            return Err(JsError::Api {
                err_code: e.err_code,
                description: e.description.unwrap_or_else(|| "error".into()),
            });
        }
        Ok(PubAck {
            seq: a.seq,
            duplicate: a.duplicate,
        })
    }

    /// Publishes messages as one atomic batch (ADR-50): every message is stored or none is, at
    /// consecutive sequences. Returns the first sequence.
    pub(crate) async fn publish_atomic(
        &self,
        messages: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<u64, JsError> {
        let n = messages.len();
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut last = None;
        for (i, (subject, mut headers, payload)) in messages.into_iter().enumerate() {
            headers.insert("Nats-Batch-Id", id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            if i + 1 == n {
                headers.insert("Nats-Batch-Commit", "1");
                last = Some(self.publish(subject, headers, payload).await?);
            } else {
                self.client
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(transport)?;
            }
        }
        let ack = last.ok_or_else(|| transport("an empty batch"))?;
        Ok(ack.seq + 1 - u64::try_from(n).unwrap_or(0))
    }

    /// Acks, nacks, extends or terminates a delivery through its reply subject, waiting for the
    /// server to confirm it processed it.
    /// (async-nats' own request timeout bounds the wait.)
    pub(crate) async fn settle(&self, reply: &str, body: &'static str) -> Result<(), JsError> {
        self.client
            .request(reply.to_owned(), Bytes::from_static(body.as_bytes()))
            .await
            .map_err(transport)?;
        Ok(())
    }

    /// Like [`Js::settle`] with an owned body (a NAK with its delay).
    pub(crate) async fn settle_with(&self, reply: &str, body: String) -> Result<(), JsError> {
        tokio::time::timeout(TIMEOUT, self.client.request(reply.to_owned(), body.into()))
            .await
            .map_err(|_| transport("no answer to a nak"))?
            .map_err(transport)?;
        Ok(())
    }

    /// Up to `max` messages from sequence `from` on whose subject matches `filter`, in order
    /// (batched direct get).
    pub(crate) async fn read(
        &self,
        stream: &str,
        from: u64,
        filter: &str,
        max: usize,
    ) -> Result<Vec<Stored>, JsError> {
        let mut out = Vec::new();
        let mut next = from.max(1);
        while out.len() < max {
            let want = (max - out.len()).min(1000);
            let got = self.direct_batch(stream, next, filter, want).await?;
            let Some(last) = got.last().map(|m| m.seq) else {
                break;
            };
            let n = got.len();
            out.extend(got);
            next = last + 1;
            if n < want {
                break;
            }
        }
        Ok(out)
    }

    async fn direct_batch(
        &self,
        stream: &str,
        from: u64,
        filter: &str,
        max: usize,
    ) -> Result<Vec<Stored>, JsError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(transport)?;
        let body = serde_json::json!({"seq": from, "next_by_subj": filter, "batch": max});
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{stream}"),
                inbox,
                body.to_string().into(),
            )
            .await
            .map_err(transport)?;
        let mut out = Vec::new();
        loop {
            let m = tokio::time::timeout(TIMEOUT, sub.next())
                .await
                .map_err(|_| transport("a direct get got no answer"))?
                .ok_or_else(|| transport("the connection closed"))?;
            if let Some(status) = m.status {
                // 204: end of batch; 404: nothing matches; 408: timed out.
                if status.as_u16() == 404 || status.as_u16() == 204 {
                    break;
                }
                return Err(JsError::Api {
                    err_code: u64::from(status.as_u16()),
                    description: m.description.unwrap_or_default(),
                });
            }
            match stored(m.headers.unwrap_or_default(), m.payload) {
                Some(s) => out.push(s),
                None => return Err(transport("a direct get answered without its headers")),
            }
            if out.len() >= max {
                break;
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(out)
    }

    /// One message by sequence.
    pub(crate) async fn get(&self, stream: &str, seq: u64) -> Result<Option<Stored>, JsError> {
        self.get_by(stream, serde_json::json!({ "seq": seq })).await
    }

    /// The last message on a subject.
    pub(crate) async fn last_on(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<Stored>, JsError> {
        self.get_by(stream, serde_json::json!({ "last_by_subj": subject }))
            .await
    }

    /// The first message at or after a time whose subject matches `filter`.
    pub(crate) async fn first_since(
        &self,
        stream: &str,
        time: SystemTime,
        filter: &str,
    ) -> Result<Option<Stored>, JsError> {
        let t = time::OffsetDateTime::from(time)
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(transport)?;
        self.get_by(
            stream,
            serde_json::json!({ "start_time": t, "next_by_subj": filter }),
        )
        .await
    }

    async fn get_by(&self, stream: &str, body: Value) -> Result<Option<Stored>, JsError> {
        let reply = tokio::time::timeout(
            TIMEOUT,
            self.client.request(
                format!("$JS.API.DIRECT.GET.{stream}"),
                body.to_string().into(),
            ),
        )
        .await
        .map_err(|_| transport("a direct get got no answer"))?
        .map_err(transport)?;
        if let Some(status) = reply.status {
            if status.as_u16() == 404 {
                return Ok(None);
            }
            return Err(JsError::Api {
                err_code: u64::from(status.as_u16()),
                description: reply.description.unwrap_or_default(),
            });
        }
        Ok(stored(reply.headers.unwrap_or_default(), reply.payload))
    }
}

/// A direct-get answer as a stored message.
fn stored(headers: HeaderMap, payload: Bytes) -> Option<Stored> {
    let get = |h: &str| headers.get(h).map(|v| v.as_str().to_owned());
    let seq = get("Nats-Sequence")?.parse().ok()?;
    let subject = get("Nats-Subject")?;
    let time = get("Nats-Time-Stamp")
        .and_then(|t| {
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(SystemTime::UNIX_EPOCH, SystemTime::from);
    Some(Stored {
        seq,
        subject,
        time,
        headers,
        payload,
    })
}
