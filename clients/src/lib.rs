//! eddy-client: the Rust client for eddy (to be built by the subscriptions issue).
//!
//! It will offer publish, a batching producer, subscriptions as a `Stream`, and durable
//! consumers with acks, on top of tokio-postgres. Until then, any Postgres driver works:
//! eddy speaks the PostgreSQL wire protocol.
