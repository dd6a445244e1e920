//! The pull consumer runner: leases events of a subscription and runs a dispatcher's handlers
//! on them, extending leases while handlers work, publishing what they emit, then settling.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use canon_envelope::CloudEvent;
use futures_util::{FutureExt, StreamExt};

use super::client::{Client, Delivery, RemoteError};
use crate::dispatch::{Dispatcher, Report};
use crate::raw::RawEvent;

/// Runs a [`Dispatcher`] on the events of one subscription of a Canon server.
///
/// For each delivery: the event is dispatched (the dispatcher's catalogs give raw events
/// their rules, consent purpose and keys); the lease is extended while handlers run; then
///
/// | outcome | settle |
/// |---|---|
/// | every handler succeeded | the events they emitted are published, then ack |
/// | consent refused (`skipped`) | ack; counted and logged, the report names the purpose |
/// | a handler failed or panicked | nack: the subscription's retry policy, then its DLQ |
/// | a handler returned [`crate::Reject`], the event is invalid, or no handler accepts it | reject: to the DLQ now, redrivable |
/// | emitted events could not be published | nack |
///
/// Emitted events are published to the server (never dispatched locally: the server delivers
/// them to their subscribers). Acknowledgements of one pull go in one request. Leases of a
/// pull's deliveries are extended together until they are settled. [`Consumer::run`] stops
/// pulling when its shutdown future completes (a pull under way finishes first), finishes and
/// settles what it holds, and returns.
#[derive(Debug, Clone)]
pub struct Consumer {
    client: Client,
    subscription: String,
    dispatcher: Dispatcher,
    name: String,
    batch: usize,
    wait: Duration,
    concurrency: usize,
    pullers: usize,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    delivered: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    rejected: AtomicU64,
    skipped: AtomicU64,
    emitted: AtomicU64,
}

/// What a consumer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsumerStats {
    /// Deliveries received.
    pub delivered: u64,
    /// Acknowledged (handled, or skipped for consent).
    pub acked: u64,
    /// Given back for a retry.
    pub nacked: u64,
    /// Sent to the DLQ.
    pub rejected: u64,
    /// Acknowledged without running handlers (consent refused).
    pub skipped: u64,
    /// Events emitted by handlers and published.
    pub emitted: u64,
}

enum Settle {
    Ack,
    Nack(String),
    Reject(String),
}

impl Consumer {
    /// A consumer of `subscription`. Give the dispatcher the catalogs of the events it
    /// consumes: raw events take their consent purpose, personal data, handler rules and keys
    /// from them.
    pub fn new(client: Client, subscription: &str, dispatcher: Dispatcher) -> Consumer {
        Consumer {
            name: format!("{}-{}", client.source(), std::process::id()),
            client,
            subscription: subscription.to_owned(),
            dispatcher,
            batch: 100,
            wait: Duration::from_secs(1),
            concurrency: 16,
            pullers: 1,
            stats: Arc::default(),
        }
    }

    /// Deliveries leased per pull (default 100).
    pub fn batch(mut self, n: usize) -> Consumer {
        self.batch = n.max(1);
        self
    }

    /// How long a pull waits for the first event (default 1 s). Shutdown takes at most this
    /// long plus the handlers' time.
    pub fn wait(mut self, wait: Duration) -> Consumer {
        self.wait = wait;
        self
    }

    /// Deliveries of one pull handled at once (default 16; with several pullers, up to
    /// `pullers × n` in all). Ordered subscriptions keep per-key order regardless: the server
    /// leases one event per key at a time.
    pub fn concurrency(mut self, n: usize) -> Consumer {
        self.concurrency = n.max(1);
        self
    }

    /// Pulls in flight at once (default 1): more keep a fast server busy while handlers work
    /// on what the previous pull brought.
    pub fn pullers(mut self, n: usize) -> Consumer {
        self.pullers = n.max(1);
        self
    }

    /// The consumer's name in the server's attempt records (default `<source>-<pid>`).
    pub fn name(mut self, name: &str) -> Consumer {
        name.clone_into(&mut self.name);
        self
    }

    /// What it did so far.
    pub fn stats(&self) -> ConsumerStats {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConsumerStats {
            delivered: get(&s.delivered),
            acked: get(&s.acked),
            nacked: get(&s.nacked),
            rejected: get(&s.rejected),
            skipped: get(&s.skipped),
            emitted: get(&s.emitted),
        }
    }

