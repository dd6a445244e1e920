//! Publishing: one writer task per topic gathers the publishes queued meanwhile into one
//! transaction (group commit), so throughput does not fall to one commit per publish.
//!
//! The transaction locks the topic's row first. That serialises writers of a topic across
//! processes, so sequences are handed out in commit order: a consumer that has read up to
//! sequence n never sees a sequence below n appear later. Within the transaction each batch is
//! planned like the embedded backend plans it (dedup by (`source`, `id`) and by idempotency key
//! within the window, expected-sequence conflicts, sequences), every batch seeing the writes of
//! the batches before it. A batch with a conflict is refused whole and writes nothing (P7); if
//! the commit fails, every batch of it fails and nothing is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use canon_backend::{BackendError, PublishOutcome, PublishRequest};
use tokio::sync::{mpsc, oneshot};

use crate::wake::Wakers;
use crate::{Db, db_err, seq_i64, seq_u64};

/// At most this many events go into one transaction.
const MAX_EVENTS: usize = 4096;

/// One event, with everything the transaction writes computed before it is queued.
struct Prepared {
    json: Vec<u8>,
    id: String,
    source: String,
    ty: String,
    correlation: Option<String>,
    causation: Option<String>,
    key: Option<String>,
    idempotency: Option<String>,
    expected: Option<u64>,
}

impl Prepared {
    fn new(r: PublishRequest) -> Prepared {
        let e = r.event;
        Prepared {
            json: e.to_json(),
            correlation: e.correlation_id().map(str::to_owned),
            causation: e.causation_id().map(str::to_owned),
            id: e.id,
            source: e.source,
            ty: e.ty,
            key: r.ordering_key,
            idempotency: r.idempotency_key,
            expected: r.expected_sequence,
        }
    }

    /// The dedup keys (kind, a, b) of this event.
    fn dedup_keys(&self) -> impl Iterator<Item = (&'static str, &str, &str)> {
        std::iter::once(("i", self.source.as_str(), self.id.as_str()))
            .chain(self.idempotency.as_deref().map(|k| ("k", k, "")))
    }
}

type Reply = oneshot::Sender<Result<Vec<PublishOutcome>, BackendError>>;

struct Job {
    batch: Vec<Prepared>,
    reply: Reply,
}

/// The writer task of every topic this process has published to.
pub(crate) struct Writers {
    db: Db,
    wakers: Arc<Wakers>,
    queues: Mutex<HashMap<String, mpsc::Sender<Job>>>,
}

impl Writers {
    pub(crate) fn new(db: Db, wakers: Arc<Wakers>) -> Writers {
        Writers {
            db,
            wakers,
            queues: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn publish(
        &self,
        topic: &str,
        batch: Vec<PublishRequest>,
    ) -> Result<Vec<PublishOutcome>, BackendError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch: Vec<Prepared> = batch.into_iter().map(Prepared::new).collect();
        let (reply, answer) = oneshot::channel();
        let queue = self.queue(topic);
        queue
            .send(Job { batch, reply })
            .await
            .map_err(|_| BackendError::storage("the topic's writer stopped"))?;
        answer
            .await
            .map_err(|_| BackendError::storage("the topic's writer stopped"))?
    }

    fn queue(&self, topic: &str) -> mpsc::Sender<Job> {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        queues
            .entry(topic.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(1024);
                tokio::spawn(write(
                    self.db.clone(),
                    Arc::clone(&self.wakers),
                    topic.to_owned(),
                    rx,
                ));
                tx
            })
            .clone()
    }
}

