//! The catalog file as written: serde structures mirroring docs/catalog-format.md one to one.
//! Every struct refuses unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileModel {
    pub(crate) canon: u32,
    pub(crate) name: String,
    pub(crate) summary: Option<String>,
    pub(crate) naming: Option<NamingModel>,
    pub(crate) naming_prefix: Option<String>,
    pub(crate) dialect: Option<String>,
    pub(crate) compatibility: Option<Compatibility>,
    #[serde(default)]
    pub(crate) services: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) topics: BTreeMap<String, TopicModel>,
    pub(crate) defaults: Option<DefaultsModel>,
    pub(crate) types: BTreeMap<String, TypeModel>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum NamingModel {
    Preset(String),
    Pattern { pattern: String },
}

/// The compatibility a catalog promises between versions of a payload (Confluent Schema
/// Registry semantics applied to JSON Schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    /// New readers can read old events (add optional fields, widen types).
    #[default]
    Backward,
    /// Old readers can read new events (add fields old readers ignore, narrow types).
    Forward,
    /// Both.
    Full,
    /// No promise.
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicModel {
    pub(crate) summary: Option<String>,
    #[serde(default)]
    pub(crate) types: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultsModel {
    pub(crate) delivery: Option<DeliveryModel>,
}

/// Delivery defaults for subscriptions to a catalog's topics.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryModel {
    /// `aggregate` (ordered per aggregate key) or `none`.
    pub ordering: Option<Ordering>,
    /// Deliveries before dead-lettering.
    pub max_attempts: Option<u32>,
    /// First retry delay, e.g. `1s`.
    pub initial_backoff: Option<String>,
    /// Retry delay cap, e.g. `5m`.
    pub max_backoff: Option<String>,
    /// Backoff growth factor.
    pub multiplier: Option<f64>,
    /// +/- fraction of randomness.
    pub jitter: Option<f64>,
}

/// Whether deliveries are ordered per aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// At most one event in flight per aggregate key.
    Aggregate,
    /// Full parallelism.
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TypeModel {
    pub(crate) summary: String,
    pub(crate) producers: Vec<String>,
    #[serde(default)]
    pub(crate) consumers: Vec<String>,
    pub(crate) topic: Option<String>,
    pub(crate) aggregate: Option<String>,
    pub(crate) idempotency: Option<String>,
    #[serde(default)]
    pub(crate) personal_data: BTreeMap<String, PiiRule>,
    pub(crate) consent: Option<String>,
    pub(crate) handlers: Option<HandlersModel>,
    pub(crate) deprecated: Option<DeprecationModel>,
    pub(crate) version: Option<Value>,
    pub(crate) payload: Option<Value>,
    pub(crate) schema: Option<Value>,
    pub(crate) versions: Option<Vec<VersionModel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VersionModel {
    pub(crate) version: Value,
    pub(crate) payload: Option<Value>,
    pub(crate) schema: Option<Value>,
}

/// The rule for one personal-data field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiRule {
    /// Must never carry data.
    Forbidden,
    /// Must hold a hash reference (`sha256:<hex>`).
    Hashed,
    /// An opaque id; the raw data lives elsewhere.
    Reference,
    /// Carried in clear on purpose.
    Allowed,
}

/// What handlers of a type may and must not emit.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HandlersModel {
    /// If set, the only types a handler may emit.
    pub may_emit: Option<Vec<String>>,
    /// Types a handler must never emit.
    #[serde(default)]
    pub must_not_emit: Vec<String>,
    /// The rule in words.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum DeprecationModel {
    Flag(bool),
    Reason(String),
    Detailed(DeprecationDetail),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeprecationDetail {
    pub(crate) reason: Option<String>,
    pub(crate) replaced_by: Option<String>,
    pub(crate) since: Option<Value>,
}
