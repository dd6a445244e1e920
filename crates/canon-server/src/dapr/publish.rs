//! `POST /v1.0/publish/{pubsub}/{topic}` and bulk publish, with Dapr's body handling and
//! `metadata.*` query parameters (../shared/specs/dapr-pubsub-jobs.md §1–2).

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use canon_backend::{Backend, PublishRequest};
use canon_engine::{Refusal, Submit};
use canon_envelope::{CloudEvent, Data, ExtValue, ext, rules};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{DaprError, caller};
use crate::Shared;
use crate::auth::Identity;
use crate::config::PubsubConfig;

/// What the `metadata.*` parameters ask for.
#[derive(Debug, Default, Clone)]
struct Metadata {
    raw_payload: bool,
    ttl_seconds: Option<u64>,
    partition_key: Option<String>,
    /// `metadata.cloudevent.<attr>` overrides, attribute names lower-cased.
    overrides: Vec<(String, String)>,
}

fn bad_metadata(message: String) -> DaprError {
    DaprError::new(
        StatusCode::BAD_REQUEST,
        "ERR_PUBSUB_REQUEST_METADATA",
        message,
    )
}

impl Metadata {
    /// Reads `metadata.*` keys (others are ignored, as Dapr does).
    fn read<'a>(
        mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        prefixed: bool,
    ) -> Result<Metadata, DaprError> {
        for (k, v) in pairs {
            let key = if prefixed {
                match k.strip_prefix("metadata.") {
                    Some(k) => k,
                    None => continue,
                }
            } else {
                k
            };
            let lower = key.to_ascii_lowercase();
            match lower.as_str() {
                "rawpayload" => {
                    self.raw_payload = match v.to_ascii_lowercase().as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(bad_metadata(format!(
                                "rawPayload {v:?}: use true or false"
                            )));
                        }
                    }
                }
                "ttlinseconds" => {
                    self.ttl_seconds = Some(v.trim().parse().map_err(|_| {
                        bad_metadata(format!(
                            "ttlInSeconds {v:?} is not a whole number of seconds"
                        ))
                    })?);
                }
                "partitionkey" => self.partition_key = Some(v.to_owned()),
                _ => {
                    if let Some(attr) = lower.strip_prefix("cloudevent.") {
                        self.overrides.push((attr.to_owned(), v.to_owned()));
                    }
                }
            }
        }
        Ok(self)
    }
}

fn pubsub<'a, B: Backend>(
    app: &'a crate::App<B>,
    name: &str,
) -> Result<&'a PubsubConfig, DaprError> {
    super::component(app, name).ok_or_else(|| {
        DaprError::new(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_NOT_FOUND",
            format!("pubsub {name} is not found (dapr.pubsubs)"),
        )
    })
}

fn now_plus(seconds: u64) -> String {
    crate::rfc3339(SystemTime::now() + Duration::from_secs(seconds))
}

fn is_json(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

fn is_text(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/") || essence == "application/xml" || essence.ends_with("+xml")
}

fn envelope_error(e: &canon_envelope::EnvelopeErrors) -> DaprError {
    DaprError::new(
        StatusCode::BAD_REQUEST,
        "ERR_PUBSUB_CLOUD_EVENTS_SER",
        format!("the CloudEvent is invalid: {e}"),
    )
}

/// The event a publish stores, built as Dapr builds it: a CloudEvent body is kept (strictly
/// checked), a body with `ce-` headers is a binary-mode event, anything else is wrapped.
/// Where a message is going and who sends it.
#[derive(Clone, Copy)]
struct Target<'a> {
    source: &'a str,
    pubsub: &'a str,
    topic: &'a str,
    traceparent: Option<&'a str>,
}

