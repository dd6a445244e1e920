//! Any bytes in any dialect: decoding must not panic, an accepted document must come back
//! equal after canonical and back, and the one-pass reader may answer only what the full decoder
//! answers.
#![no_main]

use canon_envelope::Dialect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, doc)) = data.split_first() else { return };
    let dialect = Dialect::ALL[usize::from(selector) % Dialect::ALL.len()];
    if let Some(fast) = dialect.decode_fast(doc) {
        assert_eq!(Ok(fast), dialect.decode_full(doc), "the one-pass reader disagrees with the full decoder");
    }
    if let Ok(ev) = dialect.decode(doc)
        && dialect != Dialect::CloudEvents
    {
        let back = dialect.encode(&ev).expect("an accepted document re-encodes");
        // The written document decodes to the same event...
        assert_eq!(dialect.decode(&back).expect("the written document decodes"), ev);
        // ...and, where serde_json can represent both (it refuses numbers beyond f64, which JSON
        // allows), it is the same JSON document.
        if let (Ok(a), Ok(b)) = (serde_json_value::from_slice::<serde_json_value::Value>(doc), serde_json_value::from_slice::<serde_json_value::Value>(&back)) {
            assert_eq!(a, b);
        }
    }
});
