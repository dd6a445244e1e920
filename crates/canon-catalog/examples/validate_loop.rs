//! A fixed amount of decode + validate work, for instruction counts that do not depend on
//! machine load: `valgrind --tool=callgrind target/release/examples/validate_loop go4u 4 20000`.

use std::path::PathBuf;

use canon_catalog::Catalog;

/// The allocator the `canon` binary ships with, so the figure is the product's.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "coach".into());
    let pick: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join(format!("examples/catalogs/{name}.yaml")))
        .expect("catalog");
    let catalog = Catalog::load(&text, &name).catalog.expect("valid catalog");
    let events: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(root.join(format!("examples/events/{name}.json")))
            .expect("events"),
    )
    .expect("json");
    let iterations: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let doc = events[pick].to_string().into_bytes();
    let mut valid = 0u32;
    for _ in 0..iterations {
        valid += u32::from(
            catalog
                .validate_document(catalog.dialect, std::hint::black_box(&doc))
                .is_ok(),
        );
    }
    assert_eq!(valid, iterations);
}
