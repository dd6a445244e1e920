//! Naming conventions for event type names.

use std::sync::LazyLock;

use regex::Regex;

/// A catalog's naming convention.
#[derive(Debug, Clone)]
pub enum Naming {
    /// No convention: any non-empty name.
    Any,
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

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| unreachable!("constant pattern {pattern}: {e}"))
}

static CONTEXT_VERB: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[a-z][a-zA-Z0-9]*\.[A-Z][A-Za-z0-9]*(\.v[0-9]+)?$"));
static AREA_ACTION_STATE: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){1,3}$"));
static PASCAL_CASE: LazyLock<Regex> = LazyLock::new(|| regex(r"^[A-Z][a-z0-9]+([A-Z][a-z0-9]*)*$"));
static DOMAIN_ACTION_VERSION: LazyLock<Regex> =
    LazyLock::new(|| regex(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+\.v[1-9][0-9]*$"));

impl Naming {
    /// Whether `name` follows the convention.
    pub fn accepts(&self, name: &str) -> bool {
        match self {
            Naming::Any => !name.is_empty(),
            Naming::ContextVerb => CONTEXT_VERB.is_match(name),
            Naming::AreaActionState => AREA_ACTION_STATE.is_match(name),
            Naming::PascalCase => PASCAL_CASE.is_match(name),
            Naming::ReverseDnsVersioned { prefix } => name
                .strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| DOMAIN_ACTION_VERSION.is_match(rest)),
            Naming::Pattern(r) => r.is_match(name),
        }
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        match self {
            Naming::Any => "any name".into(),
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

    /// For a convention that puts the major version in the name, the major a name states
    /// (`com.todo.task.created.v2` → 2).
    pub fn version_in_name(&self, name: &str) -> Option<u64> {
        match self {
            Naming::ReverseDnsVersioned { .. } => name.rsplit_once(".v")?.1.parse().ok(),
            _ => None,
        }
    }
}
