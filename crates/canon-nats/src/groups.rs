//! Consumer groups as durable pull consumers.
//!
//! A group is a durable pull consumer of its topic's events (and of the copies redriven to it),
//! with `AckWait` = the lease and `MaxAckPending` = the in-flight limit. JetStream keeps the
//! group's position, its pending deliveries and their delivery counts, so several processes
//! pulling from one group share its work with no coordination of their own. On top of that:
//!
//! - **Attempts.** JetStream's delivery count is the attempt number, less the deliveries Canon
//!   gave back unseen (`holds`: an event whose time has not come). A failed attempt is recorded
//!   in the topic's state bucket before the `-NAK`, so the next delivery knows its history; a
//!   delivery count above the recorded attempts means leases expired in between, recorded as
//!   `lease-expired` (R3, R5). After the last attempt the event goes to the DLQ instead (R2).
//! - **Leases.** The process that handed out a lease remembers it (`Leases`), so it answers
//!   `lease-lost` for a lease that expired or was handed out again (C3, C4): JetStream itself
//!   would apply a late ack to the newer delivery. `extend` is `+WPI`; a lease extended past
//!   `AckWait` is kept alive by `+WPI`s until its end (`keep_alive`). A token this process did
//!   not hand out (another process's, or from before a restart) is applied as JetStream applies
//!   it.
//! - **Order** (ordered groups, O1, O2). An event is delivered only when it is the first event
//!   of its key's subject after the last one the group finished (`o.` entries of the state
//!   bucket, and the consumer's ack floor): else it is held in this process, its JetStream lease
//!   kept alive, until its key's previous event is done. Held events count against the group's
//!   in-flight limit, since JetStream counts them pending.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use async_nats::Message;
use canon_backend::{
    AttemptRecord, BackendError, DeadLetterReason, Delivery, GroupConfig, GroupInfo, LeaseToken,
    StoredEvent, codec,
};
use canon_envelope::CloudEvent;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::js::code;
use crate::names::consumer as consumer_name;
use crate::publish::{KEY_HEADER, SEQ_HEADER, decode_key};
use crate::state::{self, Attempts};
use crate::{Inner, NatsBackend, Topic, dlq, lock, nats_err};

/// A group as this process knows it.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) consumer: String,
    pub(crate) config: GroupConfig,
    /// Ordered groups: events held behind their key's earlier event, by key token.
    held: Mutex<HashMap<String, VecDeque<Held>>>,
    /// The leases this process handed out, by stream sequence.
    leases: Mutex<HashMap<u64, Lease>>,
}

#[derive(Debug)]
struct Held {
    msg: Message,
    /// When its key was last looked at.
    checked: Instant,
}

/// Reply subjects to keep alive with `+WPI`: held events and leases extended past `AckWait`.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    /// Reply subject → (next due, until, interval).
    keep: Mutex<HashMap<String, (Instant, Instant, Duration)>>,
}

#[derive(Debug, Clone)]
struct Lease {
    /// The delivery's consumer sequence: the token's handle.
    handle: u64,
    reply: String,
    until: Instant,
    consumer: String,
    attempts: Attempts,
    key_token: Option<String>,
    /// A redriven copy: deleted from the stream once done.
    copy: bool,
    /// Kept alive by the keep-alive task (extended past `AckWait`).
    kept: bool,
}

/// What a reply subject says about a delivery.
struct AckInfo {
    delivered: u64,
    stream_seq: u64,
    consumer_seq: u64,
    /// When the message was stored.
    published: SystemTime,
}

/// Reads `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (and the v2
/// form with a domain and an account hash before the stream, and a token after the pending
/// count). Runs once per delivered message: no allocation.
fn ack_info(reply: &str) -> Option<AckInfo> {
    let mut t: [&str; 12] = [""; 12];
    let mut n = 0;
    for part in reply.split('.') {
        if n == t.len() {
            return None;
        }
        t[n] = part;
        n += 1;
    }
    let at = match n {
        9 => 4,
        11 | 12 => 6,
        _ => return None,
    };
    let ns: u64 = t[at + 3].parse().ok()?;
    Some(AckInfo {
        delivered: t[at].parse().ok()?,
        stream_seq: t[at + 1].parse().ok()?,
        consumer_seq: t[at + 2].parse().ok()?,
        published: SystemTime::UNIX_EPOCH + Duration::from_nanos(ns),
    })
}

