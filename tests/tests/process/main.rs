//! The real `eddy` binary as a process: durability across kill -9, malformed wire
//! frames, the command line, clusters of processes, gossip between them, and how
//! connections end (shutdown, max_connections, malformed messages), and where the
//! router runs statements.

mod t10_durability;
mod t20_wire;
mod t30_cli;
mod t40_cluster;
mod t45_relay;
mod t50_gossip;
mod t60_rmw;
mod t70_errors;
mod t80_connections;
mod t85_routing;
