//! The secrets API: `GET /v1.0/secrets/{store}/{name}` → `{"<name>": "<value>"}`, from
//! environment variables or a JSON file only its owner may read. Values never reach a log.

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use canon_backend::Backend;
use serde_json::Value;

use super::{DaprError, caller};
use crate::Shared;
use crate::config::{SecretStoreConfig, SecretStoreKind};

/// The configured secret stores, checked at start-up.
#[derive(Debug, Default)]
pub(crate) struct SecretStores {
    stores: BTreeMap<String, Store>,
}

enum Store {
    Env { prefix: String },
    File(BTreeMap<String, String>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the values.
        match self {
            Store::Env { prefix } => write!(f, "Env({prefix:?})"),
            Store::File(m) => write!(f, "File({} secrets)", m.len()),
        }
    }
}

impl SecretStores {
    /// Opens every store; a file store whose file is missing, not a JSON object, or readable
    /// by group or others is refused (the server does not start).
    pub(crate) fn open(configs: &[SecretStoreConfig]) -> Result<SecretStores, String> {
        let mut stores = BTreeMap::new();
        for c in configs {
            let store = match c.kind {
                SecretStoreKind::Env if c.prefix.is_empty() => {
                    return Err(format!(
                        "secret store {}: kind = \"env\" needs a prefix (e.g. \"TODO_\"); without one it would serve every variable of the server's environment",
                        c.name
                    ));
                }
                SecretStoreKind::Env => Store::Env {
                    prefix: c.prefix.clone(),
                },
                SecretStoreKind::File => {
                    let path = c.path.as_deref().ok_or_else(|| {
                        format!("secret store {}: kind = \"file\" needs a path", c.name)
                    })?;
                    Store::File(read_file(&c.name, path)?)
                }
            };
            if stores.insert(c.name.clone(), store).is_some() {
                return Err(format!("secret store {} is configured twice", c.name));
            }
        }
        Ok(SecretStores { stores })
    }

    fn get(&self, store: &str, name: &str) -> Result<Option<String>, ()> {
        match self.stores.get(store) {
            None => Err(()),
            // The variable as named, else in shell form (`database-url` → `DATABASE_URL`).
            Some(Store::Env { prefix }) => Ok(std::env::var(format!("{prefix}{name}"))
                .or_else(|_| {
                    std::env::var(format!("{prefix}{}", name.to_uppercase().replace('-', "_")))
                })
                .ok()),
            Some(Store::File(m)) => Ok(m.get(name).cloned()),
        }
    }
}

fn read_file(store: &str, path: &FsPath) -> Result<BTreeMap<String, String>, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("secret store {store}: {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "secret store {store}: {} has mode {mode:o}; it must not be readable or writable by group or others (chmod 600)",
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read(path)
        .map_err(|e| format!("secret store {store}: {}: {e}", path.display()))?;
    // The error must not quote the file: it holds secrets.
    let value: Value = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "secret store {store}: {} is not JSON (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    let Value::Object(map) = value else {
        return Err(format!(
            "secret store {store}: {} must hold a JSON object",
            path.display()
        ));
    };
    let mut out = BTreeMap::new();
    flatten("", &Value::Object(map), &mut out);
    Ok(out)
}

/// `{"db": {"password": "x"}}` → `db:password = x`; numbers and booleans as text.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}:{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {}
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// One secret.
pub(crate) async fn get<B: Backend>(
    State(app): State<Shared<B>>,
    Path((store, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = caller(&app, &headers) {
        return e.into_response();
    }
    match app.secrets.get(&store, &name) {
        Err(()) => DaprError::new(
            StatusCode::BAD_REQUEST,
            "ERR_SECRET_STORE_NOT_FOUND",
            format!("secret store {store} is not configured (dapr.secret_stores)"),
        )
        .into_response(),
        Ok(None) => DaprError::new(
            StatusCode::NOT_FOUND,
            "ERR_SECRET_GET",
            format!("secret store {store} has no secret {name}"),
        )
        .into_response(),
        Ok(Some(value)) => {
            let mut body = serde_json::Map::new();
            body.insert(name, Value::String(value));
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                Value::Object(body).to_string(),
            )
                .into_response()
        }
    }
}
