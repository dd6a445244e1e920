//! `canon`: the command line of Canon.
//!
//! Exit codes (documented in README.md): 0 success, 1 invalid input (a catalog with errors, an
//! invalid event, a breaking diff, an event that cannot be converted), 2 usage (bad flags, an
//! unreadable file, an unusable configuration), 3 the server failed while running (the port is
//! taken, storage failed).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

canon_server::jemalloc!();

mod catalog_cmd;
mod client_cmd;
mod event_cmd;
mod relay_cmd;
mod serve_cmd;

/// Canon: the domain-event backbone.
#[derive(Debug, Parser)]
#[command(name = "canon", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with event catalogs (one YAML file per application).
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Work with single events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Publish events to a running server: a file or stdin (one event or a JSON array), or one
    /// event from flags.
    Publish {
        /// A file of events; `-` or nothing reads stdin (unless --type is given).
        file: Option<String>,
        #[command(flatten)]
        event: client_cmd::EventFlags,
        /// The events' dialect (bme, go4u, lifeos; default cloudevents).
        #[arg(long)]
        dialect: Option<String>,
        /// Publish to this topic by name (schema-less topics).
        #[arg(long)]
        topic: Option<String>,
        /// Store the valid events of a batch and report the others.
        #[arg(long)]
        partial: bool,
        /// Events per request.
        #[arg(long, default_value_t = 500)]
        batch_size: usize,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        #[command(flatten)]
        remote: client_cmd::Remote,
    },
    /// Follow a topic's events as they are stored.
    Tail {
        /// The topic.
        topic: String,
        /// now (default), earliest, a sequence number or an RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Only these types (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only this subject.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        #[command(flatten)]
        remote: client_cmd::Remote,
    },
    /// Manage subscriptions on a running server.
    Sub {
        #[command(subcommand)]
        command: client_cmd::SubCommand,
        #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
        format: Format,
        #[command(flatten)]
        remote: client_cmd::Remote,
    },
    /// Dead-letter queues of subscriptions on a running server.
    Dlq {
        #[command(subcommand)]
        command: client_cmd::DlqCommand,
        #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
        format: Format,
        #[command(flatten)]
        remote: client_cmd::Remote,
    },
    /// Move a subscription back to a position: later events are delivered again (admin).
    Replay {
        /// The subscription.
        subscription: String,
        /// earliest, latest or an RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// This event and everything after it.
        #[arg(long)]
        event_id: Option<String>,
        #[command(flatten)]
        remote: client_cmd::Remote,
    },
    /// Look events up on a running server.
    Events {
        #[command(subcommand)]
        command: client_cmd::EventsCommand,
        #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
        format: Format,
        #[command(flatten)]
        remote: client_cmd::Remote,
    },
    /// Run the HTTP API (embedded backend; data in ./canon-data unless configured).
    Serve {
        /// The TOML configuration file (every setting: canon.example.toml).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// A catalog file or a directory of them (repeatable; adds to the configured ones).
        #[arg(long)]
        catalog: Vec<std::path::PathBuf>,
        /// Address to bind (default 127.0.0.1:8480).
        #[arg(long)]
        listen: Option<String>,
        /// Data directory of the embedded backend (default ./canon-data).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// The backend: embedded, embedded://PATH, nats://HOST:PORT, postgres://USER@HOST/DB.
        #[arg(long)]
        backend: Option<String>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        log_json: bool,
        #[command(flatten)]
        dapr: serve_cmd::DaprRun,
    },
    /// Move a transactional outbox's rows into a backend (docs/outbox.md), until Ctrl-C or
    /// SIGTERM. For the embedded backend, configure [[outbox]] in canon serve instead.
    Relay(relay_cmd::RelayArgs),
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Lint catalog files: every problem with file, line, column, code and a hint.
    Check {
        /// Catalog files.
        #[arg(required = true)]
        files: Vec<String>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Validate events against a catalog: envelope, type, version, payload schema, personal data.
    Validate {
        /// The catalog file.
        #[arg(long)]
        catalog: String,
        /// A file holding one event or a JSON array of events; `-` or nothing reads stdin.
        event: Option<String>,
        /// The events' dialect; defaults to the catalog's.
        #[arg(long)]
        dialect: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Compare two revisions of a catalog; fails on breaking changes without a version bump.
    Diff {
        /// The old revision.
        old: String,
        /// The new revision.
        new: String,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Show a catalog's types, or one type with its expanded JSON Schema per version.
    Show {
        /// The catalog file.
        file: String,
        /// A type name.
        #[arg(name = "TYPE")]
        ty: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Print code for a catalog's types: exactly what `canon_sdk::catalog!` generates.
    Gen {
        /// The language (only `rust`).
        #[arg(value_enum)]
        lang: Lang,
        /// The catalog file.
        file: String,
    },
}

/// A language `canon catalog gen` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Lang {
    /// Rust, for the canon-sdk crate.
    Rust,
}

#[derive(Debug, Subcommand)]
enum EventCommand {
    /// Convert events between dialects (cloudevents, bme, go4u, lifeos), losslessly.
    Convert {
        /// Dialect of the input.
        #[arg(long)]
        from: String,
        /// Dialect of the output.
        #[arg(long)]
        to: String,
        /// A file holding one event or a JSON array of events; `-` or nothing reads stdin.
        input: Option<String>,
    },
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people.
    Human,
    /// For scripts: one JSON document on stdout.
    Json,
}

/// How a command ended.
#[derive(Debug)]
enum Outcome {
    Ok,
    Invalid,
}

/// A usage problem: exit code 2.
#[derive(Debug)]
struct Usage(String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let result: Result<Outcome, client_cmd::Failure> = match cli.command {
        Command::Serve {
            config,
            catalog,
            listen,
            data_dir,
            backend,
            log_json,
            dapr,
        } => {
            drop(out);
            return serve_cmd::run(config, catalog, listen, data_dir, backend, log_json, dapr);
        }
        Command::Relay(args) => {
            drop(out);
            return relay_cmd::run(args);
        }
        Command::Catalog(CatalogCommand::Check { files, format }) => {
            catalog_cmd::check(&mut out, &files, format).map_err(Into::into)
        }
        Command::Catalog(CatalogCommand::Validate {
            catalog,
            event,
            dialect,
            format,
        }) => catalog_cmd::validate(
            &mut out,
            &catalog,
            event.as_deref(),
            dialect.as_deref(),
            format,
        )
        .map_err(Into::into),
        Command::Catalog(CatalogCommand::Diff { old, new, format }) => {
            catalog_cmd::diff(&mut out, &old, &new, format).map_err(Into::into)
        }
        Command::Catalog(CatalogCommand::Gen {
            lang: Lang::Rust,
            file,
        }) => catalog_cmd::gen_rust(&mut out, &file).map_err(client_cmd::Failure::Usage),
        Command::Catalog(CatalogCommand::Show { file, ty, format }) => {
            catalog_cmd::show(&mut out, &file, ty.as_deref(), format).map_err(Into::into)
        }
        Command::Event(EventCommand::Convert { from, to, input }) => {
            event_cmd::convert(&mut out, &from, &to, input.as_deref()).map_err(Into::into)
        }
        Command::Publish {
            file,
            event,
            dialect,
            topic,
            partial,
            batch_size,
            format,
            remote,
        } => client_cmd::publish(
            &mut out,
            &remote,
            file.as_deref(),
            event,
            dialect.as_deref(),
            topic.as_deref(),
            partial,
            batch_size,
            format,
        ),
        Command::Tail {
            topic,
            from,
            types,
            subject,
            format,
            remote,
        } => client_cmd::tail(
            &mut out,
            &remote,
            &topic,
            from.as_deref(),
            &types,
            subject.as_deref(),
            format,
        ),
        Command::Sub {
            command,
            format,
            remote,
        } => client_cmd::sub(&mut out, &remote, command, format),
        Command::Dlq {
            command,
            format,
            remote,
        } => client_cmd::dlq(&mut out, &remote, command, format),
        Command::Replay {
            subscription,
            from,
            event_id,
            remote,
        } => client_cmd::replay(
            &mut out,
            &remote,
            &subscription,
            from.as_deref(),
            event_id.as_deref(),
        ),
        Command::Events {
            command,
            format,
            remote,
        } => client_cmd::events(&mut out, &remote, command, format),
    };
    let _ = out.flush();
    let (code, message) = match result {
        Ok(Outcome::Ok) => (0, None),
        Ok(Outcome::Invalid) => (1, None),
        Err(client_cmd::Failure::Usage(Usage(m))) => (2, Some(m)),
        Err(client_cmd::Failure::Refused(m)) => (1, Some(m)),
        Err(client_cmd::Failure::Unreachable(m)) => (3, Some(m)),
    };
    if let Some(m) = message {
        let _ = writeln!(std::io::stderr(), "canon: {m}");
    }
    ExitCode::from(code)
}

/// Reads a file, or stdin for `-` / nothing.
fn read_input(path: Option<&str>) -> Result<(String, Vec<u8>), Usage> {
    match path {
        None | Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| Usage(format!("cannot read stdin: {e}")))?;
            Ok(("<stdin>".into(), buf))
        }
        Some(p) => std::fs::read(p)
            .map(|b| (p.to_owned(), b))
            .map_err(|e| Usage(format!("cannot read {p}: {e}"))),
    }
}

/// Splits input into events: a JSON array gives its elements (and `true`), anything else is one
/// event (and `false`).
fn split_events(input: &[u8]) -> (bool, Vec<&[u8]>) {
    let starts_array = input.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if starts_array
        && let Ok(items) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(input)
    {
        return (true, items.iter().map(|r| r.get().as_bytes()).collect());
    }
    (false, vec![input])
}

fn io(e: std::io::Error) -> Usage {
    Usage(format!("cannot write output: {e}"))
}

#[cfg(test)]
mod tests {
    /// The options `canon_server::jemalloc!` exports reach jemalloc: without them it starts no
    /// background thread, and freed memory is returned inline on the threads that free it.
    #[test]
    fn the_allocator_reads_canons_options() {
        let background = tikv_jemalloc_ctl::opt::background_thread::read();
        assert_eq!(background.ok(), Some(true));
    }
}
