//! Any bytes: the JSON-format decoders must not panic, and whatever they accept must encode
//! and decode back to the same event.
#![no_main]

use canon_envelope::CloudEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = CloudEvent::from_json(data) {
        let again = CloudEvent::from_json(&ev.to_json()).expect("an accepted event re-decodes");
        assert_eq!(again, ev);
    }
    let _ = CloudEvent::batch_from_json(data);
});
