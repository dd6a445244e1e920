//! Payload versions: `MAJOR[.MINOR[.PATCH]]`, compared numerically, missing parts being zero.

use std::cmp::Ordering;
use std::fmt;

/// A payload version as written in a catalog (`1`, `1.2`, `1.0.0`).
#[derive(Debug, Clone, Eq)]
pub struct Version {
    parts: [u64; 3],
    text: String,
}

impl Version {
    /// Parses `MAJOR[.MINOR[.PATCH]]`.
    pub fn parse(text: &str) -> Option<Version> {
        Some(Version {
            parts: Self::parts(text)?,
            text: text.to_owned(),
        })
    }

    /// Whether `text` names this version (`1` names `1.0.0`), without allocating.
    pub fn matches(&self, text: &str) -> bool {
        Self::parts(text) == Some(self.parts)
    }

    fn parts(text: &str) -> Option<[u64; 3]> {
        let mut parts = [0u64; 3];
        for (n, piece) in text.split('.').enumerate() {
            if n == 3
                || piece.is_empty()
                || !piece.bytes().all(|b| b.is_ascii_digit())
                || (piece.len() > 1 && piece.starts_with('0'))
            {
                return None;
            }
            parts[n] = piece.parse().ok()?;
        }
        Some(parts)
    }

    /// The major number.
    pub fn major(&self) -> u64 {
        self.parts[0]
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
