#!/usr/bin/env bash
# Builds eddy (release) and starts a single node with the embedded defaults:
# data in ./eddy-data, Postgres protocol on 127.0.0.1:5433. Extra arguments go to
# `eddy start` (see `eddy start --help`). Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
exec cargo run --release --locked --bin eddy -- start "$@"
