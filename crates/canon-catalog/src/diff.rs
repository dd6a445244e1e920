//! Comparing two revisions of a catalog: per type, which compatibility holds between the old
//! and the new payload, every breaking change, and the errors that must stop a release (a
//! breaking change without a version bump, a type removed without deprecation).

use crate::code;

use serde::Serialize;

use crate::catalog::{Catalog, EventType};
use crate::compat::{self, Change};

/// How a type changed between two catalog revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeChange {
    /// Only in the new catalog.
    Added,
    /// Only in the old catalog.
    Removed,
    /// In both, with a version added, removed or changed.
    Changed,
    /// In both, same payload schemas.
    Unchanged,
}

/// The comparison of one type.
#[derive(Debug, Clone, Serialize)]
pub struct TypeDiff {
    /// The type name.
    #[serde(rename = "type")]
    pub name: String,
    /// What happened to it.
    pub change: TypeChange,
    /// Latest version in the old catalog.
    pub old_version: Option<String>,
    /// Latest version in the new catalog.
    pub new_version: Option<String>,
    /// `full`, `backward`, `forward` or `none` between the latest payloads.
    pub compatibility: Option<&'static str>,
    /// Every breaking change between the latest payloads, both directions.
    pub breaking: Vec<Change>,
    /// What must be fixed before release, with stable codes.
    pub errors: Vec<DiffError>,
}

/// A problem that fails `canon catalog diff`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DiffError {
    /// `breaking-change-without-version-bump`, `version-removed` or `type-removed`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
}

/// The comparison of two catalogs.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogDiff {
    /// Per type, in name order.
    pub types: Vec<TypeDiff>,
}

impl CatalogDiff {
    /// Whether any type has an error.
    pub fn has_errors(&self) -> bool {
        self.types.iter().any(|t| !t.errors.is_empty())
    }
}

/// Compares `old` with `new` under the new catalog's compatibility policy.
pub fn diff(old: &Catalog, new: &Catalog) -> CatalogDiff {
    let mut names: Vec<&String> = old.types.keys().chain(new.types.keys()).collect();
    names.sort();
    names.dedup();
    let types = names
        .into_iter()
        .map(|name| match (old.types.get(name), new.types.get(name)) {
            (Some(o), Some(n)) => compare(new, o, n),
            (Some(o), None) => TypeDiff {
                name: name.clone(),
                change: TypeChange::Removed,
                old_version: o.latest().map(|v| v.version.to_string()),
                new_version: None,
                compatibility: None,
                breaking: Vec::new(),
                errors: if o.deprecated.is_some() {
                    Vec::new()
                } else {
                    vec![DiffError {
                        code: code::TYPE_REMOVED,
                        message: format!(
                            "{name} was removed without being deprecated first; its consumers break"
                        ),
                    }]
                },
            },
            (None, Some(n)) => TypeDiff {
                name: name.clone(),
                change: TypeChange::Added,
                old_version: None,
                new_version: n.latest().map(|v| v.version.to_string()),
                compatibility: None,
                breaking: Vec::new(),
                errors: Vec::new(),
            },
            (None, None) => unreachable!("name comes from one of the two catalogs"),
        })
        .collect();
    CatalogDiff { types }
}

fn compare(new_catalog: &Catalog, o: &EventType, n: &EventType) -> TypeDiff {
    let mode = new_catalog.compatibility;
    let mut errors = Vec::new();
    // A version present in both must not have changed incompatibly.
    for ov in &o.versions {
        match n.versions.iter().find(|nv| nv.version == ov.version) {
            Some(nv) if nv.schema != ov.schema => {
                let breaking = compat::breaking_changes(mode, &ov.schema, &nv.schema);
                if !breaking.is_empty() {
                    let list: Vec<String> = breaking.iter().map(ToString::to_string).collect();
                    errors.push(DiffError {
                        code: code::BREAKING_CHANGE_WITHOUT_VERSION_BUMP,
                        message: format!(
                            "{} {} changed incompatibly without a new version: {}",
                            n.name,
                            ov.version,
                            list.join("; ")
                        ),
                    });
                }
            }
            Some(_) => {}
            None => errors.push(DiffError {
                code: code::VERSION_REMOVED,
                message: format!(
                    "{} {} was removed; producers still on it would be refused",
                    n.name, ov.version
                ),
            }),
        }
    }
    let (Some(ol), Some(nl)) = (o.latest(), n.latest()) else {
        return TypeDiff {
            name: n.name.clone(),
            change: TypeChange::Changed,
            old_version: None,
            new_version: None,
            compatibility: None,
            breaking: Vec::new(),
            errors,
        };
    };
    let backward = compat::widening_problems(&ol.schema, &nl.schema, compat::Direction::Backward);
    let forward = compat::widening_problems(&nl.schema, &ol.schema, compat::Direction::Forward);
    let compatibility = match (backward.is_empty(), forward.is_empty()) {
        (true, true) => "full",
        (true, false) => "backward",
        (false, true) => "forward",
        (false, false) => "none",
    };
    // A new latest version that breaks the policy must be a new major.
    if nl.version != ol.version {
        let breaking = ol.missing_bump(nl, mode);
        if !breaking.is_empty() {
            let list: Vec<String> = breaking.iter().map(ToString::to_string).collect();
            errors.push(DiffError {
                code: code::BREAKING_CHANGE_WITHOUT_VERSION_BUMP,
                message: format!(
                    "{} {} breaks compatibility with {} but keeps major {}: {}",
                    n.name,
                    nl.version,
                    ol.version,
                    ol.version.major(),
                    list.join("; ")
                ),
            });
        }
    }
    let same = o.versions.len() == n.versions.len()
        && o.versions
            .iter()
            .zip(&n.versions)
            .all(|(a, b)| a.version == b.version && a.schema == b.schema);
    TypeDiff {
        name: n.name.clone(),
        change: if same {
            TypeChange::Unchanged
        } else {
            TypeChange::Changed
        },
        old_version: Some(ol.version.to_string()),
        new_version: Some(nl.version.to_string()),
        compatibility: Some(compatibility),
        breaking: backward.into_iter().chain(forward).collect(),
        errors,
    }
}
