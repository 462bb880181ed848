//! eddy-query: eddy's SQL dialect and its execution over storage.
//!
//! # Layout
//! - [`Engine`] — one per node: parses ([`dialect`]), plans and runs statements, producing
//!   an [`Output`] (rows, a command tag, or a COPY in/out to drive); `engine::statements`
//!   runs those that neither read nor write, `engine::names` names output columns as
//!   PostgreSQL does.
//! - [`Session`] — per-connection settings (SET/SHOW).
//! - `ddl` — CREATE/ALTER/DROP TOPIC, CREATE/DROP TABLE, SHOW TOPICS.
//! - [`SubscribeSpec`] / `Engine::subscribe` — live, filtered streams of a topic's rows or
//!   a table's changes; `cursor` — DECLARE/FETCH/CLOSE; `durable` — CREATE SUBSCRIPTION,
//!   FETCH FROM SUBSCRIPTION, ACK/NACK; `system` — `eddy.partitions`, `eddy.subscriptions`.
//! - `provider` — DataFusion table providers for topics (pushdown of `_partition`,
//!   `_offset`, `_ts`) and tables (primary-key point reads).
//! - `route` — which topics and tables a statement reads, and which nodes can run it.
//! - `dml` — INSERT (with a fast path that never plans through DataFusion), UPDATE, DELETE;
//!   its `values` evaluate literals and parameters without DataFusion, `table` and `topic`
//!   write, `returning` answers RETURNING.
//! - [`CopyInSink`], [`CopyOptions`] — COPY FROM STDIN parsing and COPY TO encoding.
//!
//! # Example
//! ```no_run
//! # async fn demo(store: eddy_storage::Store) -> eddy_query::Result<()> {
//! use eddy_query::{Engine, QueryConfig, Session};
//! let engine = Engine::new(store, QueryConfig::default())?;
//! let mut session = Session::new();
//! for stmt in engine.parse("CREATE TOPIC events; INSERT INTO events VALUES ('hi')")? {
//!     engine.run(&mut session, stmt).await?;
//! }
//! # Ok(()) }
//! ```

mod convert;
mod coop;
mod copy;
mod core;
mod cursor;
mod ddl;
pub mod description;
pub mod dialect;
mod dml;
mod durable;
mod engine;
mod error;
mod fanout;
mod functions;
mod ident;
mod names;
mod output;
mod params;
mod point;
mod provider;
mod route;
mod session;
mod spec;
mod subscribe;
mod system;
mod text_encode;
mod types;
mod unplanned;
pub mod writer;

pub use copy::{CopyFormat, CopyInSink, CopyOptions};
pub use description::{Description, Parsed, SessionChange, Writes};
pub use dialect::Statement;
pub use engine::{Engine, Output, Prepared, QueryConfig, MAX_PARTITIONS};
pub use error::{Error, Result};
pub use functions::version_string;
pub use provider::{table_schema, topic_schema};
pub use session::{check_setting, Session, DEFAULT_SETTINGS, ROUTING_STRATEGIES};
pub use subscribe::{rows_as_json, StartPosition, SubscribeOptions, SubscribeSpec};
pub use types::{parse_duration_ms, parse_text};
pub use writer::{
    CounterRow, FaultCounts, GossipPeerRow, GroupRow, Holder, MetricRow, NodeFigures, NodeRow,
    PartitionRow, RouteRow, Writer,
};