fn unknown_group(t: &Topic, group: &str) -> BackendError {
    BackendError::UnknownGroup {
        topic: t.names.topic.clone(),
        group: group.to_owned(),
    }
}

fn config_of(consumer: &Value) -> Option<GroupConfig> {
    let text = consumer
        .pointer("/config/metadata/canon.config")?
        .as_str()?;
    codec::group_config_from_json(&serde_json::from_str(text).ok()?)
}

pub(crate) async fn create(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
    config: GroupConfig,
) -> Result<(), BackendError> {
    if config.max_in_flight == 0 || config.retry.max_attempts == 0 || config.lease.is_zero() {
        return Err(BackendError::InvalidConfig(
            "max_in_flight, max_attempts and lease must be positive".into(),
        ));
    }
    let name = consumer_name(group);
    let body = json!({
        "stream_name": t.names.stream,
        "config": {
            "durable_name": name,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": u64::try_from(config.lease.as_nanos()).unwrap_or(u64::MAX),
            "max_deliver": -1,
            "max_ack_pending": i64::try_from(config.max_in_flight).unwrap_or(i64::MAX),
            "filter_subjects": [t.names.events(), t.names.redrive_filter(group)],
            "metadata": {
                "canon.group": group,
                "canon.config": codec::group_config_json(&config).to_string(),
            },
        },
    });
    b.js()
        .api(&format!("CONSUMER.CREATE.{}.{name}", t.names.stream), &body)
        .await?;
    let fresh = Arc::new(Group {
        name: group.to_owned(),
        consumer: name,
        config,
        held: Mutex::new(HashMap::new()),
        leases: Mutex::new(HashMap::new()),
    });
    t.groups
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(group.to_owned(), fresh);
    Ok(())
}

/// The group, from this process's cache or from its consumer.
pub(crate) async fn get(
    b: &NatsBackend,
    t: &Topic,
    group: &str,
) -> Result<Arc<Group>, BackendError> {
    if let Some(g) = cached(t, group) {
        return Ok(g);
    }
    let name = consumer_name(group);
    let info = match b
        .js()
        .api(
            &format!("CONSUMER.INFO.{}.{name}", t.names.stream),
            &json!({}),
        )
        .await
    {
        Ok(v) => v,
        Err(e) if e.code() == Some(code::CONSUMER_NOT_FOUND) => {
            return Err(unknown_group(t, group));
        }
        Err(e) => return Err(e.into()),
    };
    let config = config_of(&info).ok_or_else(|| unknown_group(t, group))?;
    let g = Arc::new(Group {
        name: group.to_owned(),
        consumer: name,
        config,
        held: Mutex::new(HashMap::new()),
        leases: Mutex::new(HashMap::new()),
    });
    let mut groups = t
        .groups
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(Arc::clone(groups.entry(group.to_owned()).or_insert(g)))
}

/// One pull request's answer, read message by message, so that each is admitted while the
/// rest are still arriving.
struct Fetch {
    sub: async_nats::Subscriber,
    /// One timer for the whole answer, not one per message.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    left: usize,
    done: bool,
    deleted: bool,
    got: usize,
}

impl Fetch {
    /// Asks for up to `max` messages, now (`wait` zero) or waiting up to `wait` for them.
    async fn start(
        b: &NatsBackend,
        t: &Topic,
        g: &Group,
        max: usize,
        wait: Duration,
    ) -> Result<Fetch, BackendError> {
        let client = &b.js().client;
        let inbox = client.new_inbox();
        let sub = client.subscribe(inbox.clone()).await.map_err(nats_err)?;
        let body = if wait.is_zero() {
            json!({"batch": max, "no_wait": true})
        } else {
            json!({"batch": max, "expires": u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)})
        };
        client
            .publish_with_reply(
                format!(
                    "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
                    t.names.stream, g.consumer
                ),
                inbox,
                body.to_string().into(),
            )
            .await
            .map_err(nats_err)?;
        let deadline = Instant::now() + wait + Duration::from_secs(2);
        Ok(Fetch {
            sub,
            deadline: Box::pin(tokio::time::sleep_until(deadline.into())),
            left: max,
            done: false,
            deleted: false,
            got: 0,
        })
    }

    /// The next message of the answer; `None` once it is complete, ended by a status (404 no
    /// messages, 408 the request expired, 409 a deleted consumer or a limit) or late.
    async fn next(&mut self) -> Option<Message> {
        if self.done || self.left == 0 {
            return None;
        }
        let m = tokio::select! {
            m = self.sub.next() => m,
            () = &mut self.deadline => None,
        };
        match m {
            Some(m) if m.status.is_none() => {
                self.left -= 1;
                self.got += 1;
                Some(m)
            }
            Some(m) => {
                self.deleted = m.status.is_some_and(|s| s.as_u16() == 409)
                    && m.description
                        .as_deref()
                        .is_some_and(|d| d.contains("Consumer Deleted"));
                self.done = true;
                None
            }
            None => {
                self.done = true;
                None
            }
        }
    }

    /// Ends the answer: how many messages it held, or the group's absence.
    async fn finish(mut self, t: &Topic, g: &Group) -> Result<usize, BackendError> {
        if self.deleted {
            return Err(unknown_group(t, &g.name));
        }
        let _ = self.sub.unsubscribe().await;
        Ok(self.got)
    }
}

