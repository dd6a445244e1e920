//! The commands that talk to a running `canon serve`: publish, tail, sub, dlq, replay, events.
//! The server is `--server` (or `CANON_URL`, default `http://127.0.0.1:8480`); a credential is
//! `--token` (or `CANON_TOKEN`), sent as `Authorization: Bearer`.

use std::io::{BufRead, Write};

use serde_json::{Value, json};

use crate::{Format, Outcome, Usage, read_input};

/// Where and as whom.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Remote {
    /// The server's base URL.
    #[arg(
        long,
        env = "CANON_URL",
        default_value = "http://127.0.0.1:8480",
        global = true
    )]
    server: String,
    /// An API key or JWT.
    #[arg(long, env = "CANON_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

/// A failure talking to the server: exit 1 when the server refused (4xx), 3 when it could not
/// be reached or failed (5xx).
pub(crate) enum Failure {
    Usage(Usage),
    Refused(String),
    Unreachable(String),
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Self {
        Failure::Usage(u)
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    rt: tokio::runtime::Runtime,
}

impl Client {
    fn new(remote: &Remote) -> Result<Client, Failure> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::Unreachable(format!("cannot start the runtime: {e}")))?;
        Ok(Client {
            http: reqwest::Client::new(),
            base: remote.server.trim_end_matches('/').to_owned(),
            token: remote.token.clone(),
            rt,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.header("authorization", format!("Bearer {t}")),
            None => r,
        }
    }

    /// Sends and reads a JSON answer; a problem document becomes a `Failure`.
    fn call(&self, r: reqwest::RequestBuilder) -> Result<(u16, Value), Failure> {
        self.rt.block_on(async {
            let res = r
                .send()
                .await
                .map_err(|e| Failure::Unreachable(format!("cannot reach {}: {e}", self.base)))?;
            let status = res.status().as_u16();
            let bytes = res
                .bytes()
                .await
                .map_err(|e| Failure::Unreachable(format!("reading the answer: {e}")))?;
            let v: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
            };
            if status >= 500 {
                return Err(Failure::Unreachable(problem_text(status, &v)));
            }
            // A rejected publish still carries per-event results: the caller renders them.
            if status >= 400 && v.get("results").is_none() {
                return Err(Failure::Refused(problem_text(status, &v)));
            }
            Ok((status, v))
        })
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(self.request(reqwest::Method::GET, path))
            .map(|(_, v)| v)
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let r = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap_or_default());
        self.call(r).map(|(_, v)| v)
    }
}

fn problem_text(status: u16, v: &Value) -> String {
    match (
        v.get("code").and_then(Value::as_str),
        v.get("detail").and_then(Value::as_str),
    ) {
        (Some(code), Some(detail)) => {
            let rule = v
                .get("rule")
                .and_then(Value::as_str)
                .map(|r| format!(", rule {r}"))
                .unwrap_or_default();
            format!("{detail} ({status} {code}{rule})")
        }
        _ => format!("the server answered {status}: {v}"),
    }
}

fn print_json(out: &mut impl Write, v: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    writeln!(out, "{text}").map_err(|e| Failure::Usage(crate::io(e)))
}

fn line(out: &mut impl Write, text: &str) -> Result<(), Failure> {
    writeln!(out, "{text}").map_err(|e| Failure::Usage(crate::io(e)))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// A plain text table: a header and rows, columns padded to their widest cell.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> Result<(), Failure> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let render = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    line(
        out,
        &render(header.iter().map(|h| (*h).to_owned()).collect()),
    )?;
    for r in rows {
        line(out, &render(r.clone()))?;
    }
    Ok(())
}

