//! The delivery engine's front: catalogs applied to a backend. It creates the catalogs' topics,
//! routes each event type to its topic, refuses events that break their catalog (schema,
//! personal-data rules, declared producers), and hands the backend the keys the catalog defines:
//! the ordering key (the type's aggregate key, else `partitionkey`) and the idempotency key.
//! It knows nothing about HTTP; `canon serve` and the SDK sit on top of it.

use std::collections::HashMap;

use canon_backend::{
    Backend, BackendError, Capabilities, Capability, PublishOutcome, PublishRequest, TopicConfig,
};
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

/// Why one event of a publish was refused.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Refusal {
    /// It breaks its catalog (or no catalog declares its type): every reason.
    Invalid(Vec<Violation>),
    /// The publisher is not a declared producer of the type.
    NotAProducer {
        /// Who published.
        producer: String,
        /// The type.
        ty: String,
    },
    /// The type travels on another topic than the one the request named.
    WrongTopic {
        /// The type.
        ty: String,
        /// Its topic in the catalog.
        declared: String,
        /// The topic the request named.
        given: String,
    },
    /// An undeclared type on a schema-less server or topic, and the request named no topic.
    TopicRequired,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Invalid(v) => f.write_str(
                &v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Refusal::NotAProducer { producer, ty } => {
                write!(f, "{producer} is not a declared producer of {ty}")
            }
            Refusal::WrongTopic {
                ty,
                declared,
                given,
            } => write!(f, "{ty} travels on topic {declared}, not {given}"),
            Refusal::TopicRequired => f.write_str(
                "the type is declared by no catalog: publish it to a schema-less topic by name",
            ),
        }
    }
}

/// An event checked against its catalog, ready for the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The topic it travels on.
    pub topic: String,
    /// What the backend stores.
    pub request: PublishRequest,
}

/// Where undeclared types may go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SchemaLess {
    /// Nowhere: every type must be declared by a catalog.
    #[default]
    None,
    /// These topics take any valid CloudEvent.
    Topics(Vec<String>),
    /// Every topic (a server with no catalog).
    All,
}

impl SchemaLess {
    /// Whether `topic` takes undeclared types.
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            SchemaLess::None => false,
            SchemaLess::Topics(t) => t.iter().any(|t| t == topic),
            SchemaLess::All => true,
        }
    }
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

/// What the catalogs need of a backend (docs/specs/delivery.md, K1): atomic batches always
/// (the engine publishes batches all-or-nothing); dedup by idempotency key when a type declares
/// one; expected-sequence checks when a type has an aggregate key (a publisher may state the
/// aggregate's last sequence); per-key ordered delivery when a catalog makes it the default of
/// its subscriptions.
pub fn required_capabilities(catalogs: &[Catalog]) -> Vec<Capability> {
    let types = || catalogs.iter().flat_map(|c| c.types.values());
    let mut needed = vec![Capability::AtomicBatch];
    if types().any(|t| !t.idempotency.is_empty()) {
        needed.push(Capability::IdempotencyKeys);
    }
    if types().any(|t| t.aggregate.is_some()) {
        needed.push(Capability::OptimisticConcurrency);
    }
    if catalogs.iter().any(|c| {
        c.delivery.as_ref().and_then(|d| d.ordering) == Some(canon_catalog::Ordering::Aggregate)
    }) {
        needed.push(Capability::OrderedDelivery);
    }
    needed
}

/// Fails with `unsupported-capability`, naming the first capability the catalogs need (see
/// [`required_capabilities`]) that `have` lacks.
pub fn check_capabilities(have: &Capabilities, catalogs: &[Catalog]) -> Result<(), BackendError> {
    required_capabilities(catalogs)
        .into_iter()
        .try_for_each(|c| have.require(c))
}

/// Catalogs over a backend.
#[derive(Debug)]
pub struct Engine<B> {
    backend: B,
    catalogs: Vec<Catalog>,
    /// Type name → (catalog index, topic).
    routes: HashMap<String, (usize, String)>,
    schemaless: SchemaLess,
}

impl<B: Backend> Engine<B> {
    /// Creates every topic the catalogs declare and routes their types. Fails with
    /// `unsupported-capability` when the backend lacks something the catalogs need (K1, see
    /// [`required_capabilities`]).
    pub async fn new(backend: B, catalogs: Vec<Catalog>) -> Result<Self, EngineError> {
        Self::with_topics(backend, catalogs, |t: &str| TopicConfig::new(t)).await
    }

