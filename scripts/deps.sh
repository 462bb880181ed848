#!/usr/bin/env bash
# Installs what building and testing eddy needs, when it is missing:
#   clang + libclang-dev   (RocksDB's bindings are generated with libclang)
#   postgresql-client      (psql, used by the tests and the walk-through)
#   python3 psycopg        (driver compatibility test; tests only: pass --tests)
#   postgresql redis-server nats-server  (benchmark peers; pass --peers)
# Uses apt-get when run as root; otherwise says what to install and stops.
set -euo pipefail

want_tests=0
want_peers=0
[ "${1:-}" = "--tests" ] && want_tests=1
[ "${1:-}" = "--peers" ] && want_peers=1

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
if [ "$want_peers" = 1 ]; then
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "eddy: installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "eddy: missing ${missing[*]}." >&2
    echo "      Install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and run this again." >&2
    exit 1
  fi
fi

if [ "$want_tests" = 1 ] && ! python3 -c "import psycopg" >/dev/null 2>&1; then
  if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    echo "eddy: installing psycopg for the driver test (pip)" >&2
    if [ "$(id -u)" = "0" ]; then
      python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "psycopg[binary]" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "psycopg[binary]"
    else
      python3 -m pip install --quiet --disable-pip-version-check --user "psycopg[binary]"
    fi
  elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "eddy: installing python3 and psycopg with apt-get for the driver test" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3 python3-psycopg >/dev/null
  else
    echo "eddy: the driver test needs Python's psycopg: sudo apt-get install python3-psycopg" >&2
    echo "      (or: python3 -m pip install --user 'psycopg[binary]') and run this again." >&2
    exit 1
  fi
  python3 -c "import psycopg" >/dev/null 2>&1 || { echo "eddy: psycopg still not importable by python3" >&2; exit 1; }
fi
