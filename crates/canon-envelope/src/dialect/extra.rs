//! The `canonextra` extension: dialect members with no canonical counterpart, kept verbatim
//! per dialect so that writing the event in that dialect again restores them.
//!
//! Wire form: a JSON object `{ "<dialect>": { "<JSON pointer>": <value>, ... }, ... }`,
//! carried as a String extension.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::Dialect;

#[derive(Debug, Default)]
pub(super) struct Extra(BTreeMap<String, BTreeMap<String, Box<RawValue>>>);

impl Extra {
    pub(super) fn parse(text: &str) -> Result<Extra, String> {
        serde_json::from_str(text).map(Extra).map_err(|e| {
            format!("canonextra must be a JSON object of dialect -> {{pointer: value}}: {e}")
        })
    }

    pub(super) fn merge(&mut self, other: Extra) {
        for (dialect, members) in other.0 {
            self.0.entry(dialect).or_default().extend(members);
        }
    }

    pub(super) fn set(&mut self, dialect: Dialect, members: Vec<(String, Box<RawValue>)>) {
        self.0
            .insert(dialect.name().to_owned(), members.into_iter().collect());
    }

    /// Removes and returns what was kept for `dialect`.
    pub(super) fn take(&mut self, dialect: Dialect) -> Vec<(String, Box<RawValue>)> {
        self.0
            .remove(dialect.name())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }

    /// The extension's value, or `None` if nothing is kept.
    pub(super) fn to_extension(&self) -> Option<String> {
        if self.0.is_empty() {
            None
        } else {
            serde_json::to_string(&self.0).ok()
        }
    }
}
