//! How Canon's names map onto JetStream's: streams, subjects, consumers, buckets and message
//! ids. JetStream names allow fewer characters than Canon's (topic `todo.tasks`, group
//! `dapr:app:pubsub:topic`), so every name is encoded reversibly into `[A-Za-z0-9-]` with `_XX`
//! escapes; keys that only need to be told apart (ordering keys, idempotency keys, event ids)
//! are hashed.
//!
//! | Canon | JetStream |
//! |---|---|
//! | topic `t` | stream `CANON_<t>`, subjects `canon.<t>.>` |
//! | an event with ordering key `k` | subject `canon.<t>.e.<hash k>` (`_` without a key) |
//! | an event redriven for group `g` | subject `canon.<t>.r.<g>.<hash k>`, header `Canon-Seq` |
//! | idempotency key `i` (P5) | a claim on subject `canon.<t>.k.<hash i>`, with a TTL |
//! | dedup by (`source`, `id`) (P4) | `Nats-Msg-Id: <hash source id>` |
//! | group `g` | durable pull consumer `<g>` |
//! | `g`'s dead letters | stream `CANONDLQ_<t>`, subject `canondlq.<t>.<g>` |
//! | lookups by id, correlation, causation | stream `CANONIX_<t>`, subjects `canonix.<t>.<kind>.<bucket>` |
//! | per-event delivery state | key-value bucket `canonst_<t>` |
//! | key-value bucket `b` | key-value bucket `canonkv_<b>` |

use sha2::{Digest, Sha256};

