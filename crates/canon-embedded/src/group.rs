//! One consumer group's delivery state, in memory: leases, retries waiting for their time,
//! per-key ordering, and the acks above the durable floor. Every change that must survive a
//! restart comes back as writer operations; the caller persists them before answering.
//!
//! Recovery: the floor (every sequence at or below it is done), the `done` set above it, the
//! failed attempts of events still pending, and the redriven (`requeue`) set are durable. On
//! open, every other sequence above the floor is pending again, so a crash redelivers what was
//! in flight (at-least-once), never loses it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use canon_backend::{
    AttemptRecord, DeadLetterReason, Delivery, GroupConfig, LeaseToken, StoredEvent,
};

use crate::store;
use crate::writer::{Op, Space};

/// The failed attempts of one event, oldest first.
pub(crate) type History = Vec<AttemptRecord>;

#[derive(Debug)]
struct Lease {
    handle: u64,
    until: Instant,
    key: Option<String>,
    consumer: String,
    /// Failed attempts before this one (this is attempt `history.len() + 1`).
    history: History,
}

#[derive(Debug)]
struct Waiting {
    due: Instant,
    key: Option<String>,
    history: History,
}

/// The state of one group.
#[derive(Debug)]
pub(crate) struct GroupState {
    pub(crate) topic: String,
    pub(crate) name: String,
    pub(crate) config: GroupConfig,
    floor: u64,
    done: BTreeSet<u64>,
    /// The next sequence to read from the log.
    cursor: u64,
    inflight: BTreeMap<u64, Lease>,
    waiting: BTreeMap<u64, Waiting>,
    /// Ordered groups: events whose key is busy, by key, in sequence order.
    held: HashMap<String, VecDeque<u64>>,
    /// Ordered groups: the one sequence per key that is leased or waiting.
    busy: HashMap<String, u64>,
    /// Failed attempts of sequences not currently leased or waiting (from before a restart).
    failures: HashMap<u64, History>,
    /// Redriven sequences at or below the floor: pending again (R7).
    requeued: BTreeSet<u64>,
    next_handle: u64,
}

/// A lease operation on a lease that is no longer held.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LeaseError {
    Lost,
}

/// What `pull` needs from the log.
pub(crate) trait Log {
    /// Events with sequences in `from..=to`, at most `limit`, in order.
    fn range(&self, from: u64, to: u64, limit: usize) -> Vec<StoredEvent>;
    /// One event.
    fn get(&self, seq: u64) -> Option<StoredEvent>;
}

/// What a group is recovered from.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) floor: u64,
    pub(crate) done: BTreeSet<u64>,
    pub(crate) failures: HashMap<u64, History>,
    pub(crate) requeued: BTreeSet<u64>,
}

impl GroupState {
    pub(crate) fn new(topic: String, name: String, config: GroupConfig, r: Recovered) -> Self {
        let now = Instant::now();
        // Redriven events are pending again (their keys are looked up when they are leased).
        let waiting = r
            .requeued
            .iter()
            .map(|s| {
                (
                    *s,
                    Waiting {
                        due: now,
                        key: None,
                        history: History::new(),
                    },
                )
            })
            .collect();
        GroupState {
            topic,
            name,
            config,
            floor: r.floor,
            done: r.done,
            cursor: r.floor + 1,
            inflight: BTreeMap::new(),
            waiting,
            held: HashMap::new(),
            busy: HashMap::new(),
            failures: r.failures,
            requeued: r.requeued,
            next_handle: 1,
        }
    }

    fn key_of(&self, seq: u64) -> Vec<u8> {
        store::group_seq_key(&self.topic, &self.name, seq)
    }

