//! Wake-ups of waiting pulls and reads. Each topic has a [`tokio::sync::Notify`] in this
//! process; publishes and settles here wake it directly, and a `NOTIFY` of another process
//! arrives on the one connection that `LISTEN`s for the schema. Notifications are a shortcut,
//! not a guarantee: waiters also poll, so a lost notification (a reconnect) costs latency only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

/// How long a waiter sleeps at most before it looks again without a notification.
pub(crate) const POLL: Duration = Duration::from_millis(250);

/// One notifier per topic.
#[derive(Debug, Default)]
pub(crate) struct Wakers {
    topics: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    pub(crate) fn get(&self, topic: &str) -> Arc<Notify> {
        let mut map = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(topic.to_owned()).or_default())
    }

    pub(crate) fn wake(&self, topic: &str) {
        let map = self
            .topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get(topic) {
            n.notify_waiters();
        }
    }
}

/// Listens on `channel` for ever (reconnecting after a failure) and wakes the topic each
/// notification names.
pub(crate) async fn listen(config: tokio_postgres::Config, channel: Arc<str>, wakers: Arc<Wakers>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let sql = format!("LISTEN \"{channel}\"");
                let ok = {
                    // The connection must be polled for the LISTEN to complete.
                    let mut listen = std::pin::pin!(client.batch_execute(&sql));
                    loop {
                        tokio::select! {
                            r = &mut listen => break r.is_ok(),
                            m = messages.next() => if m.is_none() { break false },
                        }
                    }
                };
                if ok {
                    backoff = Duration::from_millis(100);
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(AsyncMessage::Notification(n)) => wakers.wake(n.payload()),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "PostgreSQL notification connection failed");
                                break;
                            }
                        }
                    }
                }
                drop(client);
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to listen for notifications"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
