//! Push delivery: one worker per push subscription pulls leases from the backend and POSTs each
//! event to the subscriber, then settles the lease by the subscriber's answer (the Dapr
//! contract, ../shared/specs/dapr-pubsub-jobs.md §6):
//!
//! | answer | outcome |
//! |---|---|
//! | 2xx, empty or non-JSON body, or JSON without `status` | success: ack |
//! | 2xx + `{"status":"SUCCESS"}` | ack |
//! | 2xx + `{"status":"RETRY"}` | retry (backoff, or `Retry-After`) |
//! | 2xx + `{"status":"DROP"}` | to the DLQ now (reason `rejected`) |
//! | 2xx + any other status | retry |
//! | 404 | to the DLQ now |
//! | anything else, a connection error or a timeout | retry (backoff, or `Retry-After`) |
//!
//! The retry policy and the DLQ are the subscription's; at-least-once holds because a lease is
//! only settled after the answer. Ordered subscriptions keep per-key order: the backend leases
//! one event per key at a time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use canon_backend::{Backend, Delivery, LeaseToken, Outcome, settle};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::metrics::{SubLabel, SubOutcome};
use crate::subs::{PushFormat, Subscription};
use crate::{App, Shared};

mod client;
pub(crate) use client::{Answer, Subscriber, route};

/// A running push worker.
#[derive(Debug)]
pub(crate) struct Worker {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    /// Stops pulling and waits up to `grace` for in-flight requests to be answered and settled.
    /// Anything still in flight after that keeps its lease and is redelivered when it expires.
    pub(crate) async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Starts the push worker of a subscription, if it pushes and none runs.
pub(crate) fn ensure<B: Backend>(app: &Shared<B>, sub: &Arc<Subscription>) {
    if sub.push.is_none() || *app.shutdown.borrow() {
        return;
    }
    let mut workers = app
        .pushers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if workers.contains_key(&sub.name) {
        return;
    }
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run(app.clone(), sub.clone(), rx));
    workers.insert(sub.name.clone(), Worker { stop, task });
}

/// Stops a subscription's push worker, if any.
pub(crate) async fn remove<B: Backend>(app: &App<B>, name: &str) {
    let worker = app
        .pushers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(name);
    if let Some(w) = worker {
        w.stop(Duration::from_millis(app.config.shutdown_grace_ms))
            .await;
    }
}

