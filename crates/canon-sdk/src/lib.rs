//! Canon's Rust SDK.
//!
//! - **Typed events**: `canon_sdk::catalog!("catalog.yaml")` generates one struct per event
//!   type and payload version, each implementing [`Event`] (type name, version, topic, keys,
//!   consent purpose and handler rules as constants, validation against the catalog);
//!   `#[derive(Event)]` does the same for hand-written types.
//! - **In-process dispatch**: a [`Dispatcher`] with handlers registered per type and version
//!   range, sync or async, isolated from each other; causation and correlation carried
//!   automatically; the catalog's side-effect rules enforced on every emit; consent and audit
//!   hooks for personal data; an [`EventLog`] for tests.
//! - **Remote** (feature `remote`): an HTTP [`remote::Client`] for `canon serve`, a pull
//!   [`remote::Consumer`] that runs the same dispatcher on remote events, and a push handler
//!   for axum.
//! - **Inbox** (feature `postgres` for the PostgreSQL one): exactly-once effects over
//!   at-least-once delivery.
//!
//! ```
//! use canon_sdk::{Dispatcher, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Event)]
//! #[canon(type = "greeting.sent", version = "1.0")]
//! struct GreetingSent {
//!     #[canon(aggregate, idempotency)]
//!     to: String,
//! }
//!
//! let d = Dispatcher::new();
//! d.on::<GreetingSent, _>("log", ">=1.0, <2.0", |ev: &GreetingSent, _cx: &mut canon_sdk::Context<'_>| {
//!     assert_eq!(ev.to, "ada");
//!     Ok(())
//! })
//! .unwrap();
//! let report = d.publish(GreetingSent { to: "ada".into() });
//! assert_eq!(report.handled, 1);
//! assert!(report.is_ok());
//! ```

mod context;
mod dispatch;
mod event;
mod id;
pub mod inbox;
mod log;
mod privacy;
mod raw;
#[cfg(feature = "remote")]
pub mod remote;

pub use canon_catalog::{Catalog, Violation};
pub use canon_envelope::CloudEvent;
pub use canon_macros::{Event, catalog};
pub use context::{AsyncContext, Context, EmitError, Rule, RuleBreach};
pub use dispatch::{
    AsyncHandler, Builder, Dispatcher, Emission, Handler, HandlerError, HandlerFailure, HandlerId,
    HandlerResult, RegisterError, Reject, Report,
};
pub use event::{Event, HandlerRules, Invalid};
pub use id::{EventId, Meta};
pub use log::{EventLog, LogEntry, LogOutcome};
pub use privacy::{AuditOutcome, AuditRecord, AuditSink, ConsentProvider, EventView, MemoryAudit};
pub use raw::RawEvent;
pub use semver::{Version, VersionReq};

/// Items the generated code and the derive use. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::event::{
        aggregate_key, idempotency_key, load_catalog, lookup, to_value, validate,
    };
    pub use serde;
    pub use serde_json;
}
