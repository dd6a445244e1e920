//! `canon serve`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use canon_server::ServeError;
use canon_server::config::Config;

/// Runs the server until Ctrl-C or SIGTERM, then shuts down gracefully.
pub(crate) fn run(
    config_file: Option<PathBuf>,
    catalogs: Vec<PathBuf>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    log_json: bool,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CANON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if log_json {
        builder.json().init();
    } else {
        builder.init();
    }
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

async fn shutdown_signal() {
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