/// The writer of one topic: takes everything queued, commits it as one transaction, answers.
/// Ends when the backend (every sender) is gone.
async fn write(db: Db, wakers: Arc<Wakers>, topic: String, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut events = first.batch.len();
        let mut jobs = vec![first];
        while events < MAX_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    events += job.batch.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let batches: Vec<&[Prepared]> = jobs.iter().map(|j| j.batch.as_slice()).collect();
        match commit(&db, &topic, &batches).await {
            Ok(answers) => {
                wakers.wake(&topic);
                for (job, answer) in jobs.into_iter().zip(answers) {
                    let _ = job.reply.send(answer);
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// What one commit writes.
#[derive(Default)]
struct Writes {
    seqs: Vec<i64>,
    keys: Vec<Option<String>>,
    ids: Vec<String>,
    types: Vec<String>,
    correlations: Vec<Option<String>>,
    causations: Vec<Option<String>>,
    sizes: Vec<i32>,
    events: Vec<Vec<u8>>,
    dedup: Vec<(&'static str, String, String, i64)>,
    aggregates: HashMap<String, i64>,
    bytes: i64,
}

/// Plans and writes `batches` in one transaction. The outer error fails every batch (nothing
/// was stored); an inner one refuses that batch only.
async fn commit(
    db: &Db,
    topic: &str,
    batches: &[&[Prepared]],
) -> Result<Vec<Result<Vec<PublishOutcome>, BackendError>>, BackendError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(db_err)?;
    // Every dedup key and every aggregate with an expectation, looked up at once.
    let (mut kinds, mut firsts, mut seconds) = (Vec::new(), Vec::new(), Vec::new());
    let mut expecting = Vec::new();
    for p in batches.iter().flat_map(|b| b.iter()) {
        for (k, a, b) in p.dedup_keys() {
            kinds.push(k);
            firsts.push(a);
            seconds.push(b);
        }
        if p.expected.is_some()
            && let Some(k) = &p.key
        {
            expecting.push(k.as_str());
        }
    }
    let lock = tx
        .prepare_cached(
            &db.sql("SELECT last_seq, max_bytes, bytes FROM {s}.topics WHERE name = $1 FOR UPDATE"),
        )
        .await
        .map_err(db_err)?;
    // One dedup entry per key at most (its primary key): one index lookup per key. `LIMIT 1`
    // keeps the planner from flattening the lookups into a join that scans the table, which
    // it picks when its statistics lag behind a fast-growing table.
    let dedup_stmt = tx
        .prepare_cached(&db.sql(
            "SELECT k.kind, k.a, k.b, d.seq
             FROM unnest($2::text[], $3::text[], $4::text[]) AS k(kind, a, b)
             JOIN LATERAL (SELECT seq, stored_at FROM {s}.dedup
                           WHERE topic = $1 AND kind = k.kind AND a = k.a AND b = k.b
                           LIMIT 1) d ON true
             WHERE d.stored_at > now() - (SELECT dedup_window_ms FROM {s}.topics
                                          WHERE name = $1) * interval '1 millisecond'",
        ))
        .await
        .map_err(db_err)?;
    let current_stmt = tx
        .prepare_cached(
            &db.sql("SELECT key, last_seq FROM {s}.aggregates WHERE topic = $1 AND key = ANY($2)"),
        )
        .await
        .map_err(db_err)?;
    // The lock first, the lookups behind it in the same round trip (they run in this order).
    let (row, dedup_rows, current_rows) = futures_util::future::try_join3(
        tx.query_opt(&lock, &[&topic]),
        tx.query(&dedup_stmt, &[&topic, &kinds, &firsts, &seconds]),
        async {
            if expecting.is_empty() {
                Ok(Vec::new())
            } else {
                tx.query(&current_stmt, &[&topic, &expecting]).await
            }
        },
    )
    .await
    .map_err(db_err)?;
    let Some(row) = row else {
        return Err(BackendError::UnknownTopic(topic.to_owned()));
    };
    let (last, max_bytes, bytes): (i64, Option<i64>, i64) = (row.get(0), row.get(1), row.get(2));
    let mut seen: HashMap<(String, String, String), i64> = dedup_rows
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect();
    let mut current: HashMap<String, i64> =
        current_rows.iter().map(|r| (r.get(0), r.get(1))).collect();

    let mut next = last + 1;
    let mut writes = Writes::default();
    let mut answers = Vec::with_capacity(batches.len());
    for batch in batches {
        match plan(batch, &mut next, &mut seen, &mut current, &mut writes) {
            Ok(outcomes) => answers.push(Ok(outcomes)),
            Err(e) => answers.push(Err(e)),
        }
    }
    if !writes.seqs.is_empty() {
        let mut bytes_after = bytes + writes.bytes;
        let mut written = false;
        if let Some(max) = max_bytes
            && bytes_after > max
        {
            // Over its size: the oldest events go, counting the new ones.
            insert(db, &tx, topic, &writes).await?;
            written = true;
            bytes_after -= crate::maintain::trim_to_size(db, &tx, topic, bytes_after, max).await?;
        }
        let update = tx
            .prepare_cached(
                &db.sql("UPDATE {s}.topics SET last_seq = $2, bytes = $3 WHERE name = $1"),
            )
            .await
            .map_err(db_err)?;
        let notify = tx
            .prepare_cached("SELECT pg_notify($1, $2)")
            .await
            .map_err(db_err)?;
        let last_seq = next - 1;
        let channel: &str = &db.channel;
        let update_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&topic, &last_seq, &bytes_after];
        let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&channel, &topic];
        // The writes, the topic's row and the notification in one round trip.
        futures_util::future::try_join3(
            async {
                if written {
                    Ok(())
                } else {
                    insert(db, &tx, topic, &writes).await
                }
            },
            async { tx.execute(&update, &update_params).await.map_err(db_err) },
            async { tx.execute(&notify, &notify_params).await.map_err(db_err) },
        )
        .await?;
    }
    tx.commit().await.map_err(db_err)?;
    Ok(answers)
}

/// Plans one batch: its outcomes, its writes appended to `writes`. On a conflict nothing of the
/// batch is written and the later batches see none of it.
fn plan(
    batch: &[Prepared],
    next: &mut i64,
    seen: &mut HashMap<(String, String, String), i64>,
    current: &mut HashMap<String, i64>,
    writes: &mut Writes,
) -> Result<Vec<PublishOutcome>, BackendError> {
    // First decide, then write: a conflict anywhere refuses the whole batch (P7).
    let mut local_seen: HashMap<(String, String, String), i64> = HashMap::new();
    let mut local_current: HashMap<String, i64> = HashMap::new();
    let mut seq = *next;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stored = Vec::new();
    let lookup = |local: &HashMap<(String, String, String), i64>, k: (&str, &str, &str)| {
        let k = (k.0.to_owned(), k.1.to_owned(), k.2.to_owned());
        local.get(&k).or_else(|| seen.get(&k)).copied()
    };
    for p in batch {
        if let Some(original) = p.dedup_keys().find_map(|k| lookup(&local_seen, k)) {
            outcomes.push(PublishOutcome::Duplicate {
                seq: seq_u64(original),
            });
            continue;
        }
        if let Some(expected) = p.expected {
            let Some(key) = &p.key else {
                return Err(BackendError::ExpectedSequenceWithoutKey);
            };
            let now = local_current
                .get(key)
                .or_else(|| current.get(key))
                .copied()
                .unwrap_or(0);
            if now != seq_i64(expected) {
                return Err(BackendError::Conflict {
                    key: key.clone(),
                    expected,
                    current: seq_u64(now),
                });
            }
        }
        for (k, a, b) in p.dedup_keys() {
            local_seen.insert((k.to_owned(), a.to_owned(), b.to_owned()), seq);
        }
        if let Some(k) = &p.key {
            local_current.insert(k.clone(), seq);
        }
        outcomes.push(PublishOutcome::Stored { seq: seq_u64(seq) });
        stored.push((seq, p));
        seq += 1;
    }
    *next = seq;
    for ((kind, a, b), s) in local_seen {
        writes
            .dedup
            .push((if kind == "i" { "i" } else { "k" }, a.clone(), b.clone(), s));
        seen.insert((kind, a, b), s);
    }
    for (k, s) in local_current {
        writes.aggregates.insert(k.clone(), s);
        current.insert(k, s);
    }
    for (s, p) in stored {
        let size = i32::try_from(p.json.len()).unwrap_or(i32::MAX);
        writes.seqs.push(s);
        writes.keys.push(p.key.clone());
        writes.ids.push(p.id.clone());
        writes.types.push(p.ty.clone());
        writes.correlations.push(p.correlation.clone());
        writes.causations.push(p.causation.clone());
        writes.sizes.push(size);
        writes.events.push(p.json.clone());
        writes.bytes += i64::from(size);
    }
    Ok(outcomes)
}

/// Writes the events, their dedup entries and the aggregates' last sequences, pipelined.
async fn insert(
    db: &Db,
    tx: &deadpool_postgres::Transaction<'_>,
    topic: &str,
    w: &Writes,
) -> Result<(), BackendError> {
    let events = tx
        .prepare_cached(&db.sql(
            "INSERT INTO {s}.events
               (topic, seq, stored_at, ordering_key, id, type, correlation_id, causation_id,
                size, event)
             SELECT $1, u.seq, now(), u.k, u.id, u.ty, u.corr, u.cause, u.size, u.ev
             FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                         $8::int4[], $9::bytea[]) AS u(seq, k, id, ty, corr, cause, size, ev)",
        ))
        .await
        .map_err(db_err)?;
    let dedup = tx
        .prepare_cached(&db.sql(
            "INSERT INTO {s}.dedup (topic, kind, a, b, seq, stored_at)
             SELECT $1, u.kind, u.a, u.b, u.seq, now()
             FROM unnest($2::text[], $3::text[], $4::text[], $5::int8[]) AS u(kind, a, b, seq)
             ON CONFLICT (topic, kind, a, b)
             DO UPDATE SET seq = excluded.seq, stored_at = excluded.stored_at",
        ))
        .await
        .map_err(db_err)?;
    let aggregates = tx
        .prepare_cached(&db.sql(
            "INSERT INTO {s}.aggregates (topic, key, last_seq)
             SELECT $1, u.key, u.seq FROM unnest($2::text[], $3::int8[]) AS u(key, seq)
             ON CONFLICT (topic, key) DO UPDATE SET last_seq = excluded.last_seq",
        ))
        .await
        .map_err(db_err)?;
    let kinds: Vec<&str> = w.dedup.iter().map(|d| d.0).collect();
    let firsts: Vec<&str> = w.dedup.iter().map(|d| d.1.as_str()).collect();
    let seconds: Vec<&str> = w.dedup.iter().map(|d| d.2.as_str()).collect();
    let dedup_seqs: Vec<i64> = w.dedup.iter().map(|d| d.3).collect();
    let agg_keys: Vec<&str> = w.aggregates.keys().map(String::as_str).collect();
    let agg_seqs: Vec<i64> = w.aggregates.values().copied().collect();
    let event_params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
        &topic,
        &w.seqs,
        &w.keys,
        &w.ids,
        &w.types,
        &w.correlations,
        &w.causations,
        &w.sizes,
        &w.events,
    ];
    let dedup_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&topic, &kinds, &firsts, &seconds, &dedup_seqs];
    let write_events = tx.execute(&events, &event_params);
    let write_dedup = tx.execute(&dedup, &dedup_params);
    let write_aggregates = async {
        if agg_keys.is_empty() {
            Ok(0)
        } else {
            tx.execute(&aggregates, &[&topic, &agg_keys, &agg_seqs])
                .await
        }
    };
    futures_util::future::try_join3(write_events, write_dedup, write_aggregates)
        .await
        .map_err(db_err)?;
    Ok(())
}
