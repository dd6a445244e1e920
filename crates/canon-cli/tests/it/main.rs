//! The `canon` binary end to end: output, `--format json` and exit codes.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use expect_test::expect;

mod cluster;

/// The lines a child writes to `pipe`, as they come, read on a thread of their own.
fn lines_of(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    lines
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `canon` in the repository root; returns (exit code, stdout, stderr).
fn canon(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("canon-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_passes_the_seed_catalogs() {
    let (code, out, _) = canon(
        &[
            "catalog",
            "check",
            "examples/catalogs/bme.yaml",
            "examples/catalogs/coach.yaml",
            "examples/catalogs/go4u.yaml",
            "examples/catalogs/lifeos.yaml",
            "examples/catalogs/todo.yaml",
        ],
        "",
    );
    assert_eq!(code, 0);
    expect![[r#"
        examples/catalogs/bme.yaml: ok (21 types)
        examples/catalogs/coach.yaml: ok (8 types)
        examples/catalogs/go4u.yaml: ok (34 types)
        examples/catalogs/lifeos.yaml: ok (39 types)
        examples/catalogs/todo.yaml: ok (9 types)
    "#]]
    .assert_eq(&out);
}

#[test]
fn check_reports_problems_with_exit_1_and_json() {
    let broken = temp_file(
        "broken.yaml",
        "canon: 1\nname: x\nservices: {a: A}\ntypes:\n  t.created:\n    summary: s\n    producers: [b]\n    payload: {id: strng}\n",
    );
    let (code, out, _) = canon(&["catalog", "check", s(&broken)], "");
    assert_eq!(code, 1);
    expect![[r#"
        broken.yaml:8:15: error[invalid-shorthand]: unknown type `strng`; expected string, integer, number, boolean, object, any, datetime, date, uuid, uri, email, hash, enum(...), T[] or T | null
          hint: see the shorthand table in docs/catalog-format.md, or use `schema:` with JSON Schema
        1 error(s), 0 warning(s)
    "#]].assert_eq(&out.replace(s(&broken), "broken.yaml"));
    let (code, out, _) = canon(&["catalog", "check", "--format", "json", s(&broken)], "");
    assert_eq!(code, 1);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["errors"], 1);
    assert_eq!(
        doc["files"][0]["diagnostics"][0]["code"],
        "invalid-shorthand"
    );
    assert_eq!(doc["files"][0]["diagnostics"][0]["line"], 8);
}

#[test]
fn validate_reads_a_file_or_stdin() {
    let (code, out, _) = canon(
        &[
            "catalog",
            "validate",
            "--catalog",
            "examples/catalogs/todo.yaml",
            "examples/events/todo.json",
        ],
        "",
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains(": valid (")).count(),
        9,
        "{out}"
    );
    let event = r#"{"eventId":"e1","type":"money.TransactionCreated","payload":{"id":"t","date":"yesterday","type":"gift","amount":"10","currency":"USD","category":"Food"},"metadata":{"timestamp":"2025-02-24T12:00:00Z"}}"#;
    let (code, out, _) = canon(
        &[
            "catalog",
            "validate",
            "--catalog",
            "examples/catalogs/bme.yaml",
            "-",
        ],
        event,
    );
    assert_eq!(code, 1);
    expect![[r#"
        <stdin>: invalid (money.TransactionCreated e1)
          payload-type [money.TransactionCreated v1] at /data/amount: "10" is not of type "number"
          payload-format [money.TransactionCreated v1] at /data/date: "yesterday" is not a "date"
          payload-enum [money.TransactionCreated v1] at /data/type: "gift" is not one of "expense", "income" or "transfer"
    "#]].assert_eq(&out);
    let (code, out, _) = canon(
        &[
            "catalog",
            "validate",
            "--catalog",
            "examples/catalogs/bme.yaml",
            "--format",
            "json",
        ],
        "{\"eventId\":1}",
    );
    assert_eq!(code, 1);
    expect![[r#"
        {"dialect":"bme","events":[{"id":null,"index":0,"type":null,"valid":false,"violations":[{"code":"invalid-dialect-member","location":"/eventId","message":"eventId must be a string, got a number","type":null,"version":null},{"code":"missing-attribute","location":"/type","message":"bme requires member type","type":null,"version":null},{"code":"missing-attribute","location":"/metadata","message":"bme requires member metadata","type":null,"version":null},{"code":"missing-attribute","location":"/metadata/timestamp","message":"bme requires member timestamp","type":null,"version":null}]}],"valid":false}
    "#]].assert_eq(&out);
}

#[test]
fn diff_fails_on_a_breaking_change_without_a_bump() {
    let head = "canon: 1\nname: x\nservices: {a: A}\ntypes:\n  t.created:\n    summary: s\n    producers: [a]\n";
    let old = temp_file("old.yaml", &format!("{head}    payload: {{id: string}}\n"));
    let compatible = temp_file(
        "compatible.yaml",
        &format!("{head}    payload: {{id: string, note?: string}}\n"),
    );
    let breaking = temp_file(
        "breaking.yaml",
        &format!("{head}    payload: {{id: integer}}\n"),
    );
    let (code, out, _) = canon(&["catalog", "diff", s(&old), s(&compatible)], "");
    assert_eq!(code, 0);
    expect![[r#"
        t.created Changed 1, compatibility: backward
          breaking: note: field is no longer allowed (breaks forward)
        1 type(s) changed, no errors
    "#]]
    .assert_eq(&out);
    let (code, out, _) = canon(&["catalog", "diff", s(&old), s(&breaking)], "");
    assert_eq!(code, 1);
    expect![[r#"
        t.created Changed 1, compatibility: none
          breaking: id: type string is no longer accepted (now integer) (breaks backward)
          breaking: id: type integer is no longer accepted (now string) (breaks forward)
          error[breaking-change-without-version-bump]: t.created 1 changed incompatibly without a new version: id: type string is no longer accepted (now integer) (breaks backward)
        1 type(s) changed, with errors
    "#]].assert_eq(&out);
}

#[test]
fn show_prints_a_type_with_its_schema() {
    let (code, out, _) = canon(
        &[
            "catalog",
            "show",
            "examples/catalogs/coach.yaml",
            "post.scheduled",
        ],
        "",
    );
    assert_eq!(code, 0);
    expect![[r#"
        post.scheduled — A post was scheduled for later publication.
          topic:       post.scheduled
          producers:   backend, workflow
          consumers:   notification-service, analytics
          aggregate:   userId
          idempotency: contentRef+scheduledFor
          personal:    userId (Reference)
          must not emit: streak.incremented
          version 1:
            {
              "additionalProperties": false,
              "properties": {
                "contentRef": {
                  "type": "string"
                },
                "platform": {
                  "type": "string"
                },
                "postId": {
                  "type": "string"
                },
                "scheduledFor": {
                  "format": "date-time",
                  "type": "string"
                },
                "userId": {
                  "type": "string"
                }
              },
              "required": [
                "contentRef",
                "platform",
                "scheduledFor",
                "userId"
              ],
              "type": "object"
            }
    "#]]
    .assert_eq(&out);
    let (code, _, err) = canon(
        &[
            "catalog",
            "show",
            "examples/catalogs/coach.yaml",
            "post.deleted",
        ],
        "",
    );
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "canon: examples/catalogs/coach.yaml declares no type post.deleted\n"
    );
}

#[test]
fn gen_rust_prints_what_the_sdk_compiles() {
    let (code, out, err) = canon(
        &["catalog", "gen", "rust", "examples/catalogs/coach.yaml"],
        "",
    );
    assert_eq!((code, err.as_str()), (0, ""));
    // canon-sdk's tests compile this very file and use it beside the macro's output.
    expect_test::expect_file!["../../../canon-sdk/tests/it/coach_generated.rs"].assert_eq(&out);
    let broken = temp_file(
        "broken.yaml",
        "canon: 1\nname: x\ntypes: {a: {summary: s}}\n",
    );
    let (code, out, err) = canon(&["catalog", "gen", "rust", s(&broken)], "");
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("has errors"), "{err}");
}

#[test]
fn convert_between_dialects() {
    let bme = r#"{"eventId":"e1","type":"money.TransactionCreated","payload":{"id":"t"},"metadata":{"userId":"u1","timestamp":"2025-02-24T12:00:00.000Z","correlationId":"req-1"}}"#;
    let (code, out, _) = canon(
        &["event", "convert", "--from", "bme", "--to", "lifeos"],
        bme,
    );
    assert_eq!(code, 0);
    expect![[r#"
        {"event_id":"e1","event_type":"money.TransactionCreated","timestamp":"2025-02-24T12:00:00.000Z","correlation_id":"req-1","id":"t","metadata":{"source":"urn:canon:bme","actor":"u1"}}
    "#]].assert_eq(&out);
    let (code, back, _) = canon(
        &["event", "convert", "--from", "lifeos", "--to", "bme"],
        &out,
    );
    assert_eq!(code, 0);
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(bme).unwrap(),
        serde_json::from_str(&back).unwrap(),
    );
    assert_eq!(a, b);
    let (code, _, err) = canon(
        &["event", "convert", "--from", "cloudevents", "--to", "bme"],
        r#"[{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"AA=="}]"#,
    );
    assert_eq!(code, 1);
    expect![[r#"
        <stdin>: event 0: unrepresentable at /data: bme carries JSON payloads only; this event's data is binary
        <stdin>: event 0: unrepresentable at /metadata/timestamp: bme requires timestamp but the event has none
    "#]].assert_eq(&err);
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = canon(&["event", "convert", "--from", "xml", "--to", "bme"], "");
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "canon: unknown dialect \"xml\"; expected one of cloudevents, bme, go4u, lifeos\n"
    );
    let (code, _, err) = canon(&["catalog", "check", "no/such/file.yaml"], "");
    assert_eq!(code, 2);
    assert!(
        err.starts_with("canon: cannot read no/such/file.yaml: "),
        "{err}"
    );
    let (code, _, _) = canon(&["catalog", "frobnicate"], "");
    assert_eq!(code, 2);
}

/// `canon serve` as a process, driven by the client commands, stopped with SIGTERM.
#[test]
fn serve_and_the_client_commands() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = std::env::temp_dir().join(format!("canon-cli-serve-{}-{port}", std::process::id()));
    let server = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["serve", "--catalog", "examples/catalogs/coach.yaml"])
        .arg("--data-dir")
        .arg(&data)
        .current_dir(repo())
        // The address comes from the environment; an unrelated CANON_ variable is ignored.
        .env("CANON_LISTEN", format!("127.0.0.1:{port}"))
        .env("CANON_CRASH_ROUNDS", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let remote = ["--server", server.as_str()];
    let run = |args: &[&str], stdin: &str| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&remote);
        canon(&all, stdin)
    };
    let (code, out, err) = run(
        &["publish", "examples/events/coach.json", "--batch-size", "1"],
        "",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "8 stored, 0 duplicate, 0 rejected, 0 not stored\n");
    let (code, out, _) = run(
        &["publish", "examples/events/coach.json", "--batch-size", "1"],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "0 stored, 8 duplicate, 0 rejected, 0 not stored\n")
    );
    let bad = r#"{"specversion":"1.0","id":"x","source":"/s","type":"post.generated","data":{}}"#;
    let (code, out, _) = run(&["publish", "-"], bad);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("payload-required"), "{out}");
    let (code, _, err) = run(&["publish", "-"], "{}");
    assert_eq!(code, 1);
    assert!(err.contains("invalid-event"), "{err}");
    let (code, out, err) = run(
        &[
            "sub",
            "create",
            "watch",
            "--topic",
            "post.generated",
            "--max-attempts",
            "2",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "subscription watch on post.generated\n");
    let (code, out, _) = run(&["sub", "list"], "");
    assert_eq!(code, 0);
    assert!(
        out.starts_with("NAME   TOPIC           MODE  CONSUMER  PENDING  IN FLIGHT  DLQ\n"),
        "{out}"
    );
    assert!(
        out.contains("watch  post.generated  pull  -         1"),
        "{out}"
    );
    let (code, out, _) = run(&["sub", "list", "--format", "json"], "");
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["retry"]["max_attempts"], 2);
    let (code, out, _) = run(&["dlq", "ls", "watch"], "");
    assert_eq!(
        (code, out.as_str()),
        (0, "SEQ  ID  TYPE  REASON  ATTEMPTS  AT  LAST ERROR\n")
    );
    let (code, out, _) = run(&["dlq", "redrive", "watch", "--dry-run"], "");
    assert_eq!(
        (code, out.as_str()),
        (0, "0 matched, 0 redriven (dry run)\n")
    );
    // One dead letter: a consumer pulls an event and rejects it.
    let (status, body) = http(
        port,
        "POST",
        "/v1/subscriptions/watch/pull",
        "application/json",
        r#"{"max": 1, "wait_ms": 2000}"#,
    );
    assert_eq!(status, 200, "{body}");
    let pulled: serde_json::Value = serde_json::from_str(&body).unwrap();
    let delivery = &pulled["deliveries"][0];
    let id = delivery["event"]["id"].as_str().unwrap().to_owned();
    let (status, body) = http(
        port,
        "POST",
        "/v1/subscriptions/watch/reject",
        "application/json",
        &serde_json::json!({"ack_ids": [delivery["ack_id"]], "error": "poison pill"}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let (code, out, _) = run(&["dlq", "ls", "watch"], "");
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[1].contains(&id) && rows[1].contains("rejected") && rows[1].contains("poison pill"),
        "{out}"
    );
    let (code, out, _) = run(&["dlq", "show", "watch", &id], "");
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (shown["event"]["id"].as_str(), shown["last_error"].as_str()),
        (Some(id.as_str()), Some("poison pill")),
        "{out}"
    );
    let (code, out, _) = run(&["dlq", "redrive", "watch", "--dry-run"], "");
    assert_eq!(
        (code, out.as_str()),
        (0, "1 matched, 0 redriven (dry run)\n")
    );
    let (code, out, _) = run(&["dlq", "redrive", "watch", "--id", &id], "");
    assert_eq!((code, out.as_str()), (0, "1 matched, 1 redriven\n"));
    let (code, out, _) = run(&["dlq", "ls", "watch", "--format", "json"], "");
    assert_eq!((code, out.trim()), (0, "[]"), "redriven: the DLQ is empty");
    let (code, out, _) = run(&["events", "get", &id, "--format", "json"], "");
    assert_eq!(code, 0);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (got[0]["event"]["id"].as_str(), got[0]["topic"].as_str()),
        (Some(id.as_str()), Some("post.generated")),
        "{out}"
    );
    let (code, out, _) = run(
        &["events", "chain", "bdd640fb-0667-4ad1-9c80-317fa3b1799d"],
        "",
    );
    assert_eq!(code, 0);
    assert!(out.contains("event   post.generated"), "{out}");
    assert!(out.contains("effect"), "{out}");
    let (code, _, err) = run(&["events", "get", "nope"], "");
    assert_eq!(code, 1);
    assert!(err.contains("404 not-found"), "{err}");
    let (code, out, _) = run(&["replay", "watch", "--from", "earliest"], "");
    assert_eq!((code, out.as_str()), (0, "watch replays from earliest\n"));
    let (code, out, _) = run(&["sub", "delete", "watch"], "");
    assert_eq!((code, out.as_str()), (0, "deleted watch\n"));
    // One event from flags, followed by `canon tail` filtered to its subject.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["tail", "post.generated", "--from", "earliest"])
        .args(["--subject", "user-flag", "--server", server.as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(tail.stdout.take().unwrap());
    let data = r#"{"userId":"u-flag","platform":"x","prompt":"p","draftId":"d-flag","archetype":"a","valuesMode":true}"#;
    let (code, out, err) = run(
        &[
            "publish",
            "--type",
            "post.generated",
            "--id",
            "flag-1",
            "--source",
            "/coach/backend",
            "--subject",
            "user-flag",
            "--data",
            data,
        ],
        "",
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "1 stored, 0 duplicate, 0 rejected, 0 not stored\n"),
        "{err}"
    );
    let first = lines
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("canon tail prints the event");
    assert!(
        first.ends_with("  post.generated  flag-1  user-flag"),
        "{first:?}"
    );
    // SIGTERM: a graceful shutdown, exit 0; it ends the tail, which exits 0 too.
    let killed = Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let tail_status = loop {
        if let Some(s) = tail.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = tail.kill();
            panic!("canon tail did not end with the server");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(tail_status.code(), Some(0));
    assert!(
        lines.try_iter().next().is_none(),
        "only the event with that subject"
    );
    // Unreachable now: exit 3.
    let (code, _, err) = run(&["sub", "list"], "");
    assert_eq!(code, 3, "{err}");
    let _ = std::fs::remove_dir_all(data);
}

/// Sends one HTTP/1.1 request; returns the status and the body.
fn http(port: u16, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `canon serve --app-id --app-port --port`, as `dapr run` starts a sidecar: the app's
/// subscriptions are discovered, a publish to the `pubsub` component reaches the app.
#[test]
fn serve_starts_as_one_apps_sidecar_with_the_flags_of_dapr_run() {
    use std::io::{BufRead, BufReader, Read};
    // The app: answers /dapr/subscribe, records what is POSTed to /orders.
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for stream in app.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let answer = if line.starts_with("GET /dapr/subscribe") {
                r#"[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]"#.to_owned()
            } else {
                let _ = tx.send(String::from_utf8(body).unwrap());
                String::new()
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = std::env::temp_dir().join(format!("canon-cli-dapr-{}-{port}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args([
            "serve",
            "--app-id",
            "orders-app",
            "--app-port",
            &app_port.to_string(),
        ])
        .args(["--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .current_dir(repo())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(http(port, "GET", "/v1.0/healthz", "text/plain", "").0, 204);
    // Wait for discovery, then publish as a Dapr app does (no catalog: any topic and type).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !http(port, "GET", "/v1/subscriptions", "text/plain", "")
        .1
        .contains("dapr:orders-app:pubsub:orders")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no subscription discovered"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, body) = http(
        port,
        "POST",
        "/v1.0/publish/pubsub/orders",
        "application/json",
        r#"{"orderId":"o-1"}"#,
    );
    assert_eq!(status, 204, "{body}");
    let got = rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap();
    let event: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(event["data"], serde_json::json!({"orderId": "o-1"}));
    assert_eq!(
        (event["topic"].as_str(), event["pubsubname"].as_str()),
        (Some("orders"), Some("pubsub"))
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&data);
}

/// A server started without any catalog runs schema-less and says so on start-up, and takes
/// any valid CloudEvent on a topic named in the URL.
#[test]
fn serve_without_catalogs_says_it_is_schema_less() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = std::env::temp_dir().join(format!(
        "canon-cli-schemaless-{}-{port}",
        std::process::id()
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_canon"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .env("CANON_LISTEN", format!("127.0.0.1:{port}"))
        .env("CANON_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stderr.take().unwrap());
    let mut said = false;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !said && std::time::Instant::now() < deadline {
        if let Ok(l) = lines.recv_timeout(std::time::Duration::from_millis(200)) {
            said = l.contains("schema-less");
        }
    }
    assert!(said, "no schema-less warning on start-up");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, body) = http(
        port,
        "POST",
        "/v1/topics/anything/events",
        "application/cloudevents+json",
        r#"{"specversion":"1.0","id":"s1","source":"/s","type":"whatever.happened","data":{}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("stored"), "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(data);
}
