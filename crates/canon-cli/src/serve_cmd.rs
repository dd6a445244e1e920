//! `canon serve`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use canon_server::ServeError;
use canon_server::config::Config;

/// The flags of `dapr run`, for starting one app's sidecar without a configuration file.
#[derive(Debug, clap::Args)]
pub(crate) struct DaprRun {
    /// The app's id (Dapr's --app-id): it gets the pub/sub component `pubsub` and its jobs.
    #[arg(long)]
    app_id: Option<String>,
    /// The port the app listens on, on 127.0.0.1 (Dapr's --app-port): Canon asks it for
    /// /dapr/subscribe and delivers events and jobs to it.
    #[arg(long, requires = "app_id")]
    app_port: Option<u16>,
    /// The HTTP version the app serves (Dapr's --app-protocol): `http` (HTTP/1.1) or `h2c`
    /// (HTTP/2 without TLS).
    #[arg(long, requires = "app_port", value_parser = ["http", "h2c"], default_value = "http")]
    app_protocol: String,
    /// The port Canon listens on, on 127.0.0.1 (Dapr's --dapr-http-port; instead of --listen).
    #[arg(long, alias = "dapr-http-port", conflicts_with = "listen")]
    port: Option<u16>,
    /// Dapr resource files or directories: Subscription and Component YAML (repeatable).
    #[arg(long, alias = "components-path")]
    resources_path: Vec<PathBuf>,
}

impl DaprRun {
    fn apply(self, config: &mut Config) {
        if let Some(port) = self.port {
            config.listen = format!("127.0.0.1:{port}");
        }
        if let (Some(id), Some(port)) = (self.app_id, self.app_port) {
            config.dapr.apps.retain(|a| a.id != id);
            config.dapr.apps.push(canon_server::config::DaprApp {
                id,
                url: format!("http://127.0.0.1:{port}"),
                protocol: if self.app_protocol == "h2c" {
                    canon_server::PushProtocol::H2c
                } else {
                    canon_server::PushProtocol::Http
                },
            });
        }
        config.dapr.resources.extend(self.resources_path);
    }
}

/// Runs the server until Ctrl-C or SIGTERM, then shuts down gracefully.
pub(crate) fn run(
    config_file: Option<PathBuf>,
    catalogs: Vec<PathBuf>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    backend: Option<String>,
    log_json: bool,
    dapr: DaprRun,
) -> ExitCode {
    init_logging(log_json);
    let fail = |code: u8, message: String| {
        let _ = writeln!(std::io::stderr(), "canon serve: {message}");
        ExitCode::from(code)
    };
    let mut config = match Config::load(config_file.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(2, e.to_string()),
    };
    config.catalogs.extend(catalogs);
    if let Some(l) = listen {
        config.listen = l;
    }
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    if let Some(b) = backend {
        config.backend = b;
    }
    dapr.apply(&mut config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(3, format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(canon_server::serve(config, shutdown_signal(), None));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (ServeError::Config(_) | ServeError::Catalog { .. } | ServeError::Engine(_))) => {
            fail(2, e.to_string())
        }
        Err(e) => fail(3, e.to_string()),
    }
}

/// Logs to stderr, as text or JSON lines, filtered by `CANON_LOG` (default `info`).
pub(crate) fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CANON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down: finishing in-flight requests and deliveries");
}
