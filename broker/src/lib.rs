//! eddy-broker: the `eddy` binary — a node that speaks the Postgres wire protocol.
//!
//! # Layout
//! - [`spawn_node`] / [`NodeHandle`] — open storage, build the engine, serve pgwire,
//!   run retention; `shutdown()` stops it in order.
//! - [`Config`] — the TOML config (`[node]`, `[storage]`, `[query]`), overridden by flags.
//! - `pg` — pgwire handlers: startup (trust), simple and extended queries, COPY, cancel;
//!   the connection loop (`pg/conn.rs`: frame checks, `max_connections`, shutdown).
//! - `error` — the only mapping from errors to SQLSTATE codes.
//! - `router` (pure cost and choice), `routing` (the node's router: candidates, rules,
//!   `EXPLAIN ROUTE`), `load` (what the node measures and gossips, `eddy.metrics`).
//!
//! # Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let mut config = eddy_broker::Config::default();
//! config.node.pg_addr = "127.0.0.1:0".parse()?;
//! let node = eddy_broker::spawn_node(config).await?;
//! println!("psql -h 127.0.0.1 -p {} -U eddy", node.pg_addr().port());
//! node.shutdown().await?;
//! # Ok(()) }
//! ```

mod config;
pub mod error;
mod http;
mod load;
mod pg;
pub mod router;
mod routing;
mod server;

pub use config::{ClusterSection, Config, NodeConfig, RoutingConfig};
pub use server::{spawn_node, NodeHandle};