/// Leases up to `max` events, waiting up to `wait` for the first (C9).
pub(crate) async fn pull(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    consumer: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, BackendError> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut looked = false;
    while out.len() < max {
        let started = Instant::now();
        let mut ack_floor = None;
        let held = release_held(b, t, g).await?;
        if !held.is_empty() {
            for m in held {
                if let Some(d) = admit(b, t, g, consumer, m, started, &mut ack_floor).await? {
                    out.push(d);
                }
            }
            continue;
        }
        // What JetStream has now, each message admitted as it arrives.
        let want = max - out.len();
        let f = Fetch::start(b, t, g, want, Duration::ZERO).await?;
        let got = admit_all(b, t, g, consumer, f, started, &mut ack_floor, &mut out).await?;
        // Fewer than asked for: asking again at once is pointless.
        let drained = got < want;
        if got == 0 {
            let now = Instant::now();
            if !out.is_empty() || (looked && now >= deadline) {
                break;
            }
            looked = true;
            if now >= deadline {
                continue;
            }
            // Wait for one, at most until the deadline (and briefly, in ordered groups, so that
            // held events are looked at again).
            let mut until = deadline - now;
            if g.config.ordered && has_held(g) {
                until = until.min(Duration::from_millis(50));
            }
            let f = Fetch::start(b, t, g, 1, until.max(Duration::from_millis(1))).await?;
            let started = Instant::now();
            if admit_all(b, t, g, consumer, f, started, &mut ack_floor, &mut out).await? == 0 {
                if Instant::now() >= deadline {
                    break;
                }
                continue;
            }
            if !out.is_empty() {
                break;
            }
            continue;
        }
        if drained && !out.is_empty() {
            break;
        }
    }
    Ok(out)
}

/// Admits a pull's messages as they arrive into `out`; how many the answer held.
#[allow(clippy::too_many_arguments, reason = "admit's inputs, passed through")]
async fn admit_all(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    consumer: &str,
    mut f: Fetch,
    fetched: Instant,
    ack_floor: &mut Option<u64>,
    out: &mut Vec<Delivery>,
) -> Result<usize, BackendError> {
    while let Some(m) = f.next().await {
        if let Some(d) = admit(b, t, g, consumer, m, fetched, ack_floor).await? {
            out.push(d);
        }
    }
    f.finish(t, g).await
}

fn has_held(g: &Group) -> bool {
    !lock(&g.held).is_empty()
}

