//! The Jobs API (`/v1.0-alpha1/jobs/{name}`, `/v1.0/jobs/{name}`) and its scheduler.
//!
//! Jobs are kept in the backend's key-value bucket `canon.jobs` (key `<app>/<name>`), so they
//! survive restarts, and in memory in a map ordered by due time, so the scheduler finds the
//! next due job without scanning (100,000 jobs cost a log-time lookup per tick). A tick is
//! persisted as done *before* the app is called: a crash in between loses that tick rather
//! than firing it twice (at most once per tick across restarts). Ticks that passed while the
//! server was down are coalesced: the job fires once on start-up and the skipped ticks are
//! counted in `canon_job_ticks_total{outcome="missed"}`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use canon_backend::{Backend, BackendError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;

use canon_dapr::schedule::{Schedule, go_duration, point_in_time};

use super::{DaprError, caller};
use crate::metrics::OutcomeLabel;
use crate::{App, Shared};

const BUCKET: &str = "canon.jobs";

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Job {
    name: String,
    app: String,
    schedule: Option<String>,
    due_time: Option<String>,
    repeats: Option<u32>,
    ttl: Option<String>,
    data: Option<Value>,
    failure_policy: Option<Value>,
    /// When it was created, ms since the epoch.
    created_ms: i64,
    /// Its next tick, ms since the epoch; `None` when it has no more.
    next_ms: Option<i64>,
    /// When it expires (ttl), ms since the epoch.
    expires_ms: Option<i64>,
    /// Ticks fired so far.
    fired: u32,
    /// The stored record's revision: a tick is stored only over it, so of several servers on
    /// one backend exactly one fires each tick.
    #[serde(skip)]
    revision: u64,
}

/// Jobs by key and by due time.
#[derive(Default)]
pub(crate) struct Scheduler {
    state: Mutex<SchedulerState>,
    wake: Notify,
    /// Held across a job's storage write and memory update (create, delete, a tick), so that
    /// the stored copy and the in-memory copy never disagree: an overwrite and a tick of the
    /// same job cannot interleave.
    writes: tokio::sync::Mutex<()>,
    /// The live version of each job (its `created_ms`): retries of a tick stop once the job
    /// is deleted or overwritten.
    generations: Mutex<HashMap<String, i64>>,
}

impl Scheduler {
    fn generation(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scheduler")
    }
}

#[derive(Default)]
struct SchedulerState {
    jobs: HashMap<String, Job>,
    due: BTreeSet<(i64, String)>,
}

impl SchedulerState {
    fn put(&mut self, key: String, job: Job) {
        self.remove(&key);
        if let Some(at) = job.next_ms {
            self.due.insert((at, key.clone()));
        }
        self.jobs.insert(key, job);
    }

    fn remove(&mut self, key: &str) -> Option<Job> {
        let old = self.jobs.remove(key)?;
        if let Some(at) = old.next_ms {
            self.due.remove(&(at, key.to_owned()));
        }
        Some(old)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn key(app: &str, name: &str) -> String {
    format!("{app}/{name}")
}

/// The job request body (camelCase, with Dapr's snake_case aliases).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JobRequest {
    name: Option<Value>,
    schedule: Option<String>,
    #[serde(alias = "due_time")]
    due_time: Option<String>,
    repeats: Option<u32>,
    ttl: Option<String>,
    data: Option<Value>,
    #[serde(default)]
    overwrite: bool,
    #[serde(alias = "failure_policy")]
    failure_policy: Option<Value>,
}

/// How a failed tick is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FailurePolicy {
    Drop,
    Constant {
        interval: Duration,
        max_retries: Option<u32>,
    },
}

impl FailurePolicy {
    /// Default (our choice): retry every second, 3 times.
    const DEFAULT: FailurePolicy = FailurePolicy::Constant {
        interval: Duration::from_secs(1),
        max_retries: Some(3),
    };

