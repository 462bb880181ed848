#!/usr/bin/env bash
# Builds eddy and eddy-bench in release mode and runs `eddy-bench "$@"`, e.g.
#   ./scripts/bench.sh publish-durable --peer all
# Installs the peers (PostgreSQL, Redis, NATS) with apt-get when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh --peers
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
# One package at a time: built together, cargo would unify features and rebuild the tree.
cargo build --locked --release -p eddy-broker --bin eddy
cargo build --locked --release -p eddy-bench --bin eddy-bench
exec "$CARGO_TARGET_DIR/release/eddy-bench" "$@"