    /// Pulls and handles until `shutdown` completes; then settles what it holds and returns
    /// its statistics. A server that cannot be reached is retried with backoff (up to 5 s);
    /// a refusal (unknown subscription, forbidden) ends the run with the error.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<ConsumerStats, RemoteError> {
        let stop = shutdown.boxed().shared();
        let (failed_tx, failed_rx) = tokio::sync::watch::channel(false);
        let loops = (0..self.pullers).map(|_| {
            let (stop, failed_tx, failed_rx) = (stop.clone(), &failed_tx, failed_rx.clone());
            async move {
                let result = self.pull_loop(stop, failed_rx).await;
                if result.is_err() {
                    // One loop failed for good: the others finish what they hold and stop.
                    let _ = failed_tx.send(true);
                }
                result
            }
        });
        let results = futures_util::future::join_all(loops).await;
        results.into_iter().collect::<Result<Vec<()>, _>>()?;
        Ok(self.stats())
    }

    async fn pull_loop(
        &self,
        stop: futures_util::future::Shared<futures_util::future::BoxFuture<'_, ()>>,
        failed: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), RemoteError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            // A pull is never abandoned half way: what it leases is handled and settled.
            if stop.clone().now_or_never().is_some() || *failed.borrow() {
                return Ok(());
            }
            let pulled = self
                .client
                .pull(&self.subscription, self.batch, self.wait, &self.name)
                .await;
            let deliveries = match pulled {
                Ok(d) => {
                    backoff = Duration::from_millis(100);
                    d
                }
                Err(e) if transient(&e) => {
                    tracing::warn!(subscription = %self.subscription, error = %e, "pull failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.handle(deliveries).await;
        }
    }

    /// Handles one pull's deliveries and settles them. Until they are settled, one request
    /// per half lease extends the leases of all of them: those handled, those being handled
    /// and those waiting their turn.
    async fn handle(&self, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        self.stats
            .delivered
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        let interval = lease_interval(&deliveries[0]);
        let ids: Vec<String> = deliveries.iter().map(|d| d.ack_id.clone()).collect();
        let work = futures_util::stream::iter(deliveries)
            .map(|d| async move {
                let settle = self.one(&d).await;
                (d.ack_id, settle)
            })
            .buffer_unordered(self.concurrency)
            .collect::<Vec<(String, Settle)>>();
        let mut work = std::pin::pin!(work);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut work => break outcomes,
                _ = ticker.tick() => {
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    if let Err(e) = self.client.extend(&self.subscription, &ids, None).await {
                        tracing::warn!(subscription = %self.subscription, error = %e, "lease extension failed");
                    }
                }
            }
        };
        self.settle(&outcomes).await;
    }

    async fn settle(&self, outcomes: &[(String, Settle)]) {
        let mut acks = Vec::new();
        for (ack_id, settle) in outcomes {
            let result = match settle {
                Settle::Ack => {
                    acks.push(ack_id.as_str());
                    continue;
                }
                Settle::Nack(error) => {
                    self.stats.nacked.fetch_add(1, Ordering::Relaxed);
                    self.client
                        .nack(&self.subscription, &[ack_id], None, Some(error))
                        .await
                }
                Settle::Reject(error) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    self.client
                        .reject(&self.subscription, &[ack_id], Some(error))
                        .await
                }
            };
            if let Err(e) = result {
                // The lease runs out and the event is redelivered: nothing is lost.
                tracing::warn!(subscription = %self.subscription, %ack_id, error = %e, "settle failed");
            }
        }
        if !acks.is_empty() {
            match self.client.ack(&self.subscription, &acks).await {
                Ok(lost) => {
                    let n = acks.len() - lost.len();
                    self.stats.acked.fetch_add(n as u64, Ordering::Relaxed);
                    if !lost.is_empty() {
                        tracing::warn!(subscription = %self.subscription, lost = lost.len(),
                            "leases lost before the ack: those events are redelivered");
                    }
                }
                Err(e) => {
                    tracing::warn!(subscription = %self.subscription, error = %e,
                        "ack failed: the events are redelivered");
                }
            }
        }
    }

    async fn one(&self, d: &Delivery) -> Settle {
        let event = match CloudEvent::from_json(d.event.get().as_bytes()) {
            Ok(e) => e,
            Err(e) => return Settle::Reject(format!("not a valid CloudEvent: {e}")),
        };
        let raw = RawEvent::new(event, self.dispatcher.catalogs());
        let report = self.dispatcher.dispatch_raw(raw, false).await;
        self.decide(report).await
    }

    async fn decide(&self, report: Report) -> Settle {
        if report.rejected() {
            return Settle::Reject(errors(&report));
        }
        if let Some(invalid) = &report.invalid {
            return Settle::Reject(invalid.to_string());
        }
        if report.unhandled {
            return Settle::Reject(format!(
                "no handler of {} accepts version {}",
                report.ty, report.version
            ));
        }
        if !report.failures.is_empty() {
            return Settle::Nack(errors(&report));
        }
        if let Some(purpose) = &report.skipped {
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::info!(event.id = %report.event_id, %purpose, "skipped: no consent");
            return Settle::Ack;
        }
        if !report.emitted.is_empty() {
            let events: Vec<CloudEvent> = report
                .emitted
                .iter()
                .map(|e| e.to_cloud_event(self.client.source()))
                .collect();
            if let Err(e) = self.publish_emitted(&events).await {
                return Settle::Nack(format!("publishing emitted events failed: {e}"));
            }
            self.stats
                .emitted
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        }
        Settle::Ack
    }

    /// One batch per topic would be atomic; events of several topics go one by one.
    async fn publish_emitted(&self, events: &[CloudEvent]) -> Result<(), RemoteError> {
        if let [one] = events {
            return self.client.publish_event(one).await.map(drop);
        }
        for e in events {
            self.client.publish_event(e).await?;
        }
        Ok(())
    }
}

/// Half the time left on the lease (at least 100 ms; 15 s if the server's time is unreadable):
/// how often to extend it.
fn lease_interval(d: &Delivery) -> Duration {
    let Ok(until) = time::OffsetDateTime::parse(
        &d.leased_until,
        &time::format_description::well_known::Rfc3339,
    ) else {
        return Duration::from_secs(15);
    };
    let left = Duration::try_from(until - time::OffsetDateTime::now_utc()).unwrap_or_default();
    (left / 2).max(Duration::from_millis(100))
}

/// Whether a failed pull is worth retrying: the server unreachable, overloaded or failing.
fn transient(e: &RemoteError) -> bool {
    match e {
        RemoteError::Unreachable(_) => true,
        RemoteError::Problem { status, .. } => matches!(status, 408 | 429 | 500..=599),
        RemoteError::Answer(_) => false,
    }
}

fn errors(report: &Report) -> String {
    report
        .failures
        .iter()
        .map(|f| format!("{}: {}", f.handler, f.error))
        .collect::<Vec<_>>()
        .join("; ")
}
