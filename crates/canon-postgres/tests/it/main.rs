//! The PostgreSQL backend against the delivery contract: the whole conformance suite, each check
//! in a fresh schema of the test database (`CANON_TEST_POSTGRES`, default
//! `postgres://postgres:canon@127.0.0.1:5432/test`; `scripts/services` starts the server). A
//! missing server fails the tests: they never skip.

mod backend;

use canon_conformance::Harness;
use canon_postgres::{PgBackend, PgConfig};

pub(crate) fn url() -> String {
    std::env::var("CANON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres:canon@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema per harness, dropped after a check that passed.
pub(crate) struct PgHarness {
    schema: String,
}

impl PgHarness {
    pub(crate) fn new() -> Self {
        PgHarness {
            schema: format!("canon_t_{:016x}", fastrand::u64(..)),
        }
    }

    pub(crate) fn config(&self) -> PgConfig {
        PgConfig {
            url: url(),
            schema: self.schema.clone(),
            pool_size: 8,
        }
    }
}

impl Harness for PgHarness {
    type Backend = PgBackend;

    async fn open(&self) -> PgBackend {
        PgBackend::open_with(self.config())
            .await
            .expect("PostgreSQL must be running (scripts/services starts it)")
    }

    async fn close(&self) {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be running");
        tokio::spawn(conn);
        client
            .batch_execute(&format!(
                "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
                self.schema
            ))
            .await
            .expect("drop the check's schema");
    }
}

canon_conformance::suite!(PgHarness::new());
