//! The keys the delivery engine orders and deduplicates by, computed from the catalog.

use canon_envelope::{CloudEvent, Data};
use serde_json::Value;

use crate::catalog::Catalog;

/// Why a key could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The type is not in the catalog. Validate the event first.
    #[error("type {0} is not declared in the catalog")]
    UnknownType(String),
    /// The payload is absent or not JSON. Validate the event first.
    #[error("the payload is not a JSON document")]
    PayloadNotJson,
    /// A key field is missing or null in the payload. Validate the event first.
    #[error("key field {0} is missing from the payload")]
    MissingField(String),
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn payload(event: &CloudEvent) -> Result<Value, KeyError> {
    match &event.data {
        Some(Data::Json(raw)) => {
            serde_json::from_str(raw.get()).map_err(|_| KeyError::PayloadNotJson)
        }
        _ => Err(KeyError::PayloadNotJson),
    }
}

impl Catalog {
    /// The idempotency key of an event whose type declares one: the type name and the key
    /// fields' values, as a compact JSON array (`["challenge.completed","u1","c9","2025-…"]`),
    /// so that no choice of values can make two different keys collide. `None` if the type
    /// declares no idempotency key.
    pub fn idempotency_key(&self, event: &CloudEvent) -> Result<Option<String>, KeyError> {
        let (ty, _) = self
            .lookup(&event.ty)
            .ok_or_else(|| KeyError::UnknownType(event.ty.clone()))?;
        if ty.idempotency.is_empty() {
            return Ok(None);
        }
        let payload = payload(event)?;
        let mut parts = vec![Value::String(ty.name.clone())];
        for path in &ty.idempotency {
            match path.lookup(&payload) {
                Some(v) if !v.is_null() => parts.push(Value::String(scalar_text(v))),
                _ => return Err(KeyError::MissingField(path.to_string())),
            }
        }
        Ok(Some(Value::Array(parts).to_string()))
    }

    /// The aggregate key of an event: the value of the type's aggregate field. `None` if the
    /// type declares none.
    pub fn aggregate_key(&self, event: &CloudEvent) -> Result<Option<String>, KeyError> {
        let (ty, _) = self
            .lookup(&event.ty)
            .ok_or_else(|| KeyError::UnknownType(event.ty.clone()))?;
        let Some(path) = &ty.aggregate else {
            return Ok(None);
        };
        let payload = payload(event)?;
        match path.lookup(&payload) {
            Some(v) if !v.is_null() => Ok(Some(scalar_text(v))),
            _ => Err(KeyError::MissingField(path.to_string())),
        }
    }

    /// The ordering key: the catalog's aggregate key, else the event's `partitionkey`.
    pub fn ordering_key(&self, event: &CloudEvent) -> Result<Option<String>, KeyError> {
        match self.aggregate_key(event) {
            Ok(Some(k)) => Ok(Some(k)),
            Ok(None) | Err(KeyError::UnknownType(_)) => {
                Ok(event.partition_key().map(str::to_owned))
            }
            Err(e) => Err(e),
        }
    }
}