/// `canon publish`.
#[allow(clippy::too_many_arguments, reason = "one per flag")]
pub(crate) fn publish(
    out: &mut impl Write,
    remote: &Remote,
    file: Option<&str>,
    event: EventFlags,
    dialect: Option<&str>,
    topic: Option<&str>,
    partial: bool,
    batch_size: usize,
    format: Format,
) -> Result<Outcome, Failure> {
    let docs: Vec<Value> = if let Some(ty) = &event.ty {
        let data: Value = match &event.data {
            Some(d) => {
                serde_json::from_str(d).map_err(|e| Usage(format!("--data is not JSON: {e}")))?
            }
            None => Value::Null,
        };
        let mut ev = json!({
            "specversion": "1.0",
            "id": event.id.clone().unwrap_or_else(new_id),
            "source": event.source.clone().unwrap_or_else(|| "/canon/cli".to_owned()),
            "type": ty,
            "time": now(),
        });
        if !data.is_null() {
            ev["data"] = data;
            ev["datacontenttype"] = json!("application/json");
        }
        if let Some(sub) = &event.subject {
            ev["subject"] = json!(sub);
        }
        vec![ev]
    } else {
        let (name, bytes) = read_input(file)?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Usage(format!("{name} is not JSON: {e}")))?;
        match v {
            Value::Array(items) => items,
            other => vec![other],
        }
    };
    let client = Client::new(remote)?;
    let path = match topic {
        Some(t) => format!("/v1/topics/{t}/events"),
        None => "/v1/events".to_owned(),
    };
    let mut query = Vec::new();
    if let Some(d) = dialect {
        query.push(format!("dialect={d}"));
    }
    if partial {
        query.push("partial=true".to_owned());
    }
    let path = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let chunks: Vec<&[Value]> = docs.chunks(batch_size.max(1)).collect();
    let bar = (chunks.len() > 1).then(|| {
        let b = indicatif::ProgressBar::new(docs.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut results = Vec::new();
    let mut refused = false;
    for (n, chunk) in chunks.iter().enumerate() {
        let (ct, body) = if dialect.is_some() || chunk.len() > 1 {
            (
                "application/cloudevents-batch+json",
                serde_json::to_vec(chunk),
            )
        } else {
            (
                "application/cloudevents+json",
                serde_json::to_vec(&chunk[0]),
            )
        };
        let ct = if dialect.is_some() {
            "application/json"
        } else {
            ct
        };
        let r = client
            .request(reqwest::Method::POST, &path)
            .header("content-type", ct)
            .body(body.unwrap_or_default());
        let (status, v) = client.call(r)?;
        refused |= status >= 400;
        let offset = n * batch_size.max(1);
        for mut r in v["results"].as_array().cloned().unwrap_or_default() {
            if let Some(i) = r["index"].as_u64() {
                r["index"] = json!(i + offset as u64);
            }
            results.push(r);
        }
        if let Some(b) = &bar {
            b.inc(chunk.len() as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let count = |st: &str| results.iter().filter(|r| r["status"] == st).count();
    match format {
        Format::Json => print_json(out, &json!({"results": results}))?,
        Format::Human => {
            for r in results.iter().filter(|r| r["status"] == "rejected") {
                for p in r["problems"].as_array().into_iter().flatten() {
                    line(
                        out,
                        &format!(
                            "event {} ({}): {} at {}: {}",
                            s(&r["index"]),
                            s(&r["id"]),
                            s(&p["code"]),
                            s(&p["location"]),
                            s(&p["message"])
                        ),
                    )?;
                }
            }
            line(
                out,
                &format!(
                    "{} stored, {} duplicate, {} rejected, {} not stored",
                    count("stored"),
                    count("duplicate"),
                    count("rejected"),
                    count("not-stored")
                ),
            )?;
        }
    }
    Ok(if refused || count("rejected") > 0 {
        Outcome::Invalid
    } else {
        Outcome::Ok
    })
}

/// Flags that make one event.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct EventFlags {
    /// The event type (makes one event from flags instead of reading a file).
    #[arg(long = "type")]
    pub(crate) ty: Option<String>,
    /// The event id (default: random).
    #[arg(long)]
    pub(crate) id: Option<String>,
    /// The source (default /canon/cli).
    #[arg(long)]
    pub(crate) source: Option<String>,
    /// The subject.
    #[arg(long)]
    pub(crate) subject: Option<String>,
    /// The data, as JSON.
    #[arg(long)]
    pub(crate) data: Option<String>,
}

fn new_id() -> String {
    format!("cli-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `canon tail`.
pub(crate) fn tail(
    out: &mut impl Write,
    remote: &Remote,
    topic: &str,
    from: Option<&str>,
    types: &[String],
    subject: Option<&str>,
    format: Format,
) -> Result<Outcome, Failure> {
    let client = Client::new(remote)?;
    let mut query = vec![format!("from={}", from.unwrap_or("now"))];
    if !types.is_empty() {
        query.push(format!("type={}", types.join(",")));
    }
    if let Some(s) = subject {
        query.push(format!("subject={s}"));
    }
    let path = format!("/v1/topics/{topic}/tail?{}", query.join("&"));
    client.rt.block_on(async {
        let mut res = client
            .request(reqwest::Method::GET, &path)
            .send()
            .await
            .map_err(|e| Failure::Unreachable(format!("cannot reach {}: {e}", client.base)))?;
        if !res.status().is_success() {
            let status = res.status().as_u16();
            let v: Value = serde_json::from_slice(&res.bytes().await.unwrap_or_default())
                .unwrap_or(Value::Null);
            return Err(Failure::Refused(problem_text(status, &v)));
        }
        let mut pending = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| Failure::Unreachable(format!("the stream broke: {e}")))?
        {
            pending.extend_from_slice(&chunk);
            while let Some(end) = find(&pending, b"\n\n") {
                let frame: Vec<u8> = pending.drain(..end + 2).collect();
                let mut data = String::new();
                let mut id = String::new();
                for l in frame.lines().map_while(Result::ok) {
                    if let Some(d) = l.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    } else if let Some(i) = l.strip_prefix("id:") {
                        id = i.trim().to_owned();
                    }
                }
                if data.is_empty() {
                    continue;
                }
                match format {
                    Format::Json => line(out, &data)?,
                    Format::Human => {
                        let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                        line(
                            out,
                            &format!(
                                "{id:>8}  {}  {}  {}",
                                s(&v["type"]),
                                s(&v["id"]),
                                s(&v["subject"])
                            ),
                        )?;
                    }
                }
                let _ = out.flush();
            }
        }
        Ok(Outcome::Ok)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `canon sub ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SubCommand {
    /// Create a subscription (pull, or push with --push-url).
    Create {
        /// Its name.
        name: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Only these types (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// The consuming service (admins only, for another service).
        #[arg(long)]
        consumer: Option<String>,
        /// Push to this URL.
        #[arg(long)]
        push_url: Option<String>,
        /// Push format: structured, binary or data.
        #[arg(long)]
        push_format: Option<String>,
        /// One event in flight per aggregate.
        #[arg(long)]
        ordered: Option<bool>,
        /// Deliveries before the DLQ.
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// List subscriptions.
    List,
    /// Delete a subscription with its state and DLQ.
    Delete {
        /// Its name.
        name: String,
    },
}

pub(crate) fn sub(
    out: &mut impl Write,
    remote: &Remote,
    cmd: SubCommand,
    format: Format,
) -> Result<Outcome, Failure> {
    let client = Client::new(remote)?;
    match cmd {
        SubCommand::Create {
            name,
            topic,
            types,
            consumer,
            push_url,
            push_format,
            ordered,
            max_attempts,
        } => {
            let mut body = json!({"name": name, "topic": topic, "types": types});
            if let Some(c) = consumer {
                body["consumer"] = json!(c);
            }
            if let Some(u) = push_url {
                body["push"] = json!({"url": u, "format": push_format.unwrap_or_else(|| "structured".to_owned())});
            }
            if let Some(o) = ordered {
                body["ordered"] = json!(o);
            }
            if let Some(m) = max_attempts {
                body["retry"] = json!({"max_attempts": m});
            }
            let v = client.post("/v1/subscriptions", &body)?;
            match format {
                Format::Json => print_json(out, &v)?,
                Format::Human => line(
                    out,
                    &format!("subscription {} on {}", s(&v["name"]), s(&v["topic"])),
                )?,
            }
        }
        SubCommand::List => {
            let v = client.get("/v1/subscriptions")?;
            match format {
                Format::Json => print_json(out, &v)?,
                Format::Human => {
                    let rows: Vec<Vec<String>> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| {
                            vec![
                                s(&x["name"]),
                                s(&x["topic"]),
                                if x["push"].is_object() {
                                    "push".to_owned()
                                } else {
                                    "pull".to_owned()
                                },
                                s(&x["consumer"]),
                                s(&x["pending"]),
                                s(&x["in_flight"]),
                                s(&x["dead_letters"]),
                            ]
                        })
                        .collect();
                    table(
                        out,
                        &[
                            "NAME",
                            "TOPIC",
                            "MODE",
                            "CONSUMER",
                            "PENDING",
                            "IN FLIGHT",
                            "DLQ",
                        ],
                        &rows,
                    )?;
                }
            }
        }
        SubCommand::Delete { name } => {
            client.call(client.request(
                reqwest::Method::DELETE,
                &format!("/v1/subscriptions/{name}"),
            ))?;
            if format == Format::Human {
                line(out, &format!("deleted {name}"))?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// `canon dlq ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// List a subscription's dead letters.
    Ls {
        /// The subscription.
        subscription: String,
        /// Only these types (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// max-attempts, rejected or expired.
        #[arg(long)]
        reason: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one dead letter with every attempt.
    Show {
        /// The subscription.
        subscription: String,
        /// The event id.
        id: String,
    },
    /// Put dead letters back into the subscription's work (admin).
    Redrive {
        /// The subscription.
        subscription: String,
        /// Only these event ids (repeatable).
        #[arg(long = "id")]
        ids: Vec<String>,
        /// Only these types (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// max-attempts, rejected or expired.
        #[arg(long)]
        reason: Option<String>,
        /// Report only.
        #[arg(long)]
        dry_run: bool,
        /// Events per second (0: no limit).
        #[arg(long)]
        per_second: Option<u32>,
    },
}

pub(crate) fn dlq(
    out: &mut impl Write,
    remote: &Remote,
    cmd: DlqCommand,
    format: Format,
) -> Result<Outcome, Failure> {
    let client = Client::new(remote)?;
    match cmd {
        DlqCommand::Ls {
            subscription,
            types,
            reason,
            limit,
        } => {
            let mut q = Vec::new();
            if !types.is_empty() {
                q.push(format!("type={}", types.join(",")));
            }
            if let Some(r) = reason {
                q.push(format!("reason={r}"));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let v = client.get(&format!(
                "/v1/subscriptions/{subscription}/dlq?{}",
                q.join("&")
            ))?;
            match format {
                Format::Json => print_json(out, &v)?,
                Format::Human => {
                    let rows: Vec<Vec<String>> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|d| {
                            vec![
                                s(&d["sequence"]),
                                s(&d["event"]["id"]),
                                s(&d["event"]["type"]),
                                s(&d["reason"]),
                                s(&d["attempts"]),
                                s(&d["dead_lettered_at"]),
                                s(&d["last_error"]),
                            ]
                        })
                        .collect();
                    table(
                        out,
                        &[
                            "SEQ",
                            "ID",
                            "TYPE",
                            "REASON",
                            "ATTEMPTS",
                            "AT",
                            "LAST ERROR",
                        ],
                        &rows,
                    )?;
                }
            }
        }
        DlqCommand::Show { subscription, id } => {
            let v = client.get(&format!("/v1/subscriptions/{subscription}/dlq/{id}"))?;
            print_json(out, &v)?;
        }
        DlqCommand::Redrive {
            subscription,
            ids,
            types,
            reason,
            dry_run,
            per_second,
        } => {
            let body = json!({"ids": ids, "type": types, "reason": reason, "dry_run": dry_run, "per_second": per_second});
            let v = client.post(
                &format!("/v1/subscriptions/{subscription}/dlq/redrive"),
                &body,
            )?;
            match format {
                Format::Json => print_json(out, &v)?,
                Format::Human => line(
                    out,
                    &format!(
                        "{} matched, {} redriven{}",
                        v["matched"].as_array().map_or(0, Vec::len),
                        s(&v["count"]),
                        if dry_run { " (dry run)" } else { "" }
                    ),
                )?,
            }
        }
    }
    Ok(Outcome::Ok)
}

/// `canon replay`.
pub(crate) fn replay(
    out: &mut impl Write,
    remote: &Remote,
    subscription: &str,
    from: Option<&str>,
    event_id: Option<&str>,
) -> Result<Outcome, Failure> {
    let client = Client::new(remote)?;
    let body = match (from, event_id) {
        (Some(f), None) => json!({"from": f}),
        (None, Some(id)) => json!({"event_id": id}),
        _ => return Err(Usage("give exactly one of --from and --event-id".to_owned()).into()),
    };
    client.post(&format!("/v1/subscriptions/{subscription}/replay"), &body)?;
    line(
        out,
        &format!(
            "{subscription} replays from {}",
            from.or(event_id).unwrap_or_default()
        ),
    )?;
    Ok(Outcome::Ok)
}

/// `canon events ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EventsCommand {
    /// The stored events with an id.
    Get {
        /// The event id.
        id: String,
    },
    /// An event's causes and effects.
    Chain {
        /// The event id.
        id: String,
    },
}

pub(crate) fn events(
    out: &mut impl Write,
    remote: &Remote,
    cmd: EventsCommand,
    format: Format,
) -> Result<Outcome, Failure> {
    let client = Client::new(remote)?;
    match cmd {
        EventsCommand::Get { id } => {
            let v = client.get(&format!("/v1/events/{id}"))?;
            print_json(out, &v)?;
        }
        EventsCommand::Chain { id } => {
            let v = client.get(&format!("/v1/events/{id}/chain"))?;
            match format {
                Format::Json => print_json(out, &v)?,
                Format::Human => {
                    let row = |e: &Value, role: &str| {
                        vec![
                            role.to_owned(),
                            s(&e["topic"]),
                            s(&e["sequence"]),
                            s(&e["event"]["id"]),
                            s(&e["event"]["type"]),
                        ]
                    };
                    let mut rows: Vec<Vec<String>> = v["causes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .rev()
                        .map(|e| row(e, "cause"))
                        .collect();
                    rows.push(row(&v["event"], "event"));
                    rows.extend(
                        v["effects"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| row(e, "effect")),
                    );
                    table(out, &["ROLE", "TOPIC", "SEQ", "ID", "TYPE"], &rows)?;
                }
            }
        }
    }
    Ok(Outcome::Ok)
}