    fn parse(v: Option<&Value>) -> Result<FailurePolicy, String> {
        let Some(v) = v else {
            return Ok(FailurePolicy::DEFAULT);
        };
        if v.get("drop").is_some() {
            return Ok(FailurePolicy::Drop);
        }
        if let Some(c) = v.get("constant") {
            let interval = match c.get("interval") {
                None => Duration::from_secs(1),
                // At least 100 ms: a zero interval would retry in a busy loop.
                Some(Value::String(s)) => go_duration(s)?.max(Duration::from_millis(100)),
                Some(other) => {
                    return Err(format!(
                        "failurePolicy.constant.interval {other} is not a duration"
                    ));
                }
            };
            let max_retries = match c.get("maxRetries").or_else(|| c.get("max_retries")) {
                None | Some(Value::Null) => None,
                Some(n) => Some(n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(
                    || format!("failurePolicy.constant.maxRetries {n} is not a count"),
                )?),
            };
            return Ok(FailurePolicy::Constant {
                interval,
                max_retries,
            });
        }
        Err("failurePolicy is {\"drop\":{}} or {\"constant\":{\"interval\":\"1s\",\"maxRetries\":3}}".to_owned())
    }
}

fn malformed(message: impl Into<String>) -> DaprError {
    DaprError::new(StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", message)
}

/// The app a caller schedules for: the configured app its service names, else the only one.
fn app_of<B: Backend>(app: &App<B>, headers: &HeaderMap) -> Result<String, DaprError> {
    let who = caller(app, headers)?;
    let apps = &app.config.dapr.apps;
    if let Some(s) = &who.service
        && apps.iter().any(|a| &a.id == s)
    {
        return Ok(s.clone());
    }
    match apps.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(malformed(
            "no Dapr app is configured ([[dapr.apps]]) to trigger jobs in",
        )),
        _ => Err(malformed(
            "several Dapr apps are configured; call with the credentials of the app the job is for",
        )),
    }
}

/// Builds the stored job from a request; every problem is a 400 before anything is stored.
fn job_of(name: &str, app: &str, req: JobRequest, now: i64) -> Result<Job, DaprError> {
    if req.name.is_some() {
        return Err(malformed(
            "the job name is in the path; the body must not name it",
        ));
    }
    if req.schedule.is_none() && req.due_time.is_none() {
        return Err(DaprError::new(
            StatusCode::BAD_REQUEST,
            "DAPR_SCHEDULER_SCHEDULE_EMPTY",
            "a job needs a schedule, a dueTime, or both",
        ));
    }
    let schedule = req
        .schedule
        .as_deref()
        .map(Schedule::parse)
        .transpose()
        .map_err(malformed)?;
    let due = req
        .due_time
        .as_deref()
        .map(|d| point_in_time(d, now, "dueTime"))
        .transpose()
        .map_err(malformed)?;
    let expires = req
        .ttl
        .as_deref()
        .map(|t| point_in_time(t, now, "ttl"))
        .transpose()
        .map_err(malformed)?;
    FailurePolicy::parse(req.failure_policy.as_ref()).map_err(malformed)?;
    let next = match (due, &schedule) {
        (Some(d), _) => Some(d),
        (None, Some(s)) => s.next_after(now, now),
        (None, None) => None,
    };
    if req.repeats == Some(0) {
        return Err(malformed("repeats must be at least 1"));
    }
    Ok(Job {
        name: name.to_owned(),
        app: app.to_owned(),
        schedule: req.schedule,
        due_time: req.due_time,
        repeats: req.repeats,
        ttl: req.ttl,
        data: req.data,
        failure_policy: req.failure_policy,
        created_ms: now,
        next_ms: next,
        expires_ms: expires,
        fired: 0,
        revision: 0,
    })
}

