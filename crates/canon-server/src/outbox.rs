//! The outbox relays a server runs (`[[outbox]]`): each moves one producer table's rows into
//! this server's backend through its engine (catalogs, declared producers), until shutdown.

use std::sync::Arc;
use std::time::Duration;

use canon_backend::Backend;
use canon_engine::Engine;
use canon_outbox::{Outbox, Publisher, Relay, RelayConfig};

use crate::{App, ServeError, Shared};

impl<B: Backend> Publisher for App<B> {
    type Backend = B;
    fn engine(&self) -> &Engine<B> {
        &self.engine
    }
    fn topic_config(&self, name: &str) -> canon_backend::TopicConfig {
        self.config.topic(name)
    }
}

/// Starts one relay per configured outbox.
pub(crate) fn start<B: Backend>(app: &Shared<B>) -> Result<(), ServeError> {
    let mut tasks = Vec::new();
    for o in &app.config.outbox {
        let outbox = Outbox::new(&o.table).map_err(|e| ServeError::Config(e.to_string()))?;
        let relay = Relay::new(
            RelayConfig {
                url: o.url.clone(),
                outbox,
                batch: o.batch,
                poll: Duration::from_millis(o.poll_ms),
                producer: o.producer.clone(),
            },
            Arc::clone(app),
        );
        let mut stop = app.shutdown.subscribe();
        let table = o.table.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = relay.run(stopped).await {
                tracing::error!(table, error = %e, "outbox relay stopped");
            }
        }));
    }
    app.relays
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .extend(tasks);
    Ok(())
}