/// The event a message carries, with its Canon sequence and ordering key.
fn event_of(m: &Message, seq: u64, published: SystemTime) -> Option<(StoredEvent, bool)> {
    let headers = m.headers.as_ref();
    let copy_of = headers
        .and_then(|h| h.get(SEQ_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    let ordering_key = headers
        .and_then(|h| h.get(KEY_HEADER))
        .map(|v| decode_key(v.as_str()));
    let event = CloudEvent::from_json(&m.payload).ok()?;
    Some((
        StoredEvent {
            seq: copy_of.unwrap_or(seq),
            published_at: published,
            ordering_key,
            event,
        },
        copy_of.is_some(),
    ))
}

/// Turns one delivered message into a Canon delivery, or settles it on the spot: a dead letter
/// after the last attempt (R2) or on expiry (T2), a hold until its time (T1) or its key's turn
/// (O1), or an ack of an event already done.
#[allow(
    clippy::too_many_lines,
    reason = "one decision per case, in the contract's order"
)]
async fn admit(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    consumer: &str,
    m: Message,
    fetched: Instant,
    ack_floor: &mut Option<u64>,
) -> Result<Option<Delivery>, BackendError> {
    let Some(reply) = m.reply.as_ref().map(ToString::to_string) else {
        return Ok(None);
    };
    let Some(info) = ack_info(&reply) else {
        return Ok(None);
    };
    let published = info.published;
    let Some((event, copy)) = event_of(&m, info.stream_seq, published) else {
        // Not a Canon event (written to the stream by something else): never deliverable.
        tracing::warn!(seq = info.stream_seq, topic = %t.names.topic, "not a CloudEvent; terminated");
        b.js().settle(&reply, "+TERM").await?;
        return Ok(None);
    };
    let sseq = info.stream_seq;
    // The key's subject token, for ordering; redriven copies are delivered out of order.
    let key_token = (!copy)
        .then(|| m.subject.as_str().rsplit('.').next().map(str::to_owned))
        .flatten()
        .filter(|k| k != "_");
    let mut attempts = if info.delivered > 1 {
        state::load(t, &g.name, sseq).await?
    } else {
        Attempts::default()
    };
    let previous = g.take_any(b, sseq);
    if attempts.dead {
        // A dead-lettering interrupted between its DLQ entry and the settle: finish it.
        let entry_reason = attempts
            .history
            .last()
            .map_or(DeadLetterReason::MaxAttempts, |a| {
                if a.outcome == "dead-letter" {
                    DeadLetterReason::Rejected
                } else {
                    DeadLetterReason::MaxAttempts
                }
            });
        let error = attempts.history.last().and_then(|a| a.error.clone());
        finish_dead(
            b,
            t,
            g,
            &reply,
            sseq,
            &event,
            entry_reason,
            error,
            attempts,
            key_token.as_deref(),
        )
        .await?;
        return Ok(None);
    }
    // Deliveries not accounted for by holds or recorded failures: expired leases (R3).
    let seen = 1 + u64::from(attempts.holds) + u64::try_from(attempts.history.len()).unwrap_or(0);
    let expired = info.delivered.saturating_sub(seen);
    for k in 0..expired {
        attempts.history.push(AttemptRecord {
            at: SystemTime::now(),
            consumer: if k + 1 == expired {
                previous
                    .as_ref()
                    .map_or_else(String::new, |l| l.consumer.clone())
            } else {
                String::new()
            },
            outcome: "lease-expired".into(),
            error: None,
        });
    }
    let attempt = u32::try_from(attempts.history.len())
        .unwrap_or(u32::MAX)
        .saturating_add(1);
    if attempt > g.config.retry.max_attempts.max(1) {
        finish_dead(
            b,
            t,
            g,
            &reply,
            sseq,
            &event,
            DeadLetterReason::MaxAttempts,
            Some("lease-expired".into()),
            attempts,
            key_token.as_deref(),
        )
        .await?;
        return Ok(None);
    }
    let wall = SystemTime::now();
    if event
        .event
        .expiration_time()
        .is_some_and(|x| SystemTime::from(x) <= wall)
    {
        finish_dead(
            b,
            t,
            g,
            &reply,
            sseq,
            &event,
            DeadLetterReason::Expired,
            Some("expired before delivery".into()),
            attempts,
            key_token.as_deref(),
        )
        .await?;
        return Ok(None);
    }
    if let Some(at) = event.event.not_before_time().map(SystemTime::from)
        && let Ok(wait) = at.duration_since(wall)
        && !wait.is_zero()
    {
        // Not yet: give it back for its time, and remember that this was no attempt (T1).
        attempts.holds += 1;
        state::save(t, &g.name, sseq, &attempts).await?;
        let delay = wait + Duration::from_millis(1);
        b.js()
            .settle_with(
                &reply,
                format!(
                    "-NAK {{\"delay\": {}}}",
                    u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)
                ),
            )
            .await?;
        return Ok(None);
    }
    if g.config.ordered
        && let Some(k) = &key_token
    {
        match turn(b, t, g, k, sseq, ack_floor).await? {
            Turn::Mine => {}
            Turn::Wait => {
                hold(b, g, k, m, &reply);
                return Ok(None);
            }
            Turn::Done => {
                b.js().settle(&reply, "+ACK").await?;
                return Ok(None);
            }
        }
    }
    let until = fetched + g.config.lease;
    let delivery = Delivery {
        token: LeaseToken {
            topic: t.names.topic.clone(),
            group: g.name.clone(),
            seq: sseq,
            handle: info.consumer_seq,
        },
        event,
        attempt,
        leased_until: wall + g.config.lease.saturating_sub(fetched.elapsed()),
    };
    lock(&g.leases).insert(
        sseq,
        Lease {
            handle: info.consumer_seq,
            reply,
            until,
            consumer: consumer.to_owned(),
            attempts,
            key_token,
            copy,
            kept: false,
        },
    );
    Ok(Some(delivery))
}

