//! The embedded backend against the delivery contract: the whole conformance suite, each check
//! in its own data directory; and the crash harness.

mod crash;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use canon_conformance::Harness;
use canon_embedded::{Durability, EmbeddedBackend};

/// A fresh data directory per check, removed afterwards.
struct EmbeddedHarness {
    dir: PathBuf,
}

impl EmbeddedHarness {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "canon-embedded-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        EmbeddedHarness { dir }
    }
}

impl Drop for EmbeddedHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Harness for EmbeddedHarness {
    type Backend = EmbeddedBackend;

    async fn open(&self) -> EmbeddedBackend {
        match EmbeddedBackend::open(&self.dir, Durability::Sync) {
            Ok(b) => b,
            Err(e) => panic!("open {}: {e}", self.dir.display()),
        }
    }
}

canon_conformance::suite!(EmbeddedHarness::new());
