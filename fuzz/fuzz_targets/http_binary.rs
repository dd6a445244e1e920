//! Any headers and body: binary-mode decoding must not panic; what it accepts round-trips.
#![no_main]

use canon_envelope::{CloudEvent, decode_header_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_header_value(data);
    // Lines of `name: value` up to a blank line, then the body.
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let headers: Vec<(&str, &[u8])> = head
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let i = line.iter().position(|b| *b == b':')?;
            Some((std::str::from_utf8(&line[..i]).ok()?, &line[i + 1..]))
        })
        .collect();
    if let Ok(ev) = CloudEvent::from_http_binary(headers, body) {
        let msg = ev.to_http_binary();
        let headers: Vec<(&str, &[u8])> = msg
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(msg.content_type.as_deref().map(|c| ("content-type", c.as_bytes())))
            .collect();
        let again = CloudEvent::from_http_binary(headers, &msg.body).expect("an accepted event re-decodes");
        // Everything survives; only an absent datacontenttype becomes explicit for JSON data.
        let mut expected = ev.clone();
        expected.datacontenttype = msg.content_type.clone();
        assert_eq!(again, expected);
    }
});
