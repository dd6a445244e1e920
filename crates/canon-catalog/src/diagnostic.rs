//! What `canon catalog check` reports: a problem in a catalog file, with its place, a stable
//! code and a hint for fixing it.

use std::fmt;

use crate::yaml::Position;

/// How bad a problem is. Errors fail `check`; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The catalog is wrong; `check` fails.
    Error,
    /// Probably a mistake; `check` passes.
    Warning,
}

/// One problem in a catalog file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code, e.g. `naming-convention` (docs/lints.md lists them all).
    pub code: &'static str,
    /// The file, as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// JSON pointer of the node in the catalog (`/types/user.registered/aggregate`).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Diagnostic {
    pub(crate) fn at(
        file: &str,
        position: Position,
        pointer: &str,
        severity: Severity,
        code: &'static str,
        message: String,
    ) -> Self {
        Diagnostic {
            severity,
            code,
            file: file.to_owned(),
            line: position.line,
            column: position.column,
            pointer: pointer.to_owned(),
            message,
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}[{}]: {}",
            self.file, self.line, self.column, self.code, self.message
        )?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}
