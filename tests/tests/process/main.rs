//! The real `eddy` binary as a process: durability across kill -9, malformed wire
//! frames, and the command line.

mod t10_durability;
mod t20_wire;
mod t30_cli;
