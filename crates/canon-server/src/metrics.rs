//! Prometheus metrics (`GET /metrics`, text format). Counters and histograms are kept as
//! requests happen; lag and DLQ depth are read from the backend at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicOutcome {
    pub(crate) topic: String,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TopicLabel {
    pub(crate) topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SubOutcome {
    pub(crate) subscription: String,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SubLabel {
    pub(crate) subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    pub(crate) code: &'static str,
}

fn latency() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    /// Events published, by topic and outcome (`stored`, `duplicate`, `rejected`).
    pub(crate) published: Family<TopicOutcome, Counter>,
    /// Time from receiving a publish to its answer, by topic.
    pub(crate) publish_seconds: Family<TopicLabel, Histogram, fn() -> Histogram>,
    /// Deliveries settled, by subscription and outcome (`success`, `retry`, `drop`, `dead-letter`,
    /// `filtered`).
    pub(crate) delivered: Family<SubOutcome, Counter>,
    /// Push request round trips, by subscription.
    pub(crate) push_seconds: Family<SubLabel, Histogram, fn() -> Histogram>,
    /// Publish-to-delivery time, by subscription.
    pub(crate) end_to_end_seconds: Family<SubLabel, Histogram, fn() -> Histogram>,
    /// Events stored but not yet done, by subscription.
    pub(crate) lag: Family<SubLabel, Gauge>,
    /// DLQ entries, by subscription.
    pub(crate) dlq_depth: Family<SubLabel, Gauge>,
    /// Requests refused, by problem code.
    pub(crate) refused: Family<CodeLabel, Counter>,
    /// Job ticks, by outcome (`fired`, `failed`, `missed`).
    pub(crate) job_ticks: Family<OutcomeLabel, Counter>,
    /// How late jobs fired after their due time.
    pub(crate) job_lateness_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("canon"),
            published: Family::default(),
            publish_seconds: Family::new_with_constructor(latency),
            delivered: Family::default(),
            push_seconds: Family::new_with_constructor(latency),
            end_to_end_seconds: Family::new_with_constructor(latency),
            lag: Family::default(),
            dlq_depth: Family::default(),
            refused: Family::default(),
            job_ticks: Family::default(),
            job_lateness_seconds: latency(),
        };
        let r = &mut m.registry;
        r.register(
            "published_events",
            "Events published, by topic and outcome (stored, duplicate, rejected)",
            m.published.clone(),
        );
        r.register(
            "publish_duration_seconds",
            "Time from receiving a publish request to answering it",
            m.publish_seconds.clone(),
        );
        r.register(
            "deliveries",
            "Deliveries settled, by subscription and outcome",
            m.delivered.clone(),
        );
        r.register(
            "push_duration_seconds",
            "Push request round trips to subscribers",
            m.push_seconds.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "Time from an event's storage to its successful delivery",
            m.end_to_end_seconds.clone(),
        );
        r.register(
            "consumer_lag_events",
            "Events stored but not yet done, by subscription",
            m.lag.clone(),
        );
        r.register(
            "dlq_depth_events",
            "Dead-letter queue entries, by subscription",
            m.dlq_depth.clone(),
        );
        r.register(
            "refused_requests",
            "Requests refused, by problem code",
            m.refused.clone(),
        );
        r.register(
            "job_ticks",
            "Job ticks, by outcome: fired (the app answered 2xx), failed (after the failure policy), missed (ticks that passed while the server was down, coalesced into one)",
            m.job_ticks.clone(),
        );
        r.register(
            "job_lateness_seconds",
            "Time from a job tick's due time to its trigger request",
            m.job_lateness_seconds.clone(),
        );
        m
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
