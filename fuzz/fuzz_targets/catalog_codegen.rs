//! Any catalog that loads without errors generates Rust code that parses as a Rust file:
//! no field, type, enum value or version a catalog can hold breaks the generated code.
#![no_main]

use canon_catalog::Catalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let loaded = Catalog::load(text, "fuzz.yaml");
    if loaded.has_errors() {
        return;
    }
    let Some(catalog) = loaded.catalog else {
        return;
    };
    let tokens = canon_codegen::generate(&catalog, "fuzz.yaml", canon_codegen::Source::Inline(text));
    if let Err(e) = syn::parse2::<syn::File>(tokens) {
        panic!("generated code does not parse: {e}");
    }
});