async fn run<B: Backend>(app: Shared<B>, sub: Arc<Subscription>, mut stop: watch::Receiver<bool>) {
    let Some(spec) = sub.push.clone() else {
        return;
    };
    let concurrency = spec
        .concurrency
        .unwrap_or(app.config.push.concurrency)
        .max(1);
    let permits = Arc::new(Semaphore::new(concurrency));
    // Settling (an ack, a nack) waits for its commit; a delivery gives its request permit back
    // as soon as the subscriber answered, so requests do not wait on syncs. Every delivery
    // holds one of `UNSETTLED` until it is settled.
    let unsettled = Arc::new(Semaphore::new(UNSETTLED as usize));
    let consumer = format!("push:{}", app.instance);
    let batch = spec.batch.unwrap_or(1).max(1);
    // The types delivered: fixed for the worker's life (catalogs load at start-up).
    let filter = sub.filter(&app);
    let dapr_routes = spec
        .dapr
        .as_ref()
        .map(|d| Arc::new(crate::dapr::deliver::Routes::compile(d)));
    // Parsed once (creating the subscription checked that it parses). Dapr deliveries put
    // each event's route under its path.
    let target = match url::Url::parse(&spec.url) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(subscription = %sub.name, url = %spec.url, error = %e, "push: the URL does not parse; nothing is delivered");
            return;
        }
    };
    let client = match Subscriber::new(
        &target,
        spec.protocol,
        Duration::from_millis(app.config.push.timeout_ms),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(subscription = %sub.name, url = %spec.url, error = %e, "push: no subscriber to connect to; nothing is delivered");
            return;
        }
    };
    let (acks, acked) = mpsc::unbounded_channel();
    let acker = tokio::spawn(ack_batches(
        app.clone(),
        sub.clone(),
        acked,
        Arc::clone(&unsettled),
    ));
    let to = Arc::new(To {
        client,
        path: match target.query() {
            Some(q) => format!("{}?{q}", target.path()),
            None => target.path().to_owned(),
        },
        url: target,
        acks,
        label: SubLabel {
            subscription: sub.name.clone(),
        },
    });
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            break;
        }
        // Wait for room before leasing, so nothing leased sits waiting for a permit.
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        // Under load permits come back one at a time; leasing one event per returned permit
        // would make a pull (a log read) per request. While requests are in flight, wait a
        // moment for a few more to finish so that one pull fills several slots. An idle worker
        // (nothing in flight) pulls at once, so this adds no latency to a quiet subscription.
        // The permits waited for are given back at once: this worker is their only taker.
        let gather = (concurrency / 8).max(1);
        let in_flight = concurrency - permits.available_permits() - 1;
        if in_flight > 0 && permits.available_permits() + 1 < gather {
            let want = u32::try_from(gather - 1).unwrap_or(u32::MAX);
            let _ = tokio::time::timeout(GATHER_WAIT, permits.acquire_many(want)).await;
        }
        let room = (permits.available_permits() + 1) * batch;
        // Not raced against `stop`: a pull dropped after it leased would strand its events.
        // It looks at `stop` itself, twice a second.
        let pulled = crate::subs::filtered_pull(
            &app,
            &sub,
            filter.as_ref(),
            &consumer,
            room,
            Duration::from_secs(5),
            &stop,
        )
        .await;
        let deliveries = match pulled {
            Ok(d) => {
                failures = 0;
                d
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(subscription = %sub.name, error = %e, "push: pull failed");
                tokio::time::sleep(Duration::from_millis(100) * failures.min(50)).await;
                continue;
            }
        };
        let mut first = Some(first);
        let mut deliveries = deliveries.into_iter().peekable();
        while deliveries.peek().is_some() {
            let chunk: Vec<Delivery> = deliveries.by_ref().take(batch).collect();
            let permit = match first.take() {
                Some(p) => p,
                None => match permits.clone().try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                },
            };
            let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let Ok(settling) = unsettled.clone().acquire_many_owned(n).await else {
                break;
            };
            let (app, sub, to) = (app.clone(), sub.clone(), to.clone());
            let format = spec.format;
            let dapr = dapr_routes.clone();
            // Boxed: the delivery's future is large, and tokio moves a task's future (and its
            // stage) by value; a pointer moves cheaper (memcpy was 5 % of a push run).
            tokio::spawn(Box::pin(async move {
                if let Some(dapr) = dapr {
                    if batch > 1 {
                        crate::dapr::deliver::deliver_bulk(&app, &sub, &to, &dapr, chunk, permit)
                            .await;
                    } else if let Some(d) = chunk.into_iter().next() {
                        crate::dapr::deliver::deliver(&app, &sub, &to, &dapr, d, permit).await;
                    }
                } else if batch > 1 {
                    deliver_batch(&app, &sub, &to, chunk, permit).await;
                } else if let Some(d) = chunk.into_iter().next() {
                    deliver(&app, &sub, &to, format, d, permit).await;
                }
                drop(settling);
            }));
        }
    }
    // Drain: every permit back means every request answered and settled or handed to the
    // acker, which ends once it has acked what it holds.
    let _ = unsettled.acquire_many(UNSETTLED).await;
    drop(to);
    let _ = acker.await;
}

/// A success or a drop, for the acker.
struct Acked {
    token: LeaseToken,
    seq: u64,
    /// The outcome's metric label.
    outcome: &'static str,
}

/// A push worker's bound on deliveries not yet settled (far above any in-flight limit): each
/// holds one permit of the worker's `unsettled` semaphore until its ack or nack is handed over.
const UNSETTLED: u32 = 1 << 20;

/// The most acks written at once.
const ACK_BATCH: usize = 1024;