enum Turn {
    /// The first undone event of its key.
    Mine,
    /// An earlier event of its key is not done.
    Wait,
    /// Done already (its ack was recorded, JetStream's was lost).
    Done,
}

/// Whether the event at `seq` is its key's first event the group has not finished.
async fn turn(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    key_token: &str,
    seq: u64,
    ack_floor: &mut Option<u64>,
) -> Result<Turn, BackendError> {
    let floor = match ack_floor {
        Some(f) => *f,
        None => {
            let f = consumer_info(b, t, g)
                .await?
                .pointer("/ack_floor/stream_seq")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            *ack_floor = Some(f);
            f
        }
    };
    let done = state::done_through(t, &g.name, key_token).await?.max(floor);
    if seq <= done {
        return Ok(Turn::Done);
    }
    let subject = t.names.key_subject(key_token);
    let first = b.js().read(&t.names.stream, done + 1, &subject, 1).await?;
    Ok(match first.first().map(|m| m.seq) {
        Some(f) if f < seq => Turn::Wait,
        _ => Turn::Mine,
    })
}

fn hold(b: &NatsBackend, g: &Group, key_token: &str, msg: Message, reply: &str) {
    b.inner.leases.keep_alive(
        reply,
        Instant::now() + Duration::from_secs(3600 * 24 * 365),
        g.config.lease,
    );
    lock(&g.held)
        .entry(key_token.to_owned())
        .or_default()
        .push_back(Held {
            msg,
            checked: Instant::now(),
        });
}

