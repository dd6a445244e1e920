//! Any text as a Dapr routing rule: parsing never panics, and a rule that parses can be
//! evaluated against any event.
#![no_main]

use canon_dapr::rules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The rule, then (after a NUL) an event to evaluate it on.
    let (rule, event) = text.split_once('\0').unwrap_or((text, r#"{"type":"t","data":{"a":"b"}}"#));
    if let Ok(expr) = rules::parse(rule) {
        let event: serde_json_value::Value =
            serde_json_value::from_str(event).unwrap_or(serde_json_value::Value::Null);
        let _ = rules::matches(&expr, &event);
    }
});
