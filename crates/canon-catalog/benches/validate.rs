//! Decode + envelope checks + payload validation of one ~500-byte seed event, per dialect.
//! Run: `cargo bench -p canon-catalog --bench validate`.

use std::path::PathBuf;

use canon_catalog::Catalog;

/// The allocator the `canon` binary ships with, so the figure is the product's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn case(name: &str, pick: usize) -> (Catalog, Vec<u8>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join(format!("examples/catalogs/{name}.yaml")))
        .expect("catalog");
    let catalog = Catalog::load(&text, name).catalog.expect("valid catalog");
    let events: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root.join(format!("examples/events/{name}.json")))
            .expect("events"),
    )
    .expect("json");
    (catalog, events[pick].to_string().into_bytes())
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_validate");
    // One example event per seed, 300 to 650 bytes: the "~500-byte seed event".
    for (name, pick) in [
        ("coach", 6),
        ("todo", 0),
        ("bme", 0),
        ("go4u", 4),
        ("lifeos", 9),
    ] {
        let (catalog, doc) = case(name, pick);
        if let Err(v) = catalog.validate_document(catalog.dialect, &doc) {
            panic!("{name} example {pick} must be valid: {v:?}");
        }
        group.throughput(Throughput::Elements(1));
        group.bench_function(
            format!("{}_{}_{}B", catalog.dialect, name, doc.len()),
            |b| {
                b.iter(|| {
                    catalog
                        .validate_document(catalog.dialect, std::hint::black_box(&doc))
                        .is_ok()
                });
            },
        );
    }
    group.finish();

    // The stack the issue measured for orientation (170,000 events/s there): the whole document
    // parsed into a `serde_json::Value`, the payload validated by the catalog's own compiled
    // jsonschema validator. No envelope rules, no dialect mapping, no personal-data rules. Run beside
    // Canon, it tells how fast this machine is today.
    let mut group = c.benchmark_group("naive_value_jsonschema");
    for (name, pick, member) in [("coach", 6, "data"), ("go4u", 4, "payload")] {
        let (catalog, doc) = case(name, pick);
        let event: serde_json::Value = serde_json::from_slice(&doc).expect("json");
        let ty = event
            .get("type")
            .or_else(|| event.get("event_name"))
            .and_then(serde_json::Value::as_str)
            .expect("type");
        let validator = catalog.types[ty]
            .version(None)
            .and_then(|pv| pv.validator())
            .expect("compiled schema");
        assert!(validator.is_valid(&event[member]));
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("{name}_{}B", doc.len()), |b| {
            b.iter(|| {
                let v: serde_json::Value =
                    serde_json::from_slice(std::hint::black_box(&doc)).expect("json");
                validator.is_valid(&v[member])
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