/// `POST .../jobs/{name}`.
pub(crate) async fn create<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let run = async {
        let owner = app_of(&app, &headers)?;
        if name.is_empty() || name.contains('/') {
            return Err(malformed("a job name is non-empty and has no /"));
        }
        let req: JobRequest =
            serde_json::from_slice(&body).map_err(|e| malformed(format!("not a job: {e}")))?;
        let overwrite = req.overwrite;
        let mut job = job_of(&name, &owner, req, now_ms())?;
        let k = key(&owner, &name);
        let record = serde_json::to_vec(&job).map_err(|e| malformed(e.to_string()))?;
        let _writing = app.jobs.writes.lock().await;
        // The stored record is the single copy: overwrite replaces it in one write.
        let expect = (!overwrite).then_some(0);
        match app
            .engine
            .backend()
            .kv_put(BUCKET, &k, record, expect)
            .await
        {
            Ok(revision) => job.revision = revision,
            Err(BackendError::RevisionMismatch { .. }) => {
                return Err(DaprError::new(
                    StatusCode::CONFLICT,
                    "DAPR_SCHEDULER_JOB_EXISTS",
                    format!("job {name} exists; send \"overwrite\": true to replace it"),
                ));
            }
            Err(e) => {
                return Err(DaprError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "DAPR_SCHEDULER_SCHEDULE_JOB",
                    format!("storing job {name} failed: {e}"),
                ));
            }
        }
        app.jobs.generation().insert(k.clone(), job.created_ms);
        app.jobs
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(k, job);
        app.jobs.wake.notify_one();
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET .../jobs/{name}`.
pub(crate) async fn get<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let owner = app_of(&app, &headers)?;
        // Not while a tick has the job out of memory.
        let _writing = app.jobs.writes.lock().await;
        let job = app
            .jobs
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .get(&key(&owner, &name))
            .cloned();
        let Some(job) = job else {
            return Err(DaprError::new(
                StatusCode::NOT_FOUND,
                "DAPR_SCHEDULER_GET_JOB",
                format!("job {name} is not found"),
            ));
        };
        let mut body = serde_json::Map::new();
        body.insert("name".into(), job.name.into());
        let mut opt = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                body.insert(k.into(), v);
            }
        };
        opt("schedule", job.schedule.map(Value::from));
        opt("dueTime", job.due_time.map(Value::from));
        opt("repeats", job.repeats.map(Value::from));
        opt("ttl", job.ttl.map(Value::from));
        opt("data", job.data);
        opt("failurePolicy", job.failure_policy);
        Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            Value::Object(body).to_string(),
        )
            .into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE .../jobs/{name}`: 204, known or not.
pub(crate) async fn delete<B: Backend>(
    State(app): State<Shared<B>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let owner = app_of(&app, &headers)?;
        let k = key(&owner, &name);
        let _writing = app.jobs.writes.lock().await;
        app.engine
            .backend()
            .kv_delete(BUCKET, &k, None)
            .await
            .map_err(|e| {
                DaprError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "DAPR_SCHEDULER_DELETE_JOB",
                    format!("deleting job {name} failed: {e}"),
                )
            })?;
        app.jobs
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&k);
        app.jobs.generation().remove(&k);
        Ok::<_, DaprError>(StatusCode::NO_CONTENT.into_response())
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// Loads the stored jobs and runs the scheduler until shutdown.
pub(crate) async fn start<B: Backend>(app: &Shared<B>) -> Result<(), BackendError> {
    let stored = app.engine.backend().kv_list(BUCKET).await?;
    {
        let mut state = app
            .jobs
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (k, entry) in stored {
            match serde_json::from_slice::<Job>(&entry.value) {
                Ok(mut job) => {
                    job.revision = entry.revision;
                    app.jobs.generation().insert(k.clone(), job.created_ms);
                    state.put(k, job);
                }
                Err(e) => tracing::error!(job = %k, error = %e, "unreadable job record skipped"),
            }
        }
    }
    let app = app.clone();
    tokio::spawn(async move { run(app).await });
    Ok(())
}

async fn run<B: Backend>(app: Shared<B>) {
    let mut shutdown = app.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let first = {
            let state = app
                .jobs
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.due.first().cloned()
        };
        let wait = match &first {
            None => Duration::from_secs(3600),
            Some((at, _)) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = app.jobs.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            continue;
        }
        // Every job due now, in one batch (bounded, so a backlog drains in steps).
        let batch: Vec<(i64, String)> = {
            let state = app
                .jobs
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = now_ms();
            state
                .due
                .iter()
                .take_while(|(at, _)| *at <= now)
                .take(1000)
                .cloned()
                .collect()
        };
        for (job, due) in advance(&app, batch).await {
            let app = app.clone();
            tokio::spawn(async move { trigger(&app, job, due).await });
        }
    }
}

/// A due job's tick, decided: its advanced state (or its end), to store before it fires.
struct Tick {
    key: String,
    due: i64,
    job: Job,
    /// Expired by its ttl: removed without firing.
    expired: bool,
}