    /// As [`Engine::new`], each topic created (or, if it exists, reconfigured) with
    /// `topic(name)`: its dedup window and retention.
    pub async fn with_topics(
        backend: B,
        catalogs: Vec<Catalog>,
        topic: impl Fn(&str) -> TopicConfig,
    ) -> Result<Self, EngineError> {
        check_capabilities(&backend.capabilities(), &catalogs)?;
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
            backend.create_topic(topic(t)).await?;
        }
        Ok(Engine {
            backend,
            schemaless: if catalogs.is_empty() {
                SchemaLess::All
            } else {
                SchemaLess::None
            },
            catalogs,
            routes,
        })
    }

    /// Lets undeclared types through on some topics (a server with no catalog takes them
    /// everywhere). The topics must exist or be created by the caller.
    #[must_use]
    pub fn with_schemaless(mut self, schemaless: SchemaLess) -> Self {
        if !self.catalogs.is_empty() || schemaless != SchemaLess::None {
            self.schemaless = schemaless;
        }
        self
    }

    /// Where undeclared types may go.
    pub fn schemaless(&self) -> &SchemaLess {
        &self.schemaless
    }

    /// The loaded catalogs.
    pub fn catalogs(&self) -> &[Catalog] {
        &self.catalogs
    }

    /// The catalog that declares a type (`name` or `name.vN`).
    pub fn catalog_of(&self, ty: &str) -> Option<&Catalog> {
        self.route(ty).map(|(c, _)| &self.catalogs[*c])
    }

    /// Checks one event for publishing: its catalog (schema, personal data), its producer when
    /// `producer` is given, and its topic when the request named one (`topic`). Undeclared
    /// types pass, without keys other than `partitionkey`, only on a schema-less topic named by
    /// the request.
    pub fn prepare(
        &self,
        submit: Submit,
        producer: Option<&str>,
        topic: Option<&str>,
    ) -> Result<Prepared, Refusal> {
        let Some((c, declared)) = self.route(&submit.event.ty) else {
            return match topic {
                Some(t) if self.schemaless.allows(t) => Ok(Prepared {
                    topic: t.to_owned(),
                    request: PublishRequest {
                        ordering_key: submit.event.partition_key().map(str::to_owned),
                        idempotency_key: None,
                        expected_sequence: submit.expected_sequence,
                        event: submit.event,
                    },
                }),
                None if self.schemaless != SchemaLess::None => Err(Refusal::TopicRequired),
                _ => Err(Refusal::Invalid(
                    self.catalogs
                        .first()
                        .map(|c| c.validate(&submit.event))
                        .unwrap_or_default(),
                )),
            };
        };
        if let Some(given) = topic
            && given != declared
        {
            return Err(Refusal::WrongTopic {
                ty: submit.event.ty.clone(),
                declared: declared.clone(),
                given: given.to_owned(),
            });
        }
        let catalog = &self.catalogs[*c];
        if let (Some(p), Some((ty, _))) = (producer, catalog.lookup(&submit.event.ty))
            && !ty.producers.iter().any(|d| d == p)
        {
            return Err(Refusal::NotAProducer {
                producer: p.to_owned(),
                ty: ty.name.clone(),
            });
        }
        let violations = catalog.validate(&submit.event);
        if !violations.is_empty() {
            return Err(Refusal::Invalid(violations));
        }
        let keys = catalog.keys(&submit.event).map_err(|e| {
            Refusal::Invalid(vec![Violation {
                code: "payload-required",
                type_name: Some(submit.event.ty.clone()),
                version: None,
                location: "/data".to_owned(),
                message: e.to_string(),
            }])
        })?;
        Ok(Prepared {
            topic: declared.clone(),
            request: PublishRequest {
                event: submit.event,
                ordering_key: keys.ordering,
                idempotency_key: keys.idempotency,
                expected_sequence: submit.expected_sequence,
            },
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
        let mut topic: Option<String> = None;
        let mut requests = Vec::with_capacity(batch.len());
        for (index, submit) in batch.into_iter().enumerate() {
            let prepared = self.prepare(submit, producer, None).map_err(|r| match r {
                Refusal::Invalid(violations) => EngineError::Invalid { index, violations },
                Refusal::NotAProducer { producer, ty } => {
                    EngineError::NotAProducer { producer, ty }
                }
                other => EngineError::Invalid {
                    index,
                    violations: vec![Violation {
                        code: "unknown-type",
                        type_name: None,
                        version: None,
                        location: "/type".to_owned(),
                        message: other.to_string(),
                    }],
                },
            })?;
            match &topic {
                Some(first) if *first != prepared.topic => {
                    return Err(EngineError::MixedTopics(first.clone(), prepared.topic));
                }
                Some(_) => {}
                None => topic = Some(prepared.topic),
            }
            requests.push(prepared.request);
        }
        let Some(topic) = topic else {
            return Ok(Vec::new());
        };
        Ok(self.backend.publish(&topic, requests).await?)
    }
}
