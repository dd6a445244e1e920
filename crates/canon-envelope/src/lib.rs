//! The canonical Canon event: CloudEvents 1.0, with the JSON event format, the HTTP binding and
//! lossless codecs for the envelope dialects of the seed applications.
//!
//! This crate does no I/O: bytes in, values out. Payloads stay as raw bytes
//! ([`Data`]) so passing an event on never re-serialises its data.
//!
//! ```
//! use canon_envelope::{CloudEvent, Dialect};
//!
//! let bme = br#"{"eventId":"e-1","type":"money.TransactionCreated","payload":{"amount":10.5},
//!               "metadata":{"userId":"user-123","timestamp":"2025-02-24T12:00:00.000Z"}}"#;
//! let event = Dialect::Bme.decode(bme).unwrap();
//! assert_eq!(event.actor(), Some("user-123"));
//! let go4u = Dialect::Go4u.encode(&event).unwrap();
//! assert_eq!(Dialect::Go4u.decode(&go4u).unwrap().id, "e-1");
//! ```

mod dialect;
mod error;
mod event;
mod http;
mod json;
mod raw;
pub mod rules;

pub use dialect::{Dialect, UnknownDialect};
pub use error::{EnvelopeError, EnvelopeErrors, ErrorCode};
pub use event::{CloudEvent, Data, ExtValue, TraceParent, ext};
pub use http::{BinaryMessage, HttpMode, decode_header_value, encode_header_value};
pub use json::{BATCH_MEDIA_TYPE, MEDIA_TYPE};
pub use raw::pointer_token;
