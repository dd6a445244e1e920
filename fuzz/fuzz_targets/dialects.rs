//! Any bytes in any dialect: decoding must not panic, and an accepted document must come back
//! equal (as JSON) after canonical and back.
#![no_main]

use canon_envelope::Dialect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, doc)) = data.split_first() else { return };
    let dialect = Dialect::ALL[usize::from(selector) % Dialect::ALL.len()];
    if let Ok(ev) = dialect.decode(doc)
        && dialect != Dialect::CloudEvents
    {
        let back = dialect.encode(&ev).expect("an accepted document re-encodes");
        let a: serde_json_value::Value = serde_json_value::from_slice(doc).expect("accepted input is JSON");
        let b: serde_json_value::Value = serde_json_value::from_slice(&back).expect("output is JSON");
        assert_eq!(a, b);
    }
});
