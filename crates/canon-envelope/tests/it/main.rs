//! Integration tests of canon-envelope: the JSON format's validation checklist, the HTTP
//! binding, and the dialect codecs over every seed example event.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod dialects;
mod http;
mod json;

use canon_envelope::EnvelopeErrors;

/// Renders errors one per line as `code location`, for snapshots.
fn render(errors: &EnvelopeErrors) -> String {
    errors
        .iter()
        .map(|e| format!("{} {} ({})\n", e.code, e.location, e.message))
        .collect()
}
