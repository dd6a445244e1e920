//! Any text as a catalog: loading and linting must not panic.
#![no_main]

use canon_catalog::Catalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let loaded = Catalog::load(text, "fuzz.yaml");
        for d in &loaded.diagnostics {
            assert!(d.line >= 1);
        }
    }
});
