//! The real `eddy` binary as a process: durability across kill -9, malformed wire
//! frames, the command line, clusters of processes, and gossip between them.

mod t10_durability;
mod t20_wire;
mod t30_cli;
mod t40_cluster;
mod t50_gossip;
