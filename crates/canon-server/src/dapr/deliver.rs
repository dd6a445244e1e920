//! Delivery to a Dapr app, as its sidecar would (../shared/specs/dapr-pubsub-jobs.md §5–6):
//! the route of each event by its subscription's rules, the CloudEvent with `topic` and
//! `pubsubname`, rawPayload wrapping, the app's answer by the Dapr contract, and the
//! dead-letter topic after the last attempt.

use std::time::{Duration, Instant};

use base64::Engine as _;
use canon_backend::{Backend, Delivery, Outcome, PublishRequest};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::App;
use crate::push::{To, interpret, retry_after, settle_and_count};
use crate::subs::{DaprDelivery, Subscription};
use canon_dapr::rules;

/// The longest retry delay an app's `Retry-After` may set on a Dapr subscription.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A Dapr subscription's delivery settings with its routing rules parsed, once per push worker
/// rather than once per event.
#[derive(Debug)]
pub(crate) struct Routes {
    spec: DaprDelivery,
    rules: Vec<(rules::Expr, String)>,
}

impl Routes {
    pub(crate) fn compile(spec: &DaprDelivery) -> Routes {
        let rules = spec
            .rules
            .iter()
            .filter_map(|r| match rules::parse(&r.when) {
                Ok(e) => Some((e, r.path.clone())),
                // Checked when the subscription was installed; an unreadable one never matches.
                Err(e) => {
                    tracing::error!(rule = %r.when, error = %e, "dapr: routing rule ignored");
                    None
                }
            })
            .collect();
        Routes {
            spec: spec.clone(),
            rules,
        }
    }

    /// The app path of an event: the first rule that matches, else the default route.
    fn route(&self, doc: &Value) -> Option<&str> {
        self.rules
            .iter()
            .find(|(e, _)| rules::matches(e, doc))
            .map(|(_, p)| p.as_str())
            .or(self.spec.default_path.as_deref())
    }
}

impl std::ops::Deref for Routes {
    type Target = DaprDelivery;
    fn deref(&self) -> &DaprDelivery {
        &self.spec
    }
}

/// The stored event as the app receives it: with `topic` and `pubsubname`.
fn outgoing(d: &Delivery, sub: &Subscription, dapr: &Routes) -> canon_envelope::CloudEvent {
    let mut out = d.event.event.clone();
    out.set_extension("topic", sub.topic.as_str());
    out.set_extension("pubsubname", dapr.pubsub.as_str());
    out
}

/// Bulk subscribe: the events of a chunk go in one request per route, in Dapr's bulk shape
/// (`{"entries":[{"entryId","event","contentType"}], "topic", "pubsubname", "type":
/// "com.dapr.event.sent.bulk"}`); the app answers per entry with `statuses`.
pub(crate) async fn deliver_bulk<B: Backend>(
    app: &App<B>,
    sub: &Subscription,
    to: &To,
    dapr: &Routes,
    chunk: Vec<Delivery>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let label = &to.label;
    // Deliveries with their event as JSON, grouped by route (`None`: no route).
    type Group = (Option<String>, Vec<(Delivery, Value)>);
    let mut by_path: Vec<Group> = Vec::new();
    for d in chunk {
        let doc: Value =
            serde_json::from_slice(&outgoing(&d, sub, dapr).to_json()).unwrap_or(Value::Null);
        let path = dapr.route(&doc).map(str::to_owned);
        match by_path.iter_mut().find(|(p, _)| *p == path) {
            Some((_, list)) => list.push((d, doc)),
            None => by_path.push((path, vec![(d, doc)])),
        }
    }
    let mut settled = Vec::new();
    for (path, group) in by_path {
        let Some(path) = path else {
            let why = "no routing rule matches and the subscription has no default route";
            settled.extend(
                group
                    .into_iter()
                    .map(|(d, _)| (d, Outcome::Drop, Some(why.to_owned()))),
            );
            continue;
        };
        let (target, url) = crate::push::route(&to.url, &path);
        let entries: Vec<Value> = group
            .iter()
            .map(|(d, doc)| {
                json!({"entryId": d.event.event.id, "event": doc,
                       "contentType": "application/cloudevents+json", "metadata": {}})
            })
            .collect();
        let id = super::new_id();
        let body = json!({"entries": entries, "id": id, "metadata": {}, "pubsubname": dapr.pubsub,
                          "topic": sub.topic, "type": "com.dapr.event.sent.bulk"});
        let started = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let answer = to
            .client
            .post(&target, headers, body.to_string().into_bytes())
            .await;
        app.metrics
            .push_seconds
            .get_or_create(label)
            .observe(started.elapsed().as_secs_f64());
        let deliveries: Vec<Delivery> = group.into_iter().map(|(d, _)| d).collect();
        let outcomes = crate::push::batch_outcomes(answer, &deliveries, &url)
            .into_iter()
            .map(|(o, e)| match o {
                Outcome::Retry(Some(d)) => (Outcome::Retry(Some(d.min(MAX_RETRY_AFTER))), e),
                o => (o, e),
            });
        settled.extend(
            deliveries
                .into_iter()
                .zip(outcomes)
                .map(|(d, (o, e))| (d, o, e)),
        );
    }
    drop(permit);
    for (d, outcome, error) in settled {
        finish(app, to, sub, dapr, &d, outcome, error).await;
    }
}

