#!/bin/bash
# Message id lookups against SST files: loads 2,000,000 rows with distinct `_msg_id`s into
# a 4-partition topic, then times three loads of 500,000 new ids and one of 500,000
# repeats (psql \copy, CSV). Used for the bloom filter figures in docs/benchmarks.md.
#
#   benches/ids-lookup.sh [path/to/eddy]     (default: the release build)
#
# Starts its own node on 127.0.0.1:6563 in a temp dir and stops it at the end.
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/eddy-target}/release/eddy}
D=$(mktemp -d)
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"' EXIT
"$BIN" start --data-dir "$D/data" --pg-addr 127.0.0.1:6563 --cluster-addr 127.0.0.1:7663 >"$D/log" 2>&1 &
PID=$!
P="psql -q -X -h 127.0.0.1 -p 6563 -U eddy"
for _ in $(seq 100); do $P -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
$P -c "CREATE TOPIC ids_t (p TEXT) WITH (partitions = 4, dedup_window = '1 h')"
rows() { # ids [from, to) as CSV lines: id,payload
  python3 -c "
import sys
a, b = int(sys.argv[1]), int(sys.argv[2])
pay = 'y' * 100
sys.stdout.write(''.join(f'id-{i:012d}-{i * 7919 % 1000003},{pay}\n' for i in range(a, b)))" "$1" "$2"
}
load() { # label file
  local t0 t1
  t0=$(date +%s.%N)
  $P -c "\\copy ids_t (_msg_id, p) FROM '$2' WITH (FORMAT csv)"
  t1=$(date +%s.%N)
  python3 -c "print(f'$1: {$t1 - $t0:.2f} s')"
}
rows 0 2000000 >"$D/base.csv"
load "base, 2M new ids" "$D/base.csv"
for r in 1 2 3; do
  rows $((2000000 + r * 500000)) $((2500000 + r * 500000)) >"$D/new$r.csv"
  load "500k new ids, round $r" "$D/new$r.csv"
done
load "500k repeats" "$D/new1.csv"
echo "messages stored: $($P -At -c 'SELECT count(*) FROM ids_t')"
echo "SST files: $(ls "$D"/data/*.sst | wc -l)"