/// Held events whose key's previous event is done now, to deliver. Looks at each key's first
/// held event at most every 50 ms.
async fn release_held(b: &NatsBackend, t: &Topic, g: &Group) -> Result<Vec<Message>, BackendError> {
    if !g.config.ordered {
        return Ok(Vec::new());
    }
    let due: Vec<(String, u64)> = {
        let held = lock(&g.held);
        held.iter()
            .filter_map(|(k, q)| {
                let front = q.front()?;
                if front.checked.elapsed() < Duration::from_millis(50) {
                    return None;
                }
                Some((k.clone(), ack_info(front.msg.reply.as_deref()?)?.stream_seq))
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut floor = None;
    for (k, seq) in due {
        let free = !matches!(turn(b, t, g, &k, seq, &mut floor).await?, Turn::Wait);
        let mut held = lock(&g.held);
        let Some(q) = held.get_mut(&k) else { continue };
        if free {
            if let Some(h) = q.pop_front() {
                if let Some(r) = h.msg.reply.as_deref() {
                    b.inner.leases.stop_keep_alive(r);
                }
                out.push(h.msg);
            }
        } else if let Some(front) = q.front_mut() {
            front.checked = Instant::now();
        }
        if q.is_empty() {
            held.remove(&k);
        }
    }
    Ok(out)
}

/// Makes the first held event of a key lookable at once (its key's event just finished here).
fn wake_key(g: &Group, key_token: &str) {
    if let Some(front) = lock(&g.held)
        .get_mut(key_token)
        .and_then(VecDeque::front_mut)
    {
        front.checked = Instant::now() - Duration::from_secs(1);
    }
}

async fn consumer_info(b: &NatsBackend, t: &Topic, g: &Group) -> Result<Value, BackendError> {
    match b
        .js()
        .api(
            &format!("CONSUMER.INFO.{}.{}", t.names.stream, g.consumer),
            &json!({}),
        )
        .await
    {
        Ok(v) => Ok(v),
        Err(e) if e.code() == Some(code::CONSUMER_NOT_FOUND) => Err(unknown_group(t, &g.name)),
        Err(e) => Err(e.into()),
    }
}

/// Moves a delivered event to the DLQ: marks it (so a redelivery after a crash finishes the
/// move instead of delivering it), writes the entry, then terminates the delivery.
#[allow(clippy::too_many_arguments, reason = "the entry's parts")]
async fn finish_dead(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    reply: &str,
    sseq: u64,
    event: &StoredEvent,
    reason: DeadLetterReason,
    error: Option<String>,
    mut attempts: Attempts,
    key_token: Option<&str>,
) -> Result<(), BackendError> {
    if !attempts.dead {
        attempts.dead = true;
        state::save(t, &g.name, sseq, &attempts).await?;
    }
    dlq::write(b, t, &g.name, sseq, event, reason, error, &attempts.history).await?;
    b.js().settle(reply, "+TERM").await?;
    state::clear(b, t, &g.name, sseq).await?;
    if g.config.ordered
        && let Some(k) = key_token
    {
        state::set_done(t, &g.name, k, sseq).await?;
        wake_key(g, k);
    }
    Ok(())
}

/// The token's lease if this process handed it out: `Ok(Some)` held, `Ok(None)` unknown here,
/// `Err(LeaseLost)` expired or handed out again.
fn held_lease(g: &Group, token: &LeaseToken) -> Result<Option<Lease>, BackendError> {
    let mut leases = lock(&g.leases);
    match leases.get(&token.seq) {
        None => Ok(None),
        Some(l) if l.handle == token.handle && l.until > Instant::now() => {
            Ok(leases.remove(&token.seq))
        }
        Some(_) => Err(BackendError::LeaseLost),
    }
}

/// A reply subject for a token this process did not hand out.
fn reply_for(t: &Topic, g: &Group, token: &LeaseToken) -> String {
    format!(
        "$JS.ACK.{}.{}.1.{}.{}.0.0",
        t.names.stream, g.consumer, token.seq, token.handle
    )
}

/// In an ordered group, the key token of a stored event whose lease this process did not hand
/// out (`None` for unordered groups, events without a key and redriven copies).
async fn unknown_key(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    seq: u64,
) -> Result<Option<String>, BackendError> {
    if !g.config.ordered {
        return Ok(None);
    }
    let events = t.names.event_prefix();
    Ok(b.js().get(&t.names.stream, seq).await?.and_then(|m| {
        m.subject
            .strip_prefix(&events)
            .filter(|k| *k != "_")
            .map(str::to_owned)
    }))
}

/// The reply subject of a lease whose ack is only JetStream's `+ACK`: handed out here, still
/// held, no recorded attempts, not a redriven copy, not kept alive, not ordered by key. Taken
/// out of the lease table; `None` leaves everything to [`ack`].
pub(crate) fn plain_ack(b: &NatsBackend, token: &LeaseToken) -> Option<String> {
    let t = b.cached_topic(&token.topic)?;
    let g = cached(&t, &token.group)?;
    let mut leases = lock(&g.leases);
    let l = leases.get(&token.seq)?;
    let plain = l.handle == token.handle
        && l.until > Instant::now()
        && l.attempts.is_empty()
        && !l.copy
        && !l.kept
        && (l.key_token.is_none() || !g.config.ordered);
    if !plain {
        return None;
    }
    leases.remove(&token.seq).map(|l| l.reply)
}

/// The group if this process has looked it up before.
fn cached(t: &Topic, group: &str) -> Option<Arc<Group>> {
    t.groups
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(group)
        .cloned()
}

pub(crate) async fn ack(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    token: &LeaseToken,
) -> Result<(), BackendError> {
    match held_lease(g, token)? {
        Some(lease) => {
            if g.config.ordered
                && !lease.copy
                && let Some(k) = &lease.key_token
            {
                state::set_done(t, &g.name, k, token.seq).await?;
            }
            if lease.kept {
                b.inner.leases.stop_keep_alive(&lease.reply);
            }
            b.js().settle(&lease.reply, "+ACK").await?;
            if !lease.attempts.is_empty() {
                state::clear(b, t, &g.name, token.seq).await?;
            }
            if lease.copy {
                delete_message(b, t, token.seq).await;
            }
            if let Some(k) = &lease.key_token {
                wake_key(g, k);
            }
        }
        None => {
            if let Some(k) = unknown_key(b, t, g, token.seq).await? {
                state::set_done(t, &g.name, &k, token.seq).await?;
            }
            b.js().settle(&reply_for(t, g, token), "+ACK").await?;
        }
    }
    Ok(())
}

async fn delete_message(b: &NatsBackend, t: &Topic, seq: u64) {
    let _ = b
        .js()
        .api(
            &format!("STREAM.MSG.DELETE.{}", t.names.stream),
            &json!({"seq": seq, "no_erase": true}),
        )
        .await;
}

pub(crate) async fn nack(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    token: &LeaseToken,
    delay: Option<Duration>,
    error: Option<String>,
) -> Result<(), BackendError> {
    let (reply, consumer, mut attempts, key) = match held_lease(g, token)? {
        Some(l) => {
            if l.kept {
                b.inner.leases.stop_keep_alive(&l.reply);
            }
            (l.reply, l.consumer, l.attempts, l.key_token)
        }
        None => (
            reply_for(t, g, token),
            String::new(),
            state::load(t, &g.name, token.seq).await?,
            unknown_key(b, t, g, token.seq).await?,
        ),
    };
    let attempt = u32::try_from(attempts.history.len() + 1).unwrap_or(u32::MAX);
    let delay = delay.unwrap_or_else(|| g.config.retry.delay(attempt));
    attempts.history.push(AttemptRecord {
        at: SystemTime::now(),
        consumer,
        outcome: "retry".into(),
        error: error.clone(),
    });
    if g.config.retry.is_last(attempt) {
        let event = stored_event(b, t, token.seq).await?;
        return finish_dead(
            b,
            t,
            g,
            &reply,
            token.seq,
            &event,
            DeadLetterReason::MaxAttempts,
            error.or_else(|| Some("retry".into())),
            attempts,
            key.as_deref(),
        )
        .await;
    }
    // The history first: the redelivery reads it.
    state::save(t, &g.name, token.seq, &attempts).await?;
    b.js()
        .settle_with(
            &reply,
            format!(
                "-NAK {{\"delay\": {}}}",
                u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX)
            ),
        )
        .await?;
    Ok(())
}

pub(crate) async fn reject(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    token: &LeaseToken,
    error: Option<String>,
) -> Result<(), BackendError> {
    let (reply, consumer, mut attempts, key) = match held_lease(g, token)? {
        Some(l) => {
            if l.kept {
                b.inner.leases.stop_keep_alive(&l.reply);
            }
            (l.reply, l.consumer, l.attempts, l.key_token)
        }
        None => (
            reply_for(t, g, token),
            String::new(),
            state::load(t, &g.name, token.seq).await?,
            unknown_key(b, t, g, token.seq).await?,
        ),
    };
    let event = stored_event(b, t, token.seq).await?;
    attempts.history.push(AttemptRecord {
        at: SystemTime::now(),
        consumer,
        outcome: "dead-letter".into(),
        error: error.clone(),
    });
    finish_dead(
        b,
        t,
        g,
        &reply,
        token.seq,
        &event,
        DeadLetterReason::Rejected,
        error,
        attempts,
        key.as_deref(),
    )
    .await
}

/// The event stored at a stream sequence (an event or a redriven copy).
async fn stored_event(b: &NatsBackend, t: &Topic, seq: u64) -> Result<StoredEvent, BackendError> {
    let m = b
        .js()
        .get(&t.names.stream, seq)
        .await?
        .ok_or(BackendError::LeaseLost)?;
    let copy_of = m
        .headers
        .get(SEQ_HEADER)
        .and_then(|v| v.as_str().parse::<u64>().ok());
    let event = CloudEvent::from_json(&m.payload)
        .map_err(|e| BackendError::storage(format!("event {seq} does not decode: {e}")))?;
    Ok(StoredEvent {
        seq: copy_of.unwrap_or(seq),
        published_at: m.time,
        ordering_key: m.headers.get(KEY_HEADER).map(|v| decode_key(v.as_str())),
        event,
    })
}

pub(crate) async fn extend(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    token: &LeaseToken,
    by: Duration,
) -> Result<(), BackendError> {
    match g.extend(token, by)? {
        Some(reply) => {
            b.js().settle(&reply, "+WPI").await?;
            if by > g.config.lease {
                b.inner
                    .leases
                    .keep_alive(&reply, Instant::now() + by, g.config.lease);
            }
        }
        None => b.js().settle(&reply_for(t, g, token), "+WPI").await?,
    }
    Ok(())
}

/// Moves the group to sequence `seq` (L1): JetStream's `CONSUMER.RESET` drops its pending
/// deliveries; Canon forgets its leases, holds and attempt histories of the group.
pub(crate) async fn reset(
    b: &NatsBackend,
    t: &Topic,
    g: &Group,
    seq: u64,
) -> Result<(), BackendError> {
    b.js()
        .api(
            &format!("CONSUMER.RESET.{}.{}", t.names.stream, g.consumer),
            &json!({ "seq": seq.max(1) }),
        )
        .await?;
    forget(b, t, g).await
}

async fn forget(b: &NatsBackend, t: &Topic, g: &Group) -> Result<(), BackendError> {
    let gone: Vec<Lease> = lock(&g.leases).drain().map(|(_, l)| l).collect();
    for l in gone.iter().filter(|l| l.kept) {
        b.inner.leases.stop_keep_alive(&l.reply);
    }
    let held: Vec<Held> = lock(&g.held).drain().flat_map(|(_, q)| q).collect();
    for h in held {
        if let Some(r) = h.msg.reply.as_deref() {
            b.inner.leases.stop_keep_alive(r);
        }
    }
    state::forget_group(b, t, &g.name).await
}

pub(crate) async fn list(b: &NatsBackend, t: &Topic) -> Result<Vec<String>, BackendError> {
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let page = b
            .js()
            .api(
                &format!("CONSUMER.LIST.{}", t.names.stream),
                &json!({ "offset": offset }),
            )
            .await?;
        let consumers = page
            .get("consumers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if consumers.is_empty() {
            break;
        }
        offset += consumers.len();
        names.extend(consumers.iter().filter_map(|c| {
            c.pointer("/config/metadata/canon.group")
                .and_then(Value::as_str)
                .map(str::to_owned)
        }));
        let total = page.get("total").and_then(Value::as_u64).unwrap_or(0);
        if u64::try_from(offset).unwrap_or(u64::MAX) >= total {
            break;
        }
    }
    names.sort();
    Ok(names)
}

pub(crate) async fn info(b: &NatsBackend, t: &Topic, g: &Group) -> Result<GroupInfo, BackendError> {
    let c = consumer_info(b, t, g).await?;
    let n = |p: &str| c.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let ack_pending = n("/num_ack_pending");
    Ok(GroupInfo {
        config: g.config.clone(),
        acked_through: n("/ack_floor/stream_seq"),
        pending: n("/num_pending") + ack_pending,
        in_flight: ack_pending,
        dead_letters: dlq::count(b, t, &g.name).await?,
    })
}

pub(crate) async fn delete(b: &NatsBackend, t: &Topic, g: &Group) -> Result<(), BackendError> {
    b.js()
        .api(
            &format!("CONSUMER.DELETE.{}.{}", t.names.stream, g.consumer),
            &json!({}),
        )
        .await?;
    t.groups
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&g.name);
    dlq::purge_group(b, t, &g.name).await?;
    forget(b, t, g).await
}

