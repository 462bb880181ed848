#!/usr/bin/env bash
# Runs the whole test suite: unit and property tests, SQL golden files through the real
# pgwire server, tokio-postgres / psql / psycopg tests, and the kill -9 durability test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh --tests
# The build cache lives outside the clone so warm runs are fast; a cold one still works.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}"
# Process tests start the real `eddy` binary; build it first.
cargo build --locked --bin eddy
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --workspace -- --test-threads="${EDDY_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The criterion micro-benchmarks, each run once (test mode) so they keep working.
if [ "$status" = 0 ]; then
  cargo test --locked --workspace --bench micro 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
set -e
# One closing line for the whole run (cargo's last line is often an empty doc-test crate).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
     END { printf "eddy: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
