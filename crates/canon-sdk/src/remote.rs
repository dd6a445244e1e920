//! Talking to `canon serve`: an HTTP client, a pull consumer that runs a [`crate::Dispatcher`] on
//! remote events, and an axum handler for push subscriptions.

mod client;
mod consumer;
mod push;

pub use client::{Client, Delivery, PublishStatus, Published, RemoteError};
pub use consumer::{Consumer, ConsumerStats};
pub use push::push_handler;
