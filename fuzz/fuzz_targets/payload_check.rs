//! Any payload for any type of the shipped catalogs: what the one-pass payload check accepts,
//! the full validator accepts, personal-data rules included.
//!
//! Input: a byte choosing the catalog, the type's name, a newline, the payload's JSON text.
#![no_main]

use std::sync::OnceLock;

use canon_catalog::Catalog;
use canon_envelope::{CloudEvent, Data};
use libfuzzer_sys::fuzz_target;

fn catalogs() -> &'static [Catalog] {
    static CATALOGS: OnceLock<Vec<Catalog>> = OnceLock::new();
    CATALOGS.get_or_init(|| {
        [
            include_str!("../../examples/catalogs/coach.yaml"),
            include_str!("../../examples/catalogs/bme.yaml"),
            include_str!("../../examples/catalogs/go4u.yaml"),
            include_str!("../../examples/catalogs/lifeos.yaml"),
            include_str!("../../examples/catalogs/todo.yaml"),
        ]
        .iter()
        .map(|text| Catalog::load(text, "seed.yaml").catalog.expect("a shipped catalog loads"))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Some(newline) = rest.iter().position(|&b| b == b'\n') else { return };
    let (Ok(name), Ok(payload)) = (
        std::str::from_utf8(&rest[..newline]),
        std::str::from_utf8(&rest[newline + 1..]),
    ) else {
        return;
    };
    let catalogs = catalogs();
    let catalog = &catalogs[usize::from(pick) % catalogs.len()];
    let Some((ty, _)) = catalog.lookup(name) else { return };
    let Ok(payload) = Data::json(payload) else { return };
    let Data::Json(raw) = &payload else { return };
    for pv in &ty.versions {
        if pv.fast_check(raw.get()) == Some(true) {
            let mut ev = CloudEvent::new("1", "/fuzz", ty.name.clone());
            ev.set_extension("dataversion", pv.version.as_str());
            ev.data = Some(payload.clone());
            let violations = catalog.validate_full(&ev);
            assert!(
                violations.is_empty(),
                "the one-pass check accepted what the full validator refuses: {violations:?}"
            );
        }
    }
});