/// Sends one event to its route in the app and settles it.
pub(crate) async fn deliver<B: Backend>(
    app: &App<B>,
    sub: &Subscription,
    to: &To,
    dapr: &Routes,
    d: Delivery,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let label = &to.label;
    let out = outgoing(&d, sub, dapr);
    let json = out.to_json();
    let doc: Value = serde_json::from_slice(&json).unwrap_or(Value::Null);
    let path = dapr.route(&doc);
    let Some(path) = path else {
        drop(permit);
        let why = "no routing rule matches and the subscription has no default route";
        finish(app, to, sub, dapr, &d, Outcome::Drop, Some(why.to_owned())).await;
        return;
    };
    let (target, url) = crate::push::route(&to.url, path);
    let body = if dapr.raw_payload {
        raw_envelope(&d, &sub.topic, &dapr.pubsub)
    } else {
        json
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents+json"),
    );
    if let Some(tp) = out
        .traceparent()
        .and(out.extensions.get("traceparent"))
        .and_then(|v| v.as_str())
        .and_then(|v| HeaderValue::try_from(v).ok())
    {
        headers.insert("traceparent", tp);
    }
    let answer = to.client.post(&target, headers, body).await;
    app.metrics
        .push_seconds
        .get_or_create(label)
        .observe(started.elapsed().as_secs_f64());
    let (outcome, error) = match answer {
        Err(e) => (
            Outcome::Retry(None),
            Some(format!("delivery to {url} failed: {e}")),
        ),
        Ok(res) => {
            let status = res.status;
            // Capped, so that an event that always fails reaches its dead-letter topic within a
            // minute whatever the app asks for.
            let after = retry_after(&res.headers).map(|d| d.min(MAX_RETRY_AFTER));
            if status.is_success() {
                interpret(&res.body, after)
            } else if status == hyper::StatusCode::NOT_FOUND {
                (
                    Outcome::DeadLetter,
                    Some(format!("app answered 404 at {url}")),
                )
            } else {
                (
                    Outcome::Retry(after),
                    Some(format!("app answered {status} at {url}")),
                )
            }
        }
    };
    drop(permit);
    finish(app, to, sub, dapr, &d, outcome, error).await;
}

/// What Dapr sends for a rawPayload subscription: the stored bytes, base64, in a fresh
/// envelope.
fn raw_envelope(d: &Delivery, topic: &str, pubsub: &str) -> Vec<u8> {
    let ev = &d.event.event;
    let raw = match (&ev.data, ev.extensions.contains_key("rawpayload")) {
        (Some(data), true) => data.as_bytes().to_vec(),
        _ => ev.to_json(),
    };
    let id = super::new_id();
    json!({
        "id": id, "specversion": "1.0", "source": "Dapr", "type": "com.dapr.event.sent",
        "datacontenttype": "application/octet-stream", "topic": topic, "pubsubname": pubsub,
        "data_base64": base64::engine::general_purpose::STANDARD.encode(raw),
    })
    .to_string()
    .into_bytes()
}

/// Settles, sending the original event to the dead-letter topic first when this was its end:
/// the app dropped it (DROP, 404, no route) or its last attempt failed.
async fn finish<B: Backend>(
    app: &App<B>,
    to: &To,
    sub: &Subscription,
    dapr: &Routes,
    d: &Delivery,
    outcome: Outcome,
    error: Option<String>,
) {
    let last = matches!(outcome, Outcome::Retry(_))
        && d.attempt >= sub.retry.max_attempts.unwrap_or(u32::MAX);
    let Some(dlt) = dapr
        .dead_letter_topic
        .as_deref()
        .filter(|_| matches!(outcome, Outcome::DeadLetter | Outcome::Drop) || last)
    else {
        settle_and_count(app, to, sub, d, outcome, error).await;
        return;
    };
    let backend = app.engine.backend();
    let event = d.event.event.clone();
    let sent = async {
        app.ensure_topic(dlt).await?;
        let request = PublishRequest {
            ordering_key: event.partition_key().map(str::to_owned),
            idempotency_key: None,
            expected_sequence: None,
            event,
        };
        backend.publish(dlt, vec![request]).await
    }
    .await;
    match sent {
        Ok(_) => {
            tracing::warn!(subscription = %sub.name, seq = d.event.seq, topic = dlt,
                error = error.as_deref().unwrap_or(""), "dapr: sent to the dead-letter topic");
            settle_and_count(app, to, sub, d, Outcome::Success, error).await;
        }
        Err(e) => {
            let why = format!("dead-letter topic {dlt} unavailable: {e}");
            settle_and_count(
                app,
                to,
                sub,
                d,
                Outcome::Retry(Some(Duration::from_secs(1))),
                Some(why),
            )
            .await;
        }
    }
}
