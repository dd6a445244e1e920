//! The delivery engine's front: catalogs applied to a backend. It creates the catalogs' topics,
//! routes each event type to its topic, refuses events that break their catalog (schema,
//! personal-data rules, declared producers), and hands the backend the keys the catalog defines:
//! the ordering key (the type's aggregate key, else `partitionkey`) and the idempotency key.
//! It knows nothing about HTTP; `canon serve` and the SDK sit on top of it.

use std::collections::HashMap;

use canon_backend::{Backend, BackendError, PublishOutcome, PublishRequest, TopicConfig};
use canon_catalog::{Catalog, KeyError, Violation};
use canon_envelope::CloudEvent;

/// Why the engine refused something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Event `index` of the batch breaks its catalog; nothing of the batch was stored. Fix the
    /// event.
    #[error("event {index} is invalid: {}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Its position in the batch.
        index: usize,
        /// Every reason.
        violations: Vec<Violation>,
    },
    /// The producer is not one the catalog declares for the type.
    #[error("{producer} is not a declared producer of {ty}")]
    NotAProducer {
        /// Who published.
        producer: String,
        /// The type.
        ty: String,
    },
    /// A batch's events travel on different topics; a batch is atomic only within one topic.
    #[error("a batch must stay on one topic; it has events for {0} and {1}")]
    MixedTopics(String, String),
    /// Two catalogs declare the same type.
    #[error("type {0} is declared by more than one catalog")]
    DuplicateType(String),
    /// A key could not be computed (the payload lacks a key field).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The backend refused or failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// An event to publish, with the optional optimistic-concurrency expectation of its aggregate.
#[derive(Debug, Clone, PartialEq)]
pub struct Submit {
    /// The event.
    pub event: CloudEvent,
    /// Refuse unless the aggregate's last stored sequence is this (0: new aggregate).
    pub expected_sequence: Option<u64>,
}

impl From<CloudEvent> for Submit {
    fn from(event: CloudEvent) -> Self {
        Submit {
            event,
            expected_sequence: None,
        }
    }
}

/// Catalogs over a backend.
#[derive(Debug)]
pub struct Engine<B> {
    backend: B,
    catalogs: Vec<Catalog>,
    /// Type name → (catalog index, topic).
    routes: HashMap<String, (usize, String)>,
}

impl<B: Backend> Engine<B> {
    /// Creates every topic the catalogs declare and routes their types.
    pub async fn new(backend: B, catalogs: Vec<Catalog>) -> Result<Self, EngineError> {
        let mut routes = HashMap::new();
        for (i, c) in catalogs.iter().enumerate() {
            for t in c.types.values() {
                if routes
                    .insert(t.name.clone(), (i, t.topic.clone()))
                    .is_some()
                {
                    return Err(EngineError::DuplicateType(t.name.clone()));
                }
            }
        }
        let mut topics: Vec<&String> = routes.values().map(|(_, t)| t).collect();
        topics.sort();
        topics.dedup();
        for t in topics {
            backend.create_topic(TopicConfig::new(t.clone())).await?;
        }
        Ok(Engine {
            backend,
            catalogs,
            routes,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The topic a type travels on.
    pub fn topic_of(&self, ty: &str) -> Option<&str> {
        self.route(ty).map(|(_, t)| t.as_str())
    }

    fn route(&self, ty: &str) -> Option<&(usize, String)> {
        self.routes.get(ty).or_else(|| {
            // `context.Verb.v2` names version 2 of `context.Verb`.
            let (base, _) = ty.rsplit_once('.')?;
            self.routes.get(base)
        })
    }

    /// Checks and publishes a batch atomically. `producer`, when given, must be a declared
    /// producer of every event's type. Returns one outcome per event, in order.
    pub async fn publish(
        &self,
        batch: Vec<Submit>,
        producer: Option<&str>,
    ) -> Result<Vec<PublishOutcome>, EngineError> {
        let mut topic: Option<&str> = None;
        let mut requests = Vec::with_capacity(batch.len());
        for (index, s) in batch.into_iter().enumerate() {
            let Some((c, t)) = self.route(&s.event.ty) else {
                let violations = self
                    .catalogs
                    .first()
                    .map(|c| c.validate(&s.event))
                    .unwrap_or_default();
                return Err(EngineError::Invalid { index, violations });
            };
            let catalog = &self.catalogs[*c];
            let violations = catalog.validate(&s.event);
            if !violations.is_empty() {
                return Err(EngineError::Invalid { index, violations });
            }
            if let (Some(p), Some((ty, _))) = (producer, catalog.lookup(&s.event.ty))
                && !ty.producers.iter().any(|d| d == p)
            {
                return Err(EngineError::NotAProducer {
                    producer: p.to_owned(),
                    ty: ty.name.clone(),
                });
            }
            match topic {
                Some(first) if first != t => {
                    return Err(EngineError::MixedTopics(first.to_owned(), t.clone()));
                }
                _ => topic = Some(t),
            }
            let keys = catalog.keys(&s.event)?;
            requests.push(PublishRequest {
                event: s.event,
                ordering_key: keys.ordering,
                idempotency_key: keys.idempotency,
                expected_sequence: s.expected_sequence,
            });
        }
        let Some(topic) = topic else {
            return Ok(Vec::new());
        };
        Ok(self.backend.publish(topic, requests).await?)
    }
}
