//! `canon catalog ...`.

use std::io::Write;

use canon_catalog::{Catalog, Loaded, Severity, Violation, diff as diff_catalogs};
use canon_envelope::Dialect;
use serde_json::json;

use crate::{Format, Outcome, Usage, io, read_input, split_events};

fn load(path: &str) -> Result<Loaded, Usage> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Usage(format!("cannot read {path}: {e}")))?;
    Ok(Catalog::load(&text, path))
}

/// Loads a catalog that must be free of errors; prints the errors otherwise.
fn load_clean(path: &str) -> Result<Result<Catalog, Outcome>, Usage> {
    let loaded = load(path)?;
    if loaded.has_errors() {
        for d in loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
        {
            let _ = writeln!(std::io::stderr(), "{d}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "canon: {path} has errors; run `canon catalog check {path}`"
        );
        return Ok(Err(Outcome::Invalid));
    }
    Ok(loaded.catalog.ok_or(Outcome::Invalid))
}

pub(crate) fn check(
    out: &mut impl Write,
    files: &[String],
    format: Format,
) -> Result<Outcome, Usage> {
    let mut results = Vec::new();
    for f in files {
        results.push((f, load(f)?));
    }
    let errors = results
        .iter()
        .flat_map(|(_, l)| &l.diagnostics)
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = results
        .iter()
        .flat_map(|(_, l)| &l.diagnostics)
        .filter(|d| d.severity == Severity::Warning)
        .count();
    match format {
        Format::Human => {
            for (f, loaded) in &results {
                for d in &loaded.diagnostics {
                    writeln!(out, "{d}").map_err(io)?;
                }
                if loaded.diagnostics.is_empty() {
                    let types = loaded.catalog.as_ref().map_or(0, |c| c.types.len());
                    writeln!(out, "{f}: ok ({types} types)").map_err(io)?;
                }
            }
            if errors + warnings > 0 {
                writeln!(out, "{errors} error(s), {warnings} warning(s)").map_err(io)?;
            }
        }
        Format::Json => {
            let files: Vec<_> = results
                .iter()
                .map(|(f, l)| json!({"file": f, "diagnostics": l.diagnostics}))
                .collect();
            let doc =
                json!({"ok": errors == 0, "errors": errors, "warnings": warnings, "files": files});
            writeln!(out, "{doc}").map_err(io)?;
        }
    }
    Ok(if errors == 0 {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}

pub(crate) fn validate(
    out: &mut impl Write,
    catalog: &str,
    event: Option<&str>,
    dialect: Option<&str>,
    format: Format,
) -> Result<Outcome, Usage> {
    let catalog = match load_clean(catalog)? {
        Ok(c) => c,
        Err(outcome) => return Ok(outcome),
    };
    let dialect = match dialect {
        Some(d) => d.parse::<Dialect>().map_err(|e| Usage(e.to_string()))?,
        None => catalog.dialect,
    };
    let (name, bytes) = read_input(event)?;
    let (_, events) = split_events(&bytes);
    let mut all_valid = true;
    let mut reports = Vec::new();
    for (i, ev) in events.iter().enumerate() {
        let (id, ty, violations) = match dialect.decode(ev) {
            Ok(e) => {
                let violations = catalog.validate(&e);
                (Some(e.id), Some(e.ty), violations)
            }
            Err(errors) => (None, None, Violation::from_envelope(&errors)),
        };
        all_valid &= violations.is_empty();
        match format {
            Format::Human => {
                let label = if events.len() > 1 { format!("{name}: event {i}") } else { name.clone() };
                let what = format!("{} {}", ty.as_deref().unwrap_or("?"), id.as_deref().unwrap_or("?"));
                if violations.is_empty() {
                    writeln!(out, "{label}: valid ({what})").map_err(io)?;
                } else {
                    writeln!(out, "{label}: invalid ({what})").map_err(io)?;
                    for v in &violations {
                        writeln!(out, "  {v}").map_err(io)?;
                    }
                }
            }
            Format::Json => reports.push(json!({"index": i, "id": id, "type": ty, "valid": violations.is_empty(), "violations": violations})),
        }
    }
    if format == Format::Json {
        writeln!(
            out,
            "{}",
            json!({"valid": all_valid, "dialect": dialect.name(), "events": reports})
        )
        .map_err(io)?;
    }
    Ok(if all_valid {
        Outcome::Ok
    } else {
        Outcome::Invalid
    })
}

pub(crate) fn diff(
    out: &mut impl Write,
    old: &str,
    new: &str,
    format: Format,
) -> Result<Outcome, Usage> {
    let (Ok(old_c), Ok(new_c)) = (load_clean(old)?, load_clean(new)?) else {
        return Ok(Outcome::Invalid);
    };
    let d = diff_catalogs(&old_c, &new_c);
    match format {
        Format::Json => {
            writeln!(out, "{}", serde_json::to_string(&d).unwrap_or_default()).map_err(io)?;
        }
        Format::Human => {
            for t in &d.types {
                if t.change == canon_catalog::TypeChange::Unchanged {
                    continue;
                }
                let versions = match (&t.old_version, &t.new_version) {
                    (Some(o), Some(n)) if o != n => format!(" {o} -> {n}"),
                    (Some(v), _) | (None, Some(v)) => format!(" {v}"),
                    _ => String::new(),
                };
                let compat = t
                    .compatibility
                    .map(|c| format!(", compatibility: {c}"))
                    .unwrap_or_default();
                writeln!(out, "{} {:?}{versions}{compat}", t.name, t.change).map_err(io)?;
                for c in &t.breaking {
                    writeln!(out, "  breaking: {c}").map_err(io)?;
                }
                for e in &t.errors {
                    writeln!(out, "  error[{}]: {}", e.code, e.message).map_err(io)?;
                }
            }
            let changed = d
                .types
                .iter()
                .filter(|t| t.change != canon_catalog::TypeChange::Unchanged)
                .count();
            writeln!(
                out,
                "{changed} type(s) changed, {}",
                if d.has_errors() {
                    "with errors"
                } else {
                    "no errors"
                }
            )
            .map_err(io)?;
        }
    }
    Ok(if d.has_errors() {
        Outcome::Invalid
    } else {
        Outcome::Ok
    })
}

pub(crate) fn show(
    out: &mut impl Write,
    file: &str,
    ty: Option<&str>,
    format: Format,
) -> Result<Outcome, Usage> {
    let catalog = match load_clean(file)? {
        Ok(c) => c,
        Err(outcome) => return Ok(outcome),
    };
    let type_json = |t: &canon_catalog::EventType| {
        json!({
            "type": t.name, "summary": t.summary, "topic": t.topic, "producers": t.producers, "consumers": t.consumers,
            "aggregate": t.aggregate.as_ref().map(ToString::to_string),
            "idempotency": t.idempotency.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "personal_data": t.personal_data, "consent": t.consent, "handlers": t.handlers,
            "deprecated": t.deprecated.as_ref().map(|d| json!({"reason": d.reason, "replaced_by": d.replaced_by})),
            "versions": t.versions.iter().map(|v| json!({"version": v.version.as_str(), "schema": v.schema})).collect::<Vec<_>>(),
        })
    };
    match ty {
        Some(name) => {
            let Some((t, _)) = catalog.lookup(name) else {
                let _ = writeln!(std::io::stderr(), "canon: {file} declares no type {name}");
                return Ok(Outcome::Invalid);
            };
            match format {
                Format::Json => writeln!(out, "{}", type_json(t)).map_err(io)?,
                Format::Human => {
                    writeln!(out, "{} — {}", t.name, t.summary).map_err(io)?;
                    writeln!(out, "  topic:       {}", t.topic).map_err(io)?;
                    writeln!(out, "  producers:   {}", t.producers.join(", ")).map_err(io)?;
                    writeln!(out, "  consumers:   {}", t.consumers.join(", ")).map_err(io)?;
                    if let Some(a) = &t.aggregate {
                        writeln!(out, "  aggregate:   {a}").map_err(io)?;
                    }
                    if !t.idempotency.is_empty() {
                        let k: Vec<String> =
                            t.idempotency.iter().map(ToString::to_string).collect();
                        writeln!(out, "  idempotency: {}", k.join("+")).map_err(io)?;
                    }
                    for (path, rule) in &t.personal_data {
                        writeln!(out, "  personal:    {path} ({rule:?})").map_err(io)?;
                    }
                    if let Some(c) = &t.consent {
                        writeln!(out, "  consent:     {c}").map_err(io)?;
                    }
                    if let Some(may) = &t.handlers.may_emit {
                        writeln!(out, "  may emit:    {}", may.join(", ")).map_err(io)?;
                    }
                    if !t.handlers.must_not_emit.is_empty() {
                        writeln!(
                            out,
                            "  must not emit: {}",
                            t.handlers.must_not_emit.join(", ")
                        )
                        .map_err(io)?;
                    }
                    for v in &t.versions {
                        let schema = serde_json::to_string_pretty(&v.schema).unwrap_or_default();
                        writeln!(out, "  version {}:\n{}", v.version, indent(&schema, 4))
                            .map_err(io)?;
                    }
                }
            }
        }
        None => match format {
            Format::Json => {
                let types: Vec<_> = catalog.types.values().map(type_json).collect();
                writeln!(out, "{}", json!({"name": catalog.name, "summary": catalog.summary, "dialect": catalog.dialect.name(), "types": types})).map_err(io)?;
            }
            Format::Human => {
                writeln!(
                    out,
                    "{} ({} types, dialect {}, naming {})",
                    catalog.name,
                    catalog.types.len(),
                    catalog.dialect,
                    catalog.naming.describe()
                )
                .map_err(io)?;
                for t in catalog.types.values() {
                    let v = t
                        .latest()
                        .map(|v| v.version.to_string())
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "  {:<40} v{:<6} {:<22} {}",
                        t.name,
                        v,
                        t.topic,
                        t.producers.join(", ")
                    )
                    .map_err(io)?;
                }
            }
        },
    }
    Ok(Outcome::Ok)
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `canon catalog gen rust FILE`: the code `canon_sdk::catalog!` generates, with the catalog
/// text inline so that the printed file stands alone.
pub(crate) fn gen_rust(out: &mut impl Write, file: &str) -> Result<Outcome, Usage> {
    let catalog = match load_clean(file)? {
        Ok(c) => c,
        Err(outcome) => return Ok(outcome),
    };
    let text =
        std::fs::read_to_string(file).map_err(|e| Usage(format!("cannot read {file}: {e}")))?;
    let name = std::path::Path::new(file)
        .file_name()
        .map_or_else(|| file.to_owned(), |n| n.to_string_lossy().into_owned());
    let tokens = canon_codegen::generate(&catalog, &name, canon_codegen::Source::Inline(&text));
    writeln!(
        out,
        "// Generated by `canon catalog gen rust {name}` from catalog {}; do not edit.\n// Needs the canon-sdk crate.\n",
        catalog.name
    )
    .map_err(io)?;
    write!(out, "{}", canon_codegen::render(&tokens)).map_err(io)?;
    Ok(Outcome::Ok)
}