/// Encodes a name into `[A-Za-z0-9-]`, escaping every other byte as `_` and two hex digits.
pub(crate) fn enc(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The inverse of [`enc`]; `None` for a string `enc` never makes.
pub(crate) fn dec(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'_' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// 128 bits of SHA-256 as 32 hex digits.
pub(crate) fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for b in &h.finalize()[..16] {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// The subject token of an ordering key.
pub(crate) fn key_token(key: Option<&str>) -> String {
    key.map_or_else(|| "_".to_owned(), |k| hash(&[k]))
}

/// The `Nats-Msg-Id` of an event: its (`source`, `id`).
pub(crate) fn msg_id(source: &str, id: &str) -> String {
    hash(&[source, id])
}

/// A namespace: the prefixes of every stream and subject of one Canon installation, so that
/// several share a JetStream (`canon` and `CANON` by default; `canon-<ns>` and `CANON-<ns>`).
#[derive(Debug, Clone)]
pub(crate) struct Space {
    lower: String,
    upper: String,
}

impl Space {
    pub(crate) fn new(namespace: &str) -> Space {
        if namespace.is_empty() {
            Space {
                lower: "canon".into(),
                upper: "CANON".into(),
            }
        } else {
            let e = enc(namespace);
            Space {
                lower: format!("canon-{e}"),
                upper: format!("CANON-{e}"),
            }
        }
    }

    /// The topic a stream name belongs to.
    pub(crate) fn topic_of_stream(&self, stream: &str) -> Option<String> {
        dec(stream.strip_prefix(&self.upper)?.strip_prefix('_')?)
    }

    /// A key-value bucket of the port.
    pub(crate) fn kv_bucket(&self, bucket: &str) -> String {
        format!("{}kv_{}", self.lower, enc(bucket))
    }

    /// Whether a stream belongs to this namespace (for cleaning up tests).
    pub(crate) fn owns_stream(&self, stream: &str) -> bool {
        stream.starts_with(&format!("{}_", self.upper))
            || stream.starts_with(&format!("{}DLQ_", self.upper))
            || stream.starts_with(&format!("{}IX_", self.upper))
            || stream.starts_with(&format!("KV_{}st_", self.lower))
            || stream.starts_with(&format!("KV_{}kv_", self.lower))
    }
}

/// The names of one topic's JetStream objects.
#[derive(Debug, Clone)]
pub(crate) struct TopicNames {
    pub(crate) topic: String,
    pub(crate) token: String,
    pub(crate) stream: String,
    pub(crate) dlq: String,
    pub(crate) index: String,
    pub(crate) state: String,
    /// The subject prefix of the namespace.
    subjects: String,
}

impl TopicNames {
    pub(crate) fn new(space: &Space, topic: &str) -> TopicNames {
        let token = enc(topic);
        TopicNames {
            topic: topic.to_owned(),
            stream: format!("{}_{token}", space.upper),
            dlq: format!("{}DLQ_{token}", space.upper),
            index: format!("{}IX_{token}", space.upper),
            state: format!("{}st_{token}", space.lower),
            subjects: space.lower.clone(),
            token,
        }
    }

    /// Every subject of the topic's stream.
    pub(crate) fn all(&self) -> String {
        format!("{}.{}.>", self.subjects, self.token)
    }

    /// Every event of the topic (redriven copies and claims are not events of the topic).
    pub(crate) fn events(&self) -> String {
        format!("{}.{}.e.>", self.subjects, self.token)
    }

    pub(crate) fn event_subject(&self, key: Option<&str>) -> String {
        format!("{}.{}.e.{}", self.subjects, self.token, key_token(key))
    }

    pub(crate) fn redrive_subject(&self, group: &str, key: Option<&str>) -> String {
        format!(
            "{}.{}.r.{}.{}",
            self.subjects,
            self.token,
            enc(group),
            key_token(key)
        )
    }

    pub(crate) fn redrive_filter(&self, group: &str) -> String {
        format!("{}.{}.r.{}.>", self.subjects, self.token, enc(group))
    }

    /// The subjects of the topic's DLQ stream.
    pub(crate) fn dlq_all(&self) -> String {
        format!("{}dlq.{}.>", self.subjects, self.token)
    }

    /// The subjects of the topic's index stream.
    pub(crate) fn index_all(&self) -> String {
        format!("{}ix.{}.>", self.subjects, self.token)
    }

    /// The subject of the events of one ordering key token.
    pub(crate) fn key_subject(&self, key_token: &str) -> String {
        format!("{}.{}.e.{key_token}", self.subjects, self.token)
    }

    /// The prefix of event subjects (a key token follows).
    pub(crate) fn event_prefix(&self) -> String {
        format!("{}.{}.e.", self.subjects, self.token)
    }

    pub(crate) fn claim_subject(&self, idempotency_key: &str) -> String {
        format!(
            "{}.{}.k.{}",
            self.subjects,
            self.token,
            hash(&[idempotency_key])
        )
    }

    pub(crate) fn dlq_subject(&self, group: &str) -> String {
        format!("{}dlq.{}.{}", self.subjects, self.token, enc(group))
    }

    pub(crate) fn index_subject(&self, kind: char, value: &str) -> (String, String) {
        let h = hash(&[value]);
        (
            format!("{}ix.{}.{kind}.{}", self.subjects, self.token, &h[..3]),
            h,
        )
    }
}

/// A group's consumer name.
pub(crate) fn consumer(group: &str) -> String {
    enc(group)
}

/// A key of a key-value bucket: JetStream keys allow `[-/_=.a-zA-Z0-9]`; `=` escapes the rest.
pub(crate) fn kv_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("=00=");
    }
    out
}

pub(crate) fn kv_key_dec(s: &str) -> Option<String> {
    if s == "=00=" {
        return Some(String::new());
    }
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'=' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_encode_reversibly_into_jetstream_characters() {
        for name in [
            "orders",
            "todo.tasks",
            "dapr:app:pubsub:t",
            "a_b",
            "ünïcode",
            "x>y*z",
        ] {
            let e = enc(name);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            assert_eq!(dec(&e).as_deref(), Some(name));
            let k = kv_key(name);
            assert_eq!(kv_key_dec(&k).as_deref(), Some(name));
        }
        assert_eq!(kv_key_dec(&kv_key("")).as_deref(), Some(""));
        let space = Space::new("");
        let names = TopicNames::new(&space, "todo.tasks");
        assert_eq!(names.stream, "CANON_todo_2Etasks");
        assert_eq!(
            space.topic_of_stream(&names.stream).as_deref(),
            Some("todo.tasks")
        );
        assert_eq!(space.topic_of_stream("CANONDLQ_todo_2Etasks"), None);
        let other = Space::new("t1");
        assert_eq!(TopicNames::new(&other, "a").stream, "CANON-t1_a");
        assert_eq!(space.topic_of_stream("CANON-t1_a"), None);
        assert!(other.owns_stream("KV_canon-t1st_a"));
        assert_ne!(msg_id("a", "bc"), msg_id("ab", "c"));
        assert_eq!(key_token(None), "_");
    }
}
