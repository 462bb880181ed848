//! eddy-consensus: replication for eddy (to be built by the cluster and gossip issues).
//!
//! It will hold the openraft groups over storage (metadata group and one group per topic
//! partition and table), the internal RPC (tokio-util framed TCP), gossip membership and
//! failure detection, and delta gossip with anti-entropy. Both replication modes feed
//! `eddy_storage::WriteOp`s into the storage committer, the same path single-node writes
//! take today. Empty for now: a single node writes to storage directly.