/// A push worker's acker: acks what its deliveries' subscribers answered for, in batches
/// (`Backend::ack_unconfirmed`: the subscriber's answer was the acknowledgment, so the acks need
/// not be durable before the next request; a machine crash may deliver those events again, as
/// at-least-once allows). One write for many acks, instead of one per event, is what lets push
/// keep up with a fast topic (BENCHMARKS.md). Ends when every sender is gone and all is acked.
async fn ack_batches<B: Backend>(
    app: Shared<B>,
    sub: Arc<Subscription>,
    mut rx: mpsc::UnboundedReceiver<Acked>,
    unsettled: Arc<Semaphore>,
) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    // While other deliveries are in flight, an unordered subscription's acks wait a moment to
    // be written together: one write (and one wake-up of the writer thread) per millisecond
    // instead of one per few acks, which was a fifth of a push run's CPU (BENCHMARKS.md). An
    // ordered subscription's next event of a key waits for the ack, and a quiet one (or one
    // with a small in-flight limit) has nothing to gather: those acks are written at once.
    let unordered = sub.ordered == Some(false);
    let busy = || UNSETTLED as usize - unsettled.available_permits() > 1;
    while rx.recv_many(&mut batch, ACK_BATCH).await > 0 {
        if unordered && batch.len() < ACK_BATCH && busy() {
            tokio::time::sleep(GATHER_WAIT).await;
            while batch.len() < ACK_BATCH
                && let Ok(more) = rx.try_recv()
            {
                batch.push(more);
            }
        }
        let (tokens, acked): (Vec<LeaseToken>, Vec<(u64, &'static str)>) = batch
            .drain(..)
            .map(|a| (a.token, (a.seq, a.outcome)))
            .unzip();
        let answers = app.engine.backend().ack_unconfirmed(&tokens).await;
        for ((seq, outcome), answer) in acked.into_iter().zip(answers) {
            count_settled(&app, &sub, seq, outcome, answer);
        }
    }
}

/// Where a push worker's requests go, and its acker: one per worker, shared by its deliveries.
pub(crate) struct To {
    pub(crate) client: Subscriber,
    /// The subscription's URL, for messages.
    pub(crate) url: url::Url,
    /// The request target (path and query); a Dapr app's routes go under the URL's path.
    pub(crate) path: String,
    /// To the worker's acker.
    acks: mpsc::UnboundedSender<Acked>,
    /// The subscription's metric label.
    pub(crate) label: SubLabel,
}

/// How long a busy push worker waits for more request slots before it pulls (see `run`), and
/// its acker for more acks before it writes them (`ack_batches`).
const GATHER_WAIT: Duration = Duration::from_millis(1);

/// Sends one delivery and settles it.
async fn deliver<B: Backend>(
    app: &App<B>,
    sub: &Subscription,
    to: &To,
    format: PushFormat,
    d: Delivery,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let ev = &d.event.event;
    let mut headers = HeaderMap::new();
    let body: Vec<u8> = match format {
        PushFormat::Structured => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/cloudevents+json"),
            );
            ev.to_json()
        }
        PushFormat::Binary => {
            let m = ev.to_http_binary();
            for (k, v) in &m.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::try_from(k.as_str()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    headers.insert(k, v);
                }
            }
            if let Some(ct) = m
                .content_type
                .as_deref()
                .and_then(|c| HeaderValue::try_from(c).ok())
            {
                headers.insert(CONTENT_TYPE, ct);
            }
            m.body
        }
        PushFormat::Data => {
            if let Ok(ct) = HeaderValue::try_from(ev.effective_content_type()) {
                headers.insert(CONTENT_TYPE, ct);
            }
            ev.data
                .as_ref()
                .map(|x| x.as_bytes().to_vec())
                .unwrap_or_default()
        }
    };
    if let Some(tp) = ev
        .traceparent()
        .and(ev.extensions.get("traceparent"))
        .and_then(|v| v.as_str())
        && let Ok(v) = HeaderValue::try_from(tp)
    {
        headers.insert("traceparent", v);
    }
    let answer = to.client.post(&to.path, headers, body).await;
    let url = &to.url;
    let label = &to.label;
    app.metrics
        .push_seconds
        .get_or_create(label)
        .observe(started.elapsed().as_secs_f64());
    let (outcome, error) = match answer {
        Err(e) => (
            Outcome::Retry(None),
            Some(format!("push to {url} failed: {e}")),
        ),
        Ok(res) => {
            let status = res.status;
            let retry_after = retry_after(&res.headers);
            if status.is_success() {
                interpret(&res.body, retry_after)
            } else if status == hyper::StatusCode::NOT_FOUND {
                (
                    Outcome::DeadLetter,
                    Some(format!("subscriber answered 404 at {url}")),
                )
            } else {
                (
                    Outcome::Retry(retry_after),
                    Some(format!("subscriber answered {status}")),
                )
            }
        }
    };
    drop(permit);
    settle_and_count(app, to, sub, &d, outcome, error).await;
}

