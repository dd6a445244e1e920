//! Catalog as code: a YAML file per application declares its event types, payload schemas,
//! producers, consumers, keys, handler rules and personal-data rules. This crate loads and
//! lints catalogs, validates events against them, compares two revisions, and computes the
//! keys the delivery engine orders and deduplicates by.
//!
//! The file format is documented in docs/catalog-format.md; lint codes in docs/lints.md.

mod catalog;
pub mod code;
pub mod compat;
mod diagnostic;
mod diff;
mod fast;
mod keys;
mod lint;
mod model;
mod naming;
mod schema_walk;
mod shorthand;
mod validate;
mod version;
pub mod yaml;

pub use catalog::{Catalog, Deprecation, EventType, FieldPath, Loaded, PayloadVersion, Topic};
pub use diagnostic::{Diagnostic, Severity};
pub use diff::{CatalogDiff, TypeChange, TypeDiff, diff};
pub use keys::{KeyError, Keys};
pub use model::{Compatibility, DeliveryModel, HandlersModel, Ordering, PiiRule};
pub use naming::Naming;
pub use shorthand::HASH_PATTERN;
pub use validate::{Violation, ViolationCode};
pub use version::Version;
