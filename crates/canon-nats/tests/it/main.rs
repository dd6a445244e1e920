//! The JetStream backend against the delivery contract: the whole conformance suite, each check
//! in its own namespace of the test server (`CANON_TEST_NATS`, default `nats://127.0.0.1:4223`,
//! a nats-server 2.14 or later that `scripts/services` installs and starts). A missing server
//! fails the tests: they never skip.

use canon_conformance::Harness;
use canon_nats::NatsBackend;

pub(crate) fn url() -> String {
    std::env::var("CANON_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4223".to_owned())
}

/// A fresh namespace per harness, deleted after a check that passed.
pub(crate) struct NatsHarness {
    namespace: String,
}

impl NatsHarness {
    pub(crate) fn new() -> Self {
        NatsHarness {
            namespace: format!("t{:012x}", fastrand::u64(..1 << 48)),
        }
    }
}

impl Harness for NatsHarness {
    type Backend = NatsBackend;

    async fn open(&self) -> NatsBackend {
        NatsBackend::open_in(&url(), &self.namespace)
            .await
            .expect("nats-server 2.14+ with JetStream must be running (scripts/services starts it)")
    }

    async fn close(&self) {
        self.open()
            .await
            .destroy()
            .await
            .expect("delete the check's streams");
    }
}

canon_conformance::suite!(NatsHarness::new());

mod window;