fn build(
    to: &Target<'_>,
    meta: &Metadata,
    content_type: Option<&str>,
    ce_headers: Option<&HeaderMap>,
    body: &[u8],
) -> Result<CloudEvent, DaprError> {
    let Target {
        source,
        pubsub,
        topic,
        traceparent,
    } = *to;
    let ct = content_type.unwrap_or("text/plain");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut ev = if meta.raw_payload {
        // The exact bytes, marked so that deliveries can hand them on as they came.
        let mut ev = CloudEvent::new(super::new_id(), source, "com.dapr.event.sent");
        ev.datacontenttype = Some("application/octet-stream".to_owned());
        ev.data = Some(Data::Binary(body.to_vec()));
        ev.set_extension("rawpayload", ExtValue::Bool(true));
        ev
    } else if essence == "application/cloudevents+json" {
        CloudEvent::from_json(body).map_err(|e| envelope_error(&e))?
    } else if let Some(h) = ce_headers {
        CloudEvent::from_http_binary(h.iter().map(|(k, v)| (k.as_str(), v.as_bytes())), body)
            .map_err(|e| envelope_error(&e))?
    } else {
        let mut ev = CloudEvent::new(super::new_id(), source, "com.dapr.event.sent");
        ev.datacontenttype = Some(ct.to_owned());
        ev.time = Some(crate::rfc3339(SystemTime::now()));
        ev.data = Some(if is_json(ct) {
            match std::str::from_utf8(body)
                .ok()
                .and_then(|s| Data::json(s.to_owned()).ok())
            {
                Some(d) => d,
                None => Data::Text(String::from_utf8_lossy(body).into_owned()),
            }
        } else if is_text(ct) {
            match std::str::from_utf8(body) {
                Ok(s) => Data::Text(s.to_owned()),
                Err(_) => Data::Binary(body.to_vec()),
            }
        } else {
            Data::Binary(body.to_vec())
        });
        for (attr, value) in &meta.overrides {
            match attr.as_str() {
                "id" => ev.id.clone_from(value),
                "source" => ev.source.clone_from(value),
                "type" => ev.ty.clone_from(value),
                "subject" => ev.subject = Some(value.clone()),
                "traceparent" | "traceid" => {
                    ev.set_extension(ext::TRACEPARENT, value.as_str());
                    ev.set_extension("traceid", value.as_str());
                }
                "tracestate" => ev.set_extension(ext::TRACESTATE, value.as_str()),
                _ => {}
            }
        }
        ev
    };
    ev.set_extension("topic", topic);
    ev.set_extension("pubsubname", pubsub);
    if let Some(tp) = traceparent.filter(|tp| rules::parse_traceparent(tp).is_some())
        && ev.traceparent().is_none()
    {
        ev.set_extension(ext::TRACEPARENT, tp);
        ev.set_extension("traceid", tp);
    }
    if let Some(n) = meta.ttl_seconds {
        ev.set_extension(ext::EXPIRATION, now_plus(n));
    }
    if let Some(k) = &meta.partition_key {
        ev.set_extension(ext::PARTITION_KEY, k.as_str());
    }
    ev.validate().map_err(|e| envelope_error(&e))?;
    Ok(ev)
}

/// Why one event was not stored.
struct Failed {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl From<Failed> for DaprError {
    fn from(f: Failed) -> Self {
        DaprError::new(f.status, f.code, f.message)
    }
}

/// Stores events on a topic: through the catalogs when the component enforces them, as they
/// are otherwise. Returns one outcome per event; valid events are stored together. With
/// `all_or_nothing`, one refused event means none is stored.
async fn store<B: Backend>(
    app: &crate::App<B>,
    identity: &Identity,
    component: &PubsubConfig,
    topic: &str,
    events: Vec<CloudEvent>,
    all_or_nothing: bool,
) -> Vec<Result<(), Failed>> {
    let mut outcomes: Vec<Option<Result<(), Failed>>> = Vec::with_capacity(events.len());
    let mut requests = Vec::new();
    let mut indexes = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        let request = if component.catalogs {
            match app.engine.prepare(
                Submit::from(event),
                identity.service.as_deref(),
                Some(topic),
            ) {
                Ok(p) => Ok(p.request),
                Err(Refusal::NotAProducer { producer, ty }) => Err(Failed {
                    status: StatusCode::FORBIDDEN,
                    code: "ERR_PUBSUB_FORBIDDEN",
                    message: format!("{producer} is not a declared producer of {ty}"),
                }),
                Err(r) => Err(Failed {
                    status: StatusCode::BAD_REQUEST,
                    code: "ERR_PUBSUB_CATALOG",
                    message: format!("refused by the catalog: {r}"),
                }),
            }
        } else {
            Ok(PublishRequest {
                ordering_key: event.partition_key().map(str::to_owned),
                idempotency_key: None,
                expected_sequence: None,
                event,
            })
        };
        match request {
            Ok(r) => {
                requests.push(r);
                indexes.push(i);
                outcomes.push(None);
            }
            Err(f) => outcomes.push(Some(Err(f))),
        }
    }
    if all_or_nothing && outcomes.iter().any(Option::is_some) {
        return outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(Failed {
                        status: StatusCode::BAD_REQUEST,
                        code: "ERR_PUBSUB_CATALOG",
                        message: "not stored: another event of the batch was refused".to_owned(),
                    })
                })
            })
            .collect();
    }
    if !requests.is_empty() {
        let backend = app.engine.backend();
        let stored = async {
            app.ensure_topic(topic).await?;
            backend.publish(topic, requests).await
        }
        .await;
        for i in indexes {
            outcomes[i] = Some(match &stored {
                Ok(_) => Ok(()),
                Err(e) => Err(Failed {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "ERR_PUBSUB_PUBLISH_MESSAGE",
                    message: format!("error when publishing to topic {topic}: {e}"),
                }),
            });
        }
    }
    outcomes.into_iter().flatten().collect()
}