/// Sends deliveries as one `application/cloudevents-batch+json` request and settles each by
/// the answer: `{"statuses":[{"entryId":"<event id>","status":"SUCCESS|RETRY|DROP"}]}`, an
/// entry left out counting as RETRY (Dapr's bulk contract); a 2xx without `statuses` is
/// success for all, and a failed request applies to all.
async fn deliver_batch<B: Backend>(
    app: &App<B>,
    sub: &Subscription,
    to: &To,
    chunk: Vec<Delivery>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let mut body = Vec::with_capacity(chunk.len() * 600);
    body.push(b'[');
    for (i, d) in chunk.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&d.event.event.to_json());
    }
    body.push(b']');
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    let answer = to.client.post(&to.path, headers, body).await;
    let label = &to.label;
    app.metrics
        .push_seconds
        .get_or_create(label)
        .observe(started.elapsed().as_secs_f64());
    let outcomes = batch_outcomes(answer, &chunk, to.url.as_str());
    drop(permit);
    let settles = chunk
        .iter()
        .zip(outcomes)
        .map(|(d, (outcome, error))| settle_and_count(app, to, sub, d, outcome, error));
    futures_util::future::join_all(settles).await;
}

/// Per delivery, the outcome of a batch request's answer: `statuses` by `entryId` (the event
/// id; one left out is RETRY), a 2xx without `statuses` success for all, 404 drop for all,
/// anything else retry for all.
pub(crate) fn batch_outcomes(
    answer: Result<Answer, String>,
    chunk: &[Delivery],
    url: &str,
) -> Vec<(Outcome, Option<String>)> {
    match answer {
        Err(e) => vec![
            (
                Outcome::Retry(None),
                Some(format!("push to {url} failed: {e}"))
            );
            chunk.len()
        ],
        Ok(res) => {
            let status = res.status;
            let retry_after = retry_after(&res.headers);
            if status.is_success() {
                let statuses = serde_json::from_slice::<serde_json::Value>(&res.body)
                    .ok()
                    .and_then(|v| v.get("statuses").and_then(|s| s.as_array()).cloned());
                match statuses {
                    None => vec![(Outcome::Success, None); chunk.len()],
                    Some(list) => chunk
                        .iter()
                        .map(|d| {
                            let entry = list.iter().find(|e| {
                                e.get("entryId").and_then(|x| x.as_str())
                                    == Some(d.event.event.id.as_str())
                            });
                            match entry {
                                None => (
                                    Outcome::Retry(retry_after),
                                    Some("subscriber left the entry out".to_owned()),
                                ),
                                Some(e) => interpret(e.to_string().as_bytes(), retry_after),
                            }
                        })
                        .collect(),
                }
            } else if status == hyper::StatusCode::NOT_FOUND {
                vec![
                    (
                        Outcome::DeadLetter,
                        Some(format!("subscriber answered 404 at {url}"))
                    );
                    chunk.len()
                ]
            } else {
                vec![
                    (
                        Outcome::Retry(retry_after),
                        Some(format!("subscriber answered {status}"))
                    );
                    chunk.len()
                ]
            }
        }
    }
}