/// Moves the due jobs to their next tick (or removes them) in storage and memory, before they
/// fire: the stored writes go out together, so one sync covers a whole batch of ticks. Returns
/// the jobs to fire with their due times.
async fn advance<B: Backend>(app: &Shared<B>, batch: Vec<(i64, String)>) -> Vec<(Job, i64)> {
    let _writing = app.jobs.writes.lock().await;
    let now = now_ms();
    let ticks: Vec<Tick> = batch
        .into_iter()
        .filter_map(|(due, k)| plan(app, k, due, now))
        .collect();
    let backend = app.engine.backend();
    // Each tick is written over the revision this server last saw: another server on the
    // same backend that took the tick first makes the write fail, and this one does not fire.
    let writes = ticks.iter().map(|t| async move {
        let seen = Some(t.job.revision);
        if t.expired || t.job.next_ms.is_none() {
            backend.kv_delete(BUCKET, &t.key, seen).await.map(|_| 0)
        } else {
            match serde_json::to_vec(&t.job) {
                Ok(r) => backend.kv_put(BUCKET, &t.key, r, seen).await,
                Err(_) => Ok(t.job.revision),
            }
        }
    });
    let results = futures_util::future::join_all(writes).await;
    let mut fire = Vec::new();
    let mut taken = Vec::new();
    {
        let mut state = app
            .jobs
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (mut t, stored) in ticks.into_iter().zip(results) {
            if let Err(BackendError::RevisionMismatch { .. }) = stored {
                // Another server fired this tick (or the job changed): take its version.
                taken.push(t.key);
                continue;
            }
            if let Ok(revision) = stored {
                t.job.revision = revision;
            }
            if let Err(e) = stored {
                // Not recorded: do not fire (at most once); try again shortly.
                tracing::warn!(job = %t.key, error = %e, "job tick not recorded; retrying");
                if !t.expired {
                    t.job.fired = t.job.fired.saturating_sub(1);
                }
                t.job.next_ms = Some(now.max(t.due) + 1000);
                state.put(t.key, t.job);
                continue;
            }
            if t.expired {
                continue;
            }
            if t.job.next_ms.is_some() {
                state.put(t.key.clone(), t.job.clone());
            }
            fire.push((t.job, t.due));
        }
    }
    for k in taken {
        reload(app, &k).await;
    }
    fire
}

/// Reads one job again from the backend into memory (or forgets it, if it is gone).
async fn reload<B: Backend>(app: &Shared<B>, k: &str) {
    match app.engine.backend().kv_get(BUCKET, k).await {
        Ok(Some(entry)) => {
            if let Ok(mut job) = serde_json::from_slice::<Job>(&entry.value) {
                job.revision = entry.revision;
                app.jobs.generation().insert(k.to_owned(), job.created_ms);
                lock_state(app).put(k.to_owned(), job);
            }
        }
        Ok(None) => {
            lock_state(app).remove(k);
            app.jobs.generation().remove(k);
        }
        Err(e) => tracing::warn!(job = %k, error = %e, "cannot read a job again"),
    }
}

fn lock_state<B: Backend>(app: &App<B>) -> std::sync::MutexGuard<'_, SchedulerState> {
    app.jobs
        .state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Takes up jobs that other servers on the same backend created, changed or deleted.
pub(crate) async fn sync<B: Backend>(app: &Shared<B>) -> Result<(), BackendError> {
    let stored = app.engine.backend().kv_list(BUCKET).await?;
    let _writing = app.jobs.writes.lock().await;
    {
        let mut state = lock_state(app);
        let keys: BTreeSet<&String> = stored.iter().map(|(k, _)| k).collect();
        let gone: Vec<String> = state
            .jobs
            .keys()
            .filter(|k| !keys.contains(k))
            .cloned()
            .collect();
        for k in gone {
            state.remove(&k);
            app.jobs.generation().remove(&k);
        }
        for (k, entry) in stored {
            if state
                .jobs
                .get(&k)
                .is_some_and(|j| j.revision >= entry.revision)
            {
                continue;
            }
            if let Ok(mut job) = serde_json::from_slice::<Job>(&entry.value) {
                job.revision = entry.revision;
                app.jobs.generation().insert(k.clone(), job.created_ms);
                state.put(k, job);
            }
        }
    }
    app.jobs.wake.notify_one();
    Ok(())
}

