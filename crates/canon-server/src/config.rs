//! The server's configuration: one TOML file (every setting documented once, in
//! `canon.example.toml`), overridden by `CANON_*` environment variables (`CANON_LISTEN`,
//! `CANON_AUTH__JWT__HS256_SECRET`: nested keys joined by `__`), overridden by flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `canon serve` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to bind.
    pub listen: String,
    /// Where events are stored: `embedded` (in `data_dir`), `embedded://PATH`,
    /// `nats://HOST:PORT[?namespace=NAME]` or `postgres://USER@HOST/DB[?schema=NAME]`.
    pub backend: String,
    /// The embedded backend's data directory.
    pub data_dir: PathBuf,
    /// `sync` (fdatasync before acknowledging) or `lose-recent-on-os-crash`.
    pub durability: DurabilitySetting,
    /// Catalog files, or directories of `*.yaml` catalogs.
    pub catalogs: Vec<PathBuf>,
    /// Largest accepted request body in bytes (larger: 413).
    pub body_limit: usize,
    /// Longest a request may take in milliseconds, long polls aside (longer: 408).
    pub request_timeout_ms: u64,
    /// Longest a graceful shutdown waits for in-flight requests and deliveries.
    pub shutdown_grace_ms: u64,
    /// Topics that take types no catalog declares.
    pub schemaless_topics: Vec<String>,
    /// Dedup window and retention of every topic not named in `topics`.
    pub topic_defaults: TopicSettings,
    /// Dedup window and retention per topic, by name; what a topic leaves unset comes from
    /// `topic_defaults`.
    pub topics: BTreeMap<String, TopicSettings>,
    /// Push delivery.
    pub push: PushConfig,
    /// Who may call the API.
    pub auth: AuthConfig,
    /// The Dapr sidecar API (docs/dapr.md).
    pub dapr: DaprConfig,
    /// Transactional outboxes whose rows this server relays into its backend (docs/outbox.md).
    pub outbox: Vec<OutboxConfig>,
}

/// An outbox table this server relays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// The producer's database, a PostgreSQL URL.
    pub url: String,
    /// The outbox table (`name` or `schema.name`).
    #[serde(default = "default_outbox_table")]
    pub table: String,
    /// The service whose events these are: rows of types it does not declare as a producer
    /// are rejected. Unset: not checked.
    pub producer: Option<String>,
    /// Rows read per round.
    #[serde(default = "default_outbox_batch")]
    pub batch: usize,
    /// How often to look without a notification, in ms.
    #[serde(default = "default_outbox_poll")]
    pub poll_ms: u64,
}

fn default_outbox_table() -> String {
    "canon_outbox".to_owned()
}

fn default_outbox_batch() -> usize {
    1000
}

fn default_outbox_poll() -> u64 {
    1000
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8480".to_owned(),
            backend: "embedded".to_owned(),
            data_dir: PathBuf::from("canon-data"),
            durability: DurabilitySetting::Sync,
            catalogs: Vec::new(),
            body_limit: 4 * 1024 * 1024,
            request_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            schemaless_topics: Vec::new(),
            topic_defaults: TopicSettings::default(),
            topics: BTreeMap::new(),
            push: PushConfig::default(),
            auth: AuthConfig::default(),
            dapr: DaprConfig::default(),
            outbox: Vec::new(),
        }
    }
}

/// What the Dapr-compatible API serves: pub/sub components, state stores, secret stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaprConfig {
    /// Pub/sub component names apps publish through, all on this server's backend.
    pub pubsubs: Vec<PubsubConfig>,
    /// State store names (each a key-value bucket of the backend).
    pub state_stores: Vec<String>,
    /// Secret stores.
    pub secret_stores: Vec<SecretStoreConfig>,
    /// Apps Canon delivers to as their sidecar would: subscriptions come from each app's
    /// `GET /dapr/subscribe` and from `resources`.
    pub apps: Vec<DaprApp>,
    /// Dapr resource files (or directories of `*.yaml`): `Subscription` (v1alpha1, v2alpha1)
    /// and `Component` documents (pubsub and state components register their names).
    pub resources: Vec<PathBuf>,
}

/// An app Canon delivers to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaprApp {
    /// The app id (`scopes` of declarative subscriptions name it).
    pub id: String,
    /// Its base URL (`http://127.0.0.1:8000`).
    pub url: String,
    /// The HTTP version it serves: `http` (HTTP/1.1) or `h2c` (HTTP/2 without TLS), as
    /// Dapr's `--app-protocol`.
    #[serde(default)]
    pub protocol: crate::subs::PushProtocol,
}

impl Default for DaprConfig {
    fn default() -> Self {
        DaprConfig {
            pubsubs: vec![PubsubConfig {
                name: "pubsub".to_owned(),
                catalogs: true,
            }],
            state_stores: vec!["statestore".to_owned()],
            secret_stores: Vec::new(),
            apps: Vec::new(),
            resources: Vec::new(),
        }
    }
}

