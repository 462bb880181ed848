//! eddy-bench: load benchmarks against eddy and its peers (to be built by the benchmarks
//! issue), and criterion micro-benchmarks of the hot paths.
