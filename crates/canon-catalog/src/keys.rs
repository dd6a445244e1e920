//! The keys the delivery engine orders and deduplicates by, computed from the catalog.

use canon_envelope::{CloudEvent, Data};
use serde_json::Value;

use crate::catalog::{Catalog, EventType};

/// Why a key could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The payload is absent or not JSON. Validate the event first.
    #[error("the payload is not a JSON document")]
    PayloadNotJson,
    /// A key field is missing or null in the payload. Validate the event first.
    #[error("key field {0} is missing from the payload")]
    MissingField(String),
}

/// The keys of one event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keys {
    /// The idempotency key, if the type declares one.
    pub idempotency: Option<String>,
    /// The aggregate key, if the type declares one.
    pub aggregate: Option<String>,
    /// The ordering key: the aggregate key, else the event's `partitionkey`.
    pub ordering: Option<String>,
}

impl EventType {
    /// The idempotency key: the type name and the key fields' values as a compact JSON array
    /// (`["challenge.completed","u1","c9","2025-…"]`). The values keep their JSON types, so no
    /// choice of values can make two different keys collide (`1` and `"1"` differ). `None` if
    /// the type declares no idempotency key.
    pub fn idempotency_key(&self, payload: &Value) -> Result<Option<String>, KeyError> {
        if self.idempotency.is_empty() {
            return Ok(None);
        }
        let mut parts = Vec::with_capacity(1 + self.idempotency.len());
        parts.push(Value::String(self.name.clone()));
        for path in &self.idempotency {
            match path.lookup(payload) {
                Some(v) if !v.is_null() => parts.push(v.clone()),
                _ => return Err(KeyError::MissingField(path.to_string())),
            }
        }
        Ok(Some(Value::Array(parts).to_string()))
    }

    /// The aggregate key: the aggregate field's value (a string as is, anything else as JSON).
    /// `None` if the type declares none.
    pub fn aggregate_key(&self, payload: &Value) -> Result<Option<String>, KeyError> {
        let Some(path) = &self.aggregate else {
            return Ok(None);
        };
        match path.lookup(payload) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) if !v.is_null() => Ok(Some(v.to_string())),
            _ => Err(KeyError::MissingField(path.to_string())),
        }
    }
}

impl Catalog {
    /// Every key of an event, from one parse of its payload. A type the catalog does not declare
    /// has only the `partitionkey` as its ordering key.
    pub fn keys(&self, event: &CloudEvent) -> Result<Keys, KeyError> {
        let partition = || event.partition_key().map(str::to_owned);
        let Some((ty, _)) = self.lookup(&event.ty) else {
            return Ok(Keys {
                ordering: partition(),
                ..Keys::default()
            });
        };
        if ty.idempotency.is_empty() && ty.aggregate.is_none() {
            return Ok(Keys {
                ordering: partition(),
                ..Keys::default()
            });
        }
        let payload: Value = match &event.data {
            Some(Data::Json(raw)) => {
                serde_json::from_str(raw.get()).map_err(|_| KeyError::PayloadNotJson)?
            }
            _ => return Err(KeyError::PayloadNotJson),
        };
        let aggregate = ty.aggregate_key(&payload)?;
        Ok(Keys {
            idempotency: ty.idempotency_key(&payload)?,
            ordering: aggregate.clone().or_else(partition),
            aggregate,
        })
    }
}
