//! Naming conventions for event type names.

use regex::Regex;

/// A catalog's naming convention.
#[derive(Debug, Clone)]
pub enum Naming {
    /// `context.Verb` (seed 001), optional `.vN` suffix.
    ContextVerb,
    /// `area.action.state` (seed 002): 2 to 4 lower snake_case segments.
    AreaActionState,
    /// One PascalCase word (seed 003's class names).
    PascalCase,
    /// `<prefix>.<domain>.<action>.v<N>` (seed 004).
    ReverseDnsVersioned {
        /// E.g. `com.todo`.
        prefix: String,
    },
    /// A custom regular expression.
    Pattern(Regex),
}

impl Naming {
    /// Whether `name` follows the convention.
    pub fn accepts(&self, name: &str) -> bool {
        let re = |p: &str| Regex::new(p).is_ok_and(|r| r.is_match(name));
        match self {
            Naming::ContextVerb => re(r"^[a-z][a-zA-Z0-9]*\.[A-Z][A-Za-z0-9]*(\.v[0-9]+)?$"),
            Naming::AreaActionState => re(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$"),
            Naming::PascalCase => re(r"^[A-Z][a-z0-9]+([A-Z][a-z0-9]*)*$"),
            Naming::ReverseDnsVersioned { prefix } => name
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| {
                    re_match(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\.v[1-9][0-9]*$", rest)
                }),
            Naming::Pattern(r) => r.is_match(name),
        }
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        match self {
            Naming::ContextVerb => "context.Verb (e.g. money.TransactionCreated)".into(),
            Naming::AreaActionState => {
                "area.action.state (2 to 4 lower snake_case segments, e.g. task.deal.confirmed)"
                    .into()
            }
            Naming::PascalCase => "PascalCase (e.g. QuestCompleted)".into(),
            Naming::ReverseDnsVersioned { prefix } => {
                format!("{prefix}.<domain>.<action>.v<N> (e.g. {prefix}.task.created.v1)")
            }
            Naming::Pattern(r) => format!("the pattern {}", r.as_str()),
        }
    }

    /// For conventions that put the version in the name, the major it names (`…v2` → 2).
    pub fn version_in_name(&self, name: &str) -> Option<u64> {
        match self {
            Naming::ReverseDnsVersioned { .. } | Naming::ContextVerb => {
                let (_, last) = name.rsplit_once('.')?;
                last.strip_prefix('v')?.parse().ok()
            }
            _ => None,
        }
    }
}

fn re_match(pattern: &str, s: &str) -> bool {
    Regex::new(pattern).is_ok_and(|r| r.is_match(s))
}
