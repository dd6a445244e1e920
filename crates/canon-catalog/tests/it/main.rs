//! Integration tests of canon-catalog: the shipped seed catalogs, every lint rule, event
//! validation, compatibility diffs and key computation.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod codes;
mod diff;
mod examples;
mod fast;
mod invalid;
mod keys;
mod lint;
mod validation;

use std::path::PathBuf;

use canon_catalog::{Catalog, Loaded};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn load_example(name: &str) -> Catalog {
    let path = repo().join(format!("examples/catalogs/{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let loaded = Catalog::load(&text, &format!("examples/catalogs/{name}.yaml"));
    assert!(!loaded.has_errors(), "{}", render(&loaded));
    loaded.catalog.unwrap()
}

/// Diagnostics one per line, for snapshots.
fn render(loaded: &Loaded) -> String {
    loaded
        .diagnostics
        .iter()
        .map(|d| format!("{d}\n"))
        .collect()
}