/// One message.
pub(crate) async fn single<B: Backend>(
    State(app): State<Shared<B>>,
    Path((pubsub_name, topic)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let identity = caller(&app, &headers)?;
        let component = pubsub(&app, &pubsub_name)?;
        let topic = topic.trim_start_matches('/');
        if topic.is_empty() {
            return Err(DaprError::new(
                StatusCode::NOT_FOUND,
                "ERR_TOPIC_NAME_EMPTY",
                "topic is empty",
            ));
        }
        let meta =
            Metadata::default().read(query.iter().map(|(k, v)| (k.as_str(), v.as_str())), true)?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let has_ce = headers.keys().any(|k| k.as_str().starts_with("ce-"));
        let source = identity
            .service
            .clone()
            .unwrap_or_else(|| "dapr".to_owned());
        let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
        let essence = content_type
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let events = if essence == "application/cloudevents-batch+json" && !meta.raw_payload {
            let mut events = CloudEvent::batch_from_json(&body).map_err(|e| envelope_error(&e))?;
            for ev in &mut events {
                ev.set_extension("topic", topic);
                ev.set_extension("pubsubname", pubsub_name.as_str());
            }
            events
        } else {
            let to = Target {
                source: &source,
                pubsub: &pubsub_name,
                topic,
                traceparent,
            };
            vec![build(
                &to,
                &meta,
                content_type,
                has_ce.then_some(&headers),
                &body,
            )?]
        };
        // A request is all or nothing: the first refusal is the answer, and nothing is stored.
        let outcomes = store(&app, &identity, component, topic, events, true).await;
        let mut refused: Vec<Failed> = outcomes.into_iter().filter_map(Result::err).collect();
        if !refused.is_empty() {
            // The refusal that says why (not the "another event was refused" echo).
            let pick = refused
                .iter()
                .position(|f| !f.message.starts_with("not stored:"))
                .unwrap_or(0);
            return Err(refused.swap_remove(pick).into());
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Entry {
    entry_id: Option<String>,
    event: Value,
    content_type: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Many messages: 204 when all were stored, else 500 with the entries that were not.
pub(crate) async fn bulk<B: Backend>(
    State(app): State<Shared<B>>,
    Path((pubsub_name, topic)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let identity = caller(&app, &headers)?;
        let component = pubsub(&app, &pubsub_name)?;
        let topic = topic.trim_start_matches('/');
        let meta =
            Metadata::default().read(query.iter().map(|(k, v)| (k.as_str(), v.as_str())), true)?;
        let entries: Vec<Entry> = serde_json::from_slice(&body).map_err(|e| {
            DaprError::new(
                StatusCode::BAD_REQUEST,
                "ERR_PUBSUB_EVENTS_SER",
                format!("expected a JSON array of {{\"entryId\",\"event\",\"contentType\"}}: {e}"),
            )
        })?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, e) in entries.iter().enumerate() {
            match e.entry_id.as_deref() {
                None | Some("") => {
                    return Err(DaprError::new(
                        StatusCode::BAD_REQUEST,
                        "ERR_PUBSUB_EVENTS_SER",
                        format!("entry {i} has no entryId"),
                    ));
                }
                Some(id) if !seen.insert(id) => {
                    return Err(DaprError::new(
                        StatusCode::BAD_REQUEST,
                        "ERR_PUBSUB_EVENTS_SER",
                        format!("entryId {id} appears twice"),
                    ));
                }
                Some(_) => {}
            }
        }
        let source = identity
            .service
            .clone()
            .unwrap_or_else(|| "dapr".to_owned());
        let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
        let mut failed = Vec::new();
        let mut events = Vec::new();
        let mut ids = Vec::new();
        for e in &entries {
            let id = e.entry_id.clone().unwrap_or_default();
            let built = meta
                .clone()
                .read(
                    e.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    false,
                )
                .and_then(|m| {
                    let ct = e.content_type.as_deref().unwrap_or("application/json");
                    // The entry's event as the body Dapr would have received.
                    let body = match (&e.event, is_json(ct)) {
                        (Value::String(s), false) => s.clone().into_bytes(),
                        (v, _) => v.to_string().into_bytes(),
                    };
                    let to = Target {
                        source: &source,
                        pubsub: &pubsub_name,
                        topic,
                        traceparent,
                    };
                    build(&to, &m, Some(ct), None, &body)
                });
            match built {
                Ok(ev) => {
                    events.push(ev);
                    ids.push(id);
                }
                Err(err) => failed.push(json!({"entryId": id, "error": err.message})),
            }
        }
        let outcomes = store(&app, &identity, component, topic, events, false).await;
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            if let Err(f) = outcome {
                failed.push(json!({"entryId": id, "error": f.message}));
            }
        }
        if failed.is_empty() {
            Ok(StatusCode::NO_CONTENT.into_response())
        } else {
            Err(DaprError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_PUBSUB_PUBLISH_MESSAGE",
                format!(
                    "{} of {} entries were not published",
                    failed.len(),
                    entries.len()
                ),
            )
            .with(json!({ "failedEntries": failed })))
        }
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}
