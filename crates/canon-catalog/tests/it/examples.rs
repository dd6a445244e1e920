use crate::{load_example, render, repo};

pub(crate) const EXAMPLES: [&str; 5] = ["coach", "bme", "go4u", "lifeos", "todo"];

pub(crate) fn events(name: &str) -> Vec<serde_json::Value> {
    let text =
        std::fs::read_to_string(repo().join(format!("examples/events/{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_seed_catalog_loads_without_diagnostics() {
    for name in EXAMPLES {
        let path = repo().join(format!("examples/catalogs/{name}.yaml"));
        let loaded = canon_catalog::Catalog::load(&std::fs::read_to_string(path).unwrap(), name);
        assert!(
            loaded.diagnostics.is_empty(),
            "{name}:\n{}",
            render(&loaded)
        );
    }
}

#[test]
fn every_seed_event_is_valid_against_its_catalog() {
    for name in EXAMPLES {
        let catalog = load_example(name);
        let events = events(name);
        for ev in &events {
            if let Err(v) = catalog.validate_document(catalog.dialect, ev.to_string().as_bytes()) {
                panic!(
                    "{name}: {ev}\n{}",
                    v.iter().map(|v| format!("{v}\n")).collect::<String>()
                );
            }
        }
        let covered: std::collections::BTreeSet<String> = events
            .iter()
            .map(|e| catalog.dialect.decode(e.to_string().as_bytes()).unwrap().ty)
            .collect();
        for ty in catalog.types.keys() {
            assert!(covered.contains(ty), "{name}: no example event of {ty}");
        }
    }
}