/// Takes a due job out of memory and decides its tick.
fn plan<B: Backend>(app: &Shared<B>, k: String, due: i64, now: i64) -> Option<Tick> {
    let mut job = {
        let mut state = app
            .jobs
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let job = state.remove(&k)?;
        if job.next_ms != Some(due) {
            // Replaced meanwhile: keep the new one.
            state.put(k, job);
            return None;
        }
        job
    };
    if job.expires_ms.is_some_and(|e| e <= now) {
        return Some(Tick {
            key: k,
            due,
            job,
            expired: true,
        });
    }
    let schedule = job
        .schedule
        .as_deref()
        .and_then(|s| Schedule::parse(s).ok());
    job.fired += 1;
    let mut next = schedule
        .as_ref()
        .and_then(|s| s.next_after(now.max(due), job.created_ms));
    // Ticks that passed while nobody fired them (the server was down) are coalesced.
    if let Some(s) = &schedule {
        let mut missed = 0u64;
        let mut t = s.next_after(due, job.created_ms);
        while let Some(at) = t
            && at <= now
            && missed < 1_000_000
        {
            missed += 1;
            t = s.next_after(at, job.created_ms);
        }
        if missed > 0 {
            app.metrics
                .job_ticks
                .get_or_create(&OutcomeLabel { outcome: "missed" })
                .inc_by(missed);
        }
    }
    if job.repeats.is_some_and(|r| job.fired >= r)
        || job.expires_ms.zip(next).is_some_and(|(e, n)| n > e)
    {
        next = None;
    }
    job.next_ms = next;
    Some(Tick {
        key: k,
        due,
        job,
        expired: false,
    })
}

/// Calls the app's `POST /job/{name}` with the job's data, under its failure policy; after a
/// finished job's last tick, forgets its version.
async fn trigger<B: Backend>(app: &Arc<App<B>>, job: Job, due: i64) {
    let last = job.next_ms.is_none();
    let (k, created) = (key(&job.app, &job.name), job.created_ms);
    fire(app, job, due).await;
    if last {
        let mut generations = app.jobs.generation();
        if generations.get(&k) == Some(&created) {
            generations.remove(&k);
        }
    }
}

async fn fire<B: Backend>(app: &Arc<App<B>>, job: Job, due: i64) {
    let Some(to) = app.dapr_apps.get(&job.app) else {
        tracing::error!(job = %job.name, app = %job.app, "job's app is not configured; tick dropped");
        return;
    };
    let lateness = (now_ms() - due).max(0);
    app.metrics
        .job_lateness_seconds
        .observe(lateness as f64 / 1000.0);
    // A path segment: everything but RFC 3986's unreserved characters is escaped.
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let name = percent_encoding::utf8_percent_encode(&job.name, SEGMENT);
    let (path, _) = to.route(&format!("job/{name}"));
    let client = &to.client;
    let k = key(&job.app, &job.name);
    let live = || app.jobs.generation().get(&k) == Some(&job.created_ms);
    let body = job.data.as_ref().map(Value::to_string).unwrap_or_default();
    let policy =
        FailurePolicy::parse(job.failure_policy.as_ref()).unwrap_or(FailurePolicy::DEFAULT);
    let mut retries = 0u32;
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        let answer = client.post(&path, headers, body.clone().into_bytes()).await;
        let ok = matches!(&answer, Ok(r) if r.status.is_success());
        if ok {
            app.metrics
                .job_ticks
                .get_or_create(&OutcomeLabel { outcome: "fired" })
                .inc();
            return;
        }
        let retry = match policy {
            FailurePolicy::Drop => None,
            FailurePolicy::Constant {
                interval,
                max_retries,
            } => (max_retries.is_none_or(|m| retries < m) && !*app.shutdown.borrow() && live())
                .then_some(interval),
        };
        let Some(wait) = retry else {
            tracing::warn!(job = %job.name, app = %job.app, "job tick failed after its failure policy");
            app.metrics
                .job_ticks
                .get_or_create(&OutcomeLabel { outcome: "failed" })
                .inc();
            return;
        };
        retries += 1;
        tokio::time::sleep(wait).await;
    }
}
