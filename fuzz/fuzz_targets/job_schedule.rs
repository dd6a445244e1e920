//! Any text as a job's schedule, dueTime or ttl: parsing never panics and never overflows, and
//! the next tick of a parsed schedule is strictly later.
#![no_main]

use canon_dapr::schedule::{Schedule, go_duration, point_in_time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = 1_790_000_000_000i64;
    let _ = go_duration(text);
    if let Ok(at) = point_in_time(text, now, "dueTime") {
        assert!(at < 253_402_300_800_000);
    }
    if let Ok(s) = Schedule::parse(text) {
        for after in [0, now, i64::MAX - 1] {
            if let Some(next) = s.next_after(after, now) {
                assert!(next > after, "{text:?}: {next} after {after}");
            }
        }
    }
});