impl Group {
    /// Removes and returns whatever lease this process had on the event (an expired one, when
    /// the event is delivered again).
    fn take_any(&self, b: &NatsBackend, seq: u64) -> Option<Lease> {
        let lease = lock(&self.leases).remove(&seq)?;
        if lease.kept {
            b.inner.leases.stop_keep_alive(&lease.reply);
        }
        Some(lease)
    }

    /// Extends a lease held here: its reply subject; `None` if unknown here.
    fn extend(&self, token: &LeaseToken, by: Duration) -> Result<Option<String>, BackendError> {
        let mut leases = lock(&self.leases);
        match leases.get_mut(&token.seq) {
            None => Ok(None),
            Some(l) if l.handle == token.handle && l.until > Instant::now() => {
                l.until = Instant::now() + by;
                l.kept = true;
                Ok(Some(l.reply.clone()))
            }
            Some(_) => Err(BackendError::LeaseLost),
        }
    }
}

impl Leases {
    /// Sends `+WPI` for `reply` every third of `lease` until `until`.
    fn keep_alive(&self, reply: &str, until: Instant, lease: Duration) {
        let every = (lease / 3).max(Duration::from_millis(20));
        lock(&self.keep).insert(reply.to_owned(), (Instant::now() + every, until, every));
    }

    fn stop_keep_alive(&self, reply: &str) {
        lock(&self.keep).remove(reply);
    }
}

/// The keep-alive task: `+WPI` for held events and for leases extended past `AckWait`. Ends
/// with the backend.
pub(crate) async fn keep_alive(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let due: Vec<String> = {
            let mut keep = lock(&inner.leases.keep);
            keep.retain(|_, (_, until, _)| *until > now);
            keep.iter_mut()
                .filter(|(_, (next, _, _))| *next <= now)
                .map(|(r, (next, _, every))| {
                    *next = now + *every;
                    r.clone()
                })
                .collect()
        };
        for r in due {
            let _ = inner.js.client.publish(r, "+WPI".into()).await;
        }
    }
}