    /// The earliest moment something becomes deliverable without a new publish.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let lease = self.inflight.values().map(|l| l.until).min();
        let retry = self.waiting.values().map(|w| w.due).min();
        lease.into_iter().chain(retry).min()
    }

    /// Leases up to `max` events to `consumer`. Returns the deliveries and what must be
    /// persisted first.
    pub(crate) fn pull(
        &mut self,
        now: Instant,
        committed: u64,
        max: usize,
        consumer: &str,
        log: &dyn Log,
    ) -> (Vec<Delivery>, Vec<Op>) {
        let mut ops = Vec::new();
        self.expire(now, log, &mut ops);
        let room = self
            .config
            .max_in_flight
            .saturating_sub(self.inflight.len());
        let limit = max.min(room);
        let mut out = Vec::new();
        // Retries whose time has come, oldest sequence first.
        let ready: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.due <= now)
            .map(|(s, _)| *s)
            .take(limit)
            .collect();
        for seq in ready {
            let Some(w) = self.waiting.remove(&seq) else {
                continue;
            };
            match log.get(seq) {
                Some(event) => self.admit(now, event, w.history, consumer, &mut out, &mut ops),
                // Gone from the log (retention): nothing to deliver.
                None => self.finish(seq, w.key.as_deref(), !w.history.is_empty(), &mut ops),
            }
        }
        // New events from the log. Acks can move the floor past the read position (events acked
        // out of order, then the one before them): what is at or below the floor is done.
        self.cursor = self.cursor.max(self.floor + 1);
        // Read as many as are wanted: whatever is read past the last one leased is read again by
        // the next pull (a small pull, as a push worker makes, must not decode a large chunk).
        // Events skipped (done out of order, in flight after a reset) widen the next read.
        let mut skipped = 0usize;
        while out.len() < limit && self.cursor <= committed {
            let want = (limit - out.len()).saturating_add(skipped.min(1024));
            let events = log.range(self.cursor, committed, want);
            let Some(last) = events.last().map(|e| e.seq) else {
                self.cursor = committed + 1;
                break;
            };
            for event in events {
                let seq = event.seq;
                if out.len() == limit {
                    break;
                }
                self.cursor = seq + 1;
                if seq <= self.floor
                    || self.done.contains(&seq)
                    || self.inflight.contains_key(&seq)
                    || self.waiting.contains_key(&seq)
                {
                    skipped += 1;
                    continue;
                }
                if self.config.ordered
                    && let Some(k) = &event.ordering_key
                    && self.busy.get(k).is_some_and(|s| *s != seq)
                {
                    self.held.entry(k.clone()).or_default().push_back(seq);
                    skipped += 1;
                    continue;
                }
                let history = self.failures.remove(&seq).unwrap_or_default();
                self.admit(now, event, history, consumer, &mut out, &mut ops);
            }
            if self.cursor <= last {
                break;
            }
        }
        (out, ops)
    }

    /// Leases an event, unless it expired (T2: dead-lettered) or is not due yet (T1: it waits).
    fn admit(
        &mut self,
        now: Instant,
        event: StoredEvent,
        history: History,
        consumer: &str,
        out: &mut Vec<Delivery>,
        ops: &mut Vec<Op>,
    ) {
        let wall = SystemTime::now();
        let key = event.ordering_key.clone();
        if self.config.ordered
            && let Some(k) = &key
        {
            self.busy.insert(k.clone(), event.seq);
        }
        if event
            .event
            .expiration_time()
            .is_some_and(|t| SystemTime::from(t) <= wall)
        {
            self.dead_letter(
                Some(&event),
                event.seq,
                key.as_deref(),
                DeadLetterReason::Expired,
                &history,
                Some("expired before delivery"),
                ops,
            );
            return;
        }
        if let Some(at) = event.event.not_before_time().map(SystemTime::from)
            && let Ok(wait) = at.duration_since(wall)
            && !wait.is_zero()
        {
            self.waiting.insert(
                event.seq,
                Waiting {
                    due: now + wait,
                    key,
                    history,
                },
            );
            return;
        }
        out.push(self.lease(now, event, history, consumer));
    }

    fn lease(
        &mut self,
        now: Instant,
        event: StoredEvent,
        history: History,
        consumer: &str,
    ) -> Delivery {
        let handle = self.next_handle;
        self.next_handle += 1;
        let attempt = u32::try_from(history.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let until = now + self.config.lease;
        let key = event.ordering_key.clone();
        self.inflight.insert(
            event.seq,
            Lease {
                handle,
                until,
                key,
                consumer: consumer.to_owned(),
                history,
            },
        );
        let token = LeaseToken {
            topic: self.topic.clone(),
            group: self.name.clone(),
            seq: event.seq,
            handle,
        };
        Delivery {
            event,
            attempt,
            token,
            leased_until: SystemTime::now() + self.config.lease,
        }
    }

    /// Expired leases: redeliverable at once, or dead-lettered after the last attempt (R2).
    fn expire(&mut self, now: Instant, log: &dyn Log, ops: &mut Vec<Op>) {
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, l)| l.until <= now)
            .map(|(s, _)| *s)
            .collect();
        for seq in expired {
            if let Some(lease) = self.inflight.remove(&seq) {
                self.failed(
                    now,
                    seq,
                    lease,
                    Duration::ZERO,
                    "lease-expired",
                    None,
                    log,
                    ops,
                );
            }
        }
    }

    fn take(&mut self, token: &LeaseToken) -> Result<Lease, LeaseError> {
        match self.inflight.get(&token.seq) {
            Some(l) if l.handle == token.handle => {
                self.inflight.remove(&token.seq).ok_or(LeaseError::Lost)
            }
            _ => Err(LeaseError::Lost),
        }
    }

    pub(crate) fn ack(&mut self, token: &LeaseToken) -> Result<Vec<Op>, LeaseError> {
        let lease = self.take(token)?;
        let mut ops = Vec::new();
        self.finish(
            token.seq,
            lease.key.as_deref(),
            !lease.history.is_empty(),
            &mut ops,
        );
        Ok(ops)
    }

    pub(crate) fn extend(
        &mut self,
        now: Instant,
        token: &LeaseToken,
        by: Duration,
    ) -> Result<(), LeaseError> {
        match self.inflight.get_mut(&token.seq) {
            Some(l) if l.handle == token.handle && l.until > now => {
                l.until = now + by;
                Ok(())
            }
            _ => Err(LeaseError::Lost),
        }
    }

    pub(crate) fn nack(
        &mut self,
        now: Instant,
        token: &LeaseToken,
        delay: Option<Duration>,
        error: Option<String>,
        log: &dyn Log,
    ) -> Result<Vec<Op>, LeaseError> {
        let lease = self.take(token)?;
        let attempt = u32::try_from(lease.history.len() + 1).unwrap_or(u32::MAX);
        let delay = delay.unwrap_or_else(|| self.config.retry.delay(attempt));
        let mut ops = Vec::new();
        self.failed(now, token.seq, lease, delay, "retry", error, log, &mut ops);
        Ok(ops)
    }

    pub(crate) fn reject(
        &mut self,
        token: &LeaseToken,
        error: Option<String>,
        log: &dyn Log,
    ) -> Result<Vec<Op>, LeaseError> {
        let mut lease = self.take(token)?;
        lease.history.push(AttemptRecord {
            at: SystemTime::now(),
            consumer: lease.consumer.clone(),
            outcome: "dead-letter".into(),
            error: error.clone(),
        });
        let mut ops = Vec::new();
        let event = log.get(token.seq);
        self.dead_letter(
            event.as_ref(),
            token.seq,
            lease.key.as_deref(),
            DeadLetterReason::Rejected,
            &lease.history,
            error.as_deref(),
            &mut ops,
        );
        Ok(ops)
    }

    /// A failed attempt: recorded, then retried after `delay`, or dead-lettered if it was the last.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per way an attempt can fail"
    )]
    fn failed(
        &mut self,
        now: Instant,
        seq: u64,
        mut lease: Lease,
        delay: Duration,
        outcome: &str,
        error: Option<String>,
        log: &dyn Log,
        ops: &mut Vec<Op>,
    ) {
        lease.history.push(AttemptRecord {
            at: SystemTime::now(),
            consumer: lease.consumer,
            outcome: outcome.to_owned(),
            error: error.clone(),
        });
        let attempts = u32::try_from(lease.history.len()).unwrap_or(u32::MAX);
        if self.config.retry.is_last(attempts) {
            let error = error.or_else(|| Some(outcome.to_owned()));
            let event = log.get(seq);
            self.dead_letter(
                event.as_ref(),
                seq,
                lease.key.as_deref(),
                DeadLetterReason::MaxAttempts,
                &lease.history,
                error.as_deref(),
                ops,
            );
            return;
        }
        ops.push(Op::Put(
            Space::Attempt,
            self.key_of(seq),
            store::encode_history(&lease.history)
                .to_string()
                .into_bytes(),
        ));
        self.waiting.insert(
            seq,
            Waiting {
                due: now + delay,
                key: lease.key,
                history: lease.history,
            },
        );
    }

    /// Moves an event to the DLQ. The entry holds a copy of the event, so retention of the log
    /// never empties a DLQ.
    #[allow(clippy::too_many_arguments, reason = "the entry's fields")]
    fn dead_letter(
        &mut self,
        event: Option<&StoredEvent>,
        seq: u64,
        key: Option<&str>,
        reason: DeadLetterReason,
        history: &[AttemptRecord],
        error: Option<&str>,
        ops: &mut Vec<Op>,
    ) {
        ops.push(Op::Put(
            Space::Dlq,
            self.key_of(seq),
            store::encode_dlq(reason, history, store::now_ms(), error, event),
        ));
        self.finish(seq, key, !history.is_empty(), ops);
    }

    /// The event is done for this group (acked, dropped or dead-lettered). `had_failures`: an
    /// attempt history is on disk and must go.
    fn finish(&mut self, seq: u64, key: Option<&str>, had_failures: bool, ops: &mut Vec<Op>) {
        let floor_before = self.floor;
        if had_failures {
            // Only events that failed before have a history on disk: deleting one that is not
            // there would cost a tombstone per ack.
            ops.push(Op::Delete(Space::Attempt, self.key_of(seq)));
        }
        if seq <= self.floor {
            // A redriven event below the floor: done again.
            self.requeued.remove(&seq);
            ops.push(Op::Delete(Space::Requeue, self.key_of(seq)));
        } else if seq == self.floor + 1 {
            // In order: the floor moves, no `done` entry needed.
            self.floor = seq;
        } else {
            self.done.insert(seq);
            ops.push(Op::Put(Space::Done, self.key_of(seq), Vec::new()));
        }
        while self.done.remove(&(self.floor + 1)) {
            self.floor += 1;
            ops.push(Op::Delete(Space::Done, self.key_of(self.floor)));
        }
        if self.floor != floor_before {
            ops.push(Op::Put(
                Space::Floor,
                store::group_prefix(&self.topic, &self.name),
                self.floor.to_be_bytes().to_vec(),
            ));
        }
        // Ordered: the next held event of this key may go.
        if self.config.ordered
            && let Some(k) = key
            && self.busy.get(k) == Some(&seq)
        {
            self.busy.remove(k);
            let next = self.held.get_mut(k).and_then(VecDeque::pop_front);
            if self.held.get(k).is_some_and(VecDeque::is_empty) {
                self.held.remove(k);
            }
            if let Some(next) = next {
                let history = self.failures.remove(&next).unwrap_or_default();
                self.busy.insert(k.to_owned(), next);
                self.waiting.insert(
                    next,
                    Waiting {
                        due: Instant::now(),
                        key: Some(k.to_owned()),
                        history,
                    },
                );
            }
        }
    }

    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Where the group stands below `committed`: (pending, in flight).
    pub(crate) fn standing(&self, committed: u64) -> (u64, u64) {
        let done = u64::try_from(self.done.range(..=committed).count()).unwrap_or(u64::MAX);
        let requeued = u64::try_from(self.requeued.len()).unwrap_or(u64::MAX);
        let pending = committed.saturating_sub(self.floor).saturating_sub(done) + requeued;
        (
            pending,
            u64::try_from(self.inflight.len()).unwrap_or(u64::MAX),
        )
    }

    /// Puts a dead-lettered event back into the group's work (R7), with a fresh attempt count.
    /// The DLQ entry's removal and the event's return are one write.
    pub(crate) fn redrive(&mut self, seq: u64, key: Option<String>) -> Vec<Op> {
        let mut ops = vec![
            Op::Delete(Space::Dlq, self.key_of(seq)),
            Op::Delete(Space::Attempt, self.key_of(seq)),
        ];
        if seq <= self.floor {
            self.requeued.insert(seq);
            ops.push(Op::Put(Space::Requeue, self.key_of(seq), Vec::new()));
        } else {
            self.done.remove(&seq);
            ops.push(Op::Delete(Space::Done, self.key_of(seq)));
        }
        self.failures.remove(&seq);
        if self.config.ordered
            && let Some(k) = &key
            && self.busy.get(k).is_some_and(|s| *s != seq)
        {
            // Behind the key's current event, in sequence order.
            let queue = self.held.entry(k.clone()).or_default();
            let at = queue.partition_point(|s| *s < seq);
            queue.insert(at, seq);
        } else {
            if self.config.ordered
                && let Some(k) = &key
            {
                self.busy.insert(k.clone(), seq);
            }
            self.waiting.insert(
                seq,
                Waiting {
                    due: Instant::now(),
                    key,
                    history: History::new(),
                },
            );
        }
        ops
    }

    /// Moves the group to just after `floor` (L1): every later event is pending again and every
    /// lease is lost. The caller also deletes the group's `done`, `attempt` and `requeue` entries.
    pub(crate) fn reset(&mut self, floor: u64) -> Vec<Op> {
        let (topic, name) = (
            std::mem::take(&mut self.topic),
            std::mem::take(&mut self.name),
        );
        *self = GroupState::new(
            topic,
            name,
            self.config.clone(),
            Recovered {
                floor,
                ..Recovered::default()
            },
        );
        let key = store::group_prefix(&self.topic, &self.name);
        vec![
            Op::Put(
                Space::Group,
                key.clone(),
                store::encode_group(&self.config, floor),
            ),
            Op::Put(Space::Floor, key, floor.to_be_bytes().to_vec()),
        ]
    }
}
