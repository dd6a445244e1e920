//! `canon relay`: one outbox table's rows into a backend, through the catalogs, until Ctrl-C
//! or SIGTERM. Exit codes as `canon serve`'s: 2 for a configuration that cannot work (bad
//! flags, catalogs, backend URL), 3 when the backend cannot be reached.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use canon_embedded::Durability;
use canon_engine::Engine;
use canon_outbox::{Outbox, Relay, RelayConfig};
use canon_server::{AnyBackend, Location};

use crate::serve_cmd::{init_logging, shutdown_signal};

#[derive(Debug, clap::Args)]
pub(crate) struct RelayArgs {
    /// The producer's database, where the outbox table is (a PostgreSQL URL).
    #[arg(long)]
    outbox: String,
    /// The outbox table (created if missing).
    #[arg(long, default_value = "canon_outbox")]
    table: String,
    /// The backend to publish to: embedded://PATH, nats://HOST:PORT, postgres://USER@HOST/DB.
    #[arg(long)]
    backend: String,
    /// A catalog file or a directory of them (repeatable). Without, every topic is schema-less
    /// and each row must name its topic.
    #[arg(long)]
    catalog: Vec<PathBuf>,
    /// The service the events come from: rows of types it does not produce are rejected.
    #[arg(long)]
    producer: Option<String>,
    /// Rows per round.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Look for rows this often without a notification, in ms.
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

pub(crate) fn run(args: RelayArgs) -> ExitCode {
    init_logging(args.log_json);
    let fail = |code: u8, message: String| {
        let _ = writeln!(std::io::stderr(), "canon relay: {message}");
        ExitCode::from(code)
    };
    let outbox = match Outbox::new(&args.table) {
        Ok(o) => o,
        Err(e) => return fail(2, e.to_string()),
    };
    let location = match Location::parse(&args.backend, std::path::Path::new("canon-data")) {
        Ok(l) => l,
        Err(e) => return fail(2, e.to_string()),
    };
    let catalogs = match canon_server::load_catalogs(&args.catalog) {
        Ok(c) => c,
        Err(e) => return fail(2, e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(3, format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let backend = match AnyBackend::open(&location, Durability::Sync).await {
            Ok(b) => b,
            Err(e) => return fail(3, format!("{}: {e}", location.display())),
        };
        let engine = match Engine::new(backend, catalogs).await {
            Ok(e) => Arc::new(e),
            Err(e) => return fail(2, e.to_string()),
        };
        tracing::info!(table = outbox.table(), backend = %location.display(), "relaying");
        let relay = Relay::new(
            RelayConfig {
                url: args.outbox,
                outbox,
                batch: args.batch,
                poll: Duration::from_millis(args.poll_ms),
                producer: args.producer,
            },
            engine,
        );
        match relay.run(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(3, e.to_string()),
        }
    })
}
