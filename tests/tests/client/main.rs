//! The `eddy-client` crate against a real node over real sockets: publish, the batching
//! producer, subscription streams that resume after a lost connection, durable consumers,
//! the crate's examples run as programs, and a client given a cluster's addresses.

mod t10_publish;
mod t20_producer;
mod t30_subscribe;
mod t40_consumer;
mod t50_examples;
mod t60_cluster;

use std::net::SocketAddr;

/// The connection string of a node (or a proxy in front of one).
pub fn url(addr: SocketAddr) -> String {
    format!(
        "host={} port={} user=eddy dbname=eddy",
        addr.ip(),
        addr.port()
    )
}