/// Settles one delivery and counts it.
pub(crate) async fn settle_and_count<B: Backend>(
    app: &App<B>,
    to: &To,
    sub: &Subscription,
    d: &Delivery,
    outcome: Outcome,
    error: Option<String>,
) {
    let name = match outcome {
        Outcome::Success => "success",
        Outcome::Retry(_) => "retry",
        Outcome::Drop => "drop",
        Outcome::DeadLetter => "dead-letter",
    };
    if outcome == Outcome::Success
        && let Ok(age) = SystemTime::now().duration_since(d.event.published_at)
    {
        app.metrics
            .end_to_end_seconds
            .get_or_create(&to.label)
            .observe(age.as_secs_f64());
    }
    // Acks go to the worker's acker, which writes them in batches. It runs while any delivery
    // holds `to`, so a failed send means it panicked: then this task settles it.
    if matches!(outcome, Outcome::Success | Outcome::Drop) {
        let acked = Acked {
            token: d.token.clone(),
            seq: d.event.seq,
            outcome: name,
        };
        if to.acks.send(acked).is_ok() {
            return;
        }
    }
    let settled = settle(app.engine.backend(), &d.token, outcome, error).await;
    count_settled(app, sub, d.event.seq, name, settled);
}

/// Counts a settled delivery, or logs why settling failed.
fn count_settled<B: Backend>(
    app: &App<B>,
    sub: &Subscription,
    seq: u64,
    outcome: &'static str,
    settled: Result<(), canon_backend::BackendError>,
) {
    match settled {
        Ok(()) => {
            app.metrics
                .delivered
                .get_or_create(&SubOutcome {
                    subscription: sub.name.clone(),
                    outcome,
                })
                .inc();
        }
        // The lease ran out while the subscriber worked: the event is redelivered.
        Err(e) => {
            tracing::warn!(subscription = %sub.name, seq, error = %e, "push: settling failed");
        }
    }
}

/// The `Retry-After` of an answer, in seconds.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A 2xx answer's body, by the Dapr contract.
pub(crate) fn interpret(body: &[u8], retry_after: Option<Duration>) -> (Outcome, Option<String>) {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (Outcome::Success, None);
    };
    match m.get("status") {
        None => (Outcome::Success, None),
        Some(serde_json::Value::String(s)) => match s.to_ascii_uppercase().as_str() {
            "SUCCESS" => (Outcome::Success, None),
            "RETRY" => (
                Outcome::Retry(retry_after),
                Some("subscriber answered RETRY".to_owned()),
            ),
            "DROP" => (
                Outcome::DeadLetter,
                Some("subscriber answered DROP".to_owned()),
            ),
            other => (
                Outcome::Retry(retry_after),
                Some(format!("subscriber answered unknown status {other}")),
            ),
        },
        Some(other) => (
            Outcome::Retry(retry_after),
            Some(format!("subscriber answered status {other}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_follow_the_dapr_contract() {
        assert_eq!(interpret(b"", None).0, Outcome::Success);
        assert_eq!(interpret(b"not json", None).0, Outcome::Success);
        assert_eq!(interpret(br#"{"other":1}"#, None).0, Outcome::Success);
        assert_eq!(
            interpret(br#"{"status":"SUCCESS"}"#, None).0,
            Outcome::Success
        );
        assert_eq!(
            interpret(br#"{"status":"success"}"#, None).0,
            Outcome::Success
        );
        let d = Some(Duration::from_secs(3));
        assert_eq!(interpret(br#"{"status":"RETRY"}"#, d).0, Outcome::Retry(d));
        assert_eq!(
            interpret(br#"{"status":"DROP"}"#, None).0,
            Outcome::DeadLetter
        );
        assert_eq!(
            interpret(br#"{"status":"MAYBE"}"#, None).0,
            Outcome::Retry(None)
        );
        assert_eq!(interpret(br#"{"status":7}"#, None).0, Outcome::Retry(None));
    }
}
