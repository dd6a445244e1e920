//! `canon event ...`.

use std::io::Write;

use canon_envelope::Dialect;

use crate::{Outcome, Usage, io, read_input, split_events};

pub(crate) fn convert(
    out: &mut impl Write,
    from: &str,
    to: &str,
    input: Option<&str>,
) -> Result<Outcome, Usage> {
    let from: Dialect = from
        .parse()
        .map_err(|e: canon_envelope::UnknownDialect| Usage(e.to_string()))?;
    let to: Dialect = to
        .parse()
        .map_err(|e: canon_envelope::UnknownDialect| Usage(e.to_string()))?;
    let (name, bytes) = read_input(input)?;
    let (is_array, events) = split_events(&bytes);
    let mut converted = Vec::with_capacity(events.len());
    let mut failed = false;
    for (i, ev) in events.iter().enumerate() {
        let result = from.decode(ev).and_then(|canonical| to.encode(&canonical));
        match result {
            Ok(bytes) => converted.push(bytes),
            Err(errors) => {
                failed = true;
                for e in errors.iter() {
                    let at = if is_array {
                        format!("{name}: event {i}")
                    } else {
                        name.clone()
                    };
                    let _ = writeln!(std::io::stderr(), "{at}: {e}");
                }
            }
        }
    }
    if failed {
        return Ok(Outcome::Invalid);
    }
    if is_array {
        let joined: Vec<String> = converted
            .into_iter()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect();
        writeln!(out, "[{}]", joined.join(",")).map_err(io)?;
    } else if let Some(one) = converted.first() {
        out.write_all(one).map_err(io)?;
        writeln!(out).map_err(io)?;
    }
    Ok(Outcome::Ok)
}