/// One pub/sub component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubConfig {
    /// The component name in `/v1.0/publish/{name}/...`.
    pub name: String,
    /// Whether the server's catalogs are enforced on it (declared producers, schemas, topics).
    /// Without, it takes any topic and type, as Dapr does.
    #[serde(default = "yes")]
    pub catalogs: bool,
}

fn yes() -> bool {
    true
}

/// One secret store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretStoreConfig {
    /// The store name in `/v1.0/secrets/{name}/...`.
    pub name: String,
    /// `env` (environment variables) or `file` (a JSON file).
    pub kind: SecretStoreKind,
    /// `env`: only variables with this prefix, which the secret name leaves out.
    #[serde(default)]
    pub prefix: String,
    /// `file`: the JSON file (an object; nested objects flatten with `:`). It must not be
    /// readable or writable by group or others.
    pub path: Option<PathBuf>,
}

/// Where a secret store reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretStoreKind {
    /// Environment variables.
    Env,
    /// A JSON file.
    File,
}

/// How durable an acknowledged write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilitySetting {
    /// On disk before it is acknowledged.
    Sync,
    /// In the operating system's buffers: survives a crash of canon, not of the machine (synced
    /// in the background every 50 ms, so a machine crash loses about the last 50 ms).
    LoseRecentOnOsCrash,
}

/// A topic's dedup window and retention (docs/specs/delivery.md, P4, P5 and L2). Unset: the
/// default's, then the built-in one (a 24-hour window, events kept forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicSettings {
    /// How long an event's (source, id) and idempotency key are remembered, in ms.
    pub dedup_window_ms: Option<u64>,
    /// Events older than this are deleted, in ms (0: no age limit).
    pub max_age_ms: Option<u64>,
    /// The oldest events are deleted while the topic holds more than this, in bytes (0: no
    /// size limit).
    pub max_bytes: Option<u64>,
}

/// Push delivery defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// How long a subscriber may take to answer, in milliseconds (longer: retry).
    pub timeout_ms: u64,
    /// Requests in flight per push subscription, unless the subscription says otherwise.
    pub concurrency: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            timeout_ms: 10_000,
            concurrency: 32,
        }
    }
}

/// Credentials. With none configured the server binds only loopback addresses.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// API keys, sent as `Authorization: Bearer <key>`.
    pub api_keys: Vec<ApiKey>,
    /// JWT bearer tokens.
    pub jwt: Option<JwtConfig>,
    /// Services with the admin role (they manage subscriptions and DLQs).
    pub admins: Vec<String>,
}

impl AuthConfig {
    /// Whether any credential is configured.
    pub fn enabled(&self) -> bool {
        !self.api_keys.is_empty() || self.jwt.is_some()
    }
}

/// One API key and the service it speaks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The service, as the catalogs name it.
    pub service: String,
    /// The key's SHA-256, hex (`printf %s KEY | sha256sum`): the file need not hold the key.
    pub sha256: Option<String>,
    /// The key itself, for development.
    pub key: Option<String>,
}

/// How JWT bearer tokens are checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// PEM file of an RSA or EC public key (RS256/ES256).
    pub public_key_file: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// The claim that names the service (default `sub`).
    #[serde(default = "default_claim")]
    pub service_claim: String,
}

fn default_claim() -> String {
    "sub".to_owned()
}

/// The top-level settings, for the environment filter.
const SETTINGS: &[&str] = &[
    "listen",
    "backend",
    "data_dir",
    "durability",
    "catalogs",
    "body_limit",
    "request_timeout_ms",
    "shutdown_grace_ms",
    "schemaless_topics",
    "topic_defaults",
    "topics",
    "push",
    "auth",
    "dapr",
    "outbox",
];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The backend configuration of topic `name`: its own settings, then `topic_defaults`,
    /// then the built-in defaults.
    pub fn topic(&self, name: &str) -> canon_backend::TopicConfig {
        let own = self.topics.get(name).copied().unwrap_or_default();
        let d = self.topic_defaults;
        let built_in = canon_backend::TopicConfig::new(name);
        let limit = |v: Option<u64>| v.filter(|v| *v > 0);
        canon_backend::TopicConfig {
            dedup_window: own
                .dedup_window_ms
                .or(d.dedup_window_ms)
                .map_or(built_in.dedup_window, Duration::from_millis),
            max_age: limit(own.max_age_ms.or(d.max_age_ms)).map(Duration::from_millis),
            max_bytes: limit(own.max_bytes.or(d.max_bytes)),
            ..built_in
        }
    }

    /// Defaults, then the file (if any), then `CANON_*` variables.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        let mut f = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("{} does not exist", file.display())));
            }
            f = f.merge(Toml::file(file));
        }
        // Only the variables that name a setting: CANON_* is a shared namespace.
        let env = Env::prefixed("CANON_")
            .filter(|k| {
                let top = k.as_str().split("__").next().unwrap_or("");
                SETTINGS.iter().any(|s| s.eq_ignore_ascii_case(top))
            })
            .split("__");
        f.merge(env)
            .extract()
            .map_err(|e| ConfigError(e.to_string()))
    }
}
