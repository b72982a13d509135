#!/usr/bin/env bash
# Start/stop a throwaway local PostgreSQL for the storage tests.
#
#   tests/pg_server.sh start   # idempotent; prints the URL to use as NAS_TEST_PG_URL
#   tests/pg_server.sh stop    # idempotent
#   tests/pg_server.sh url     # prints the URL
#
#   export NAS_TEST_PG_URL=$(tests/pg_server.sh start)
#
# Env: PGDATA_DIR (default /tmp/nas-pgdata), PGPORT (55432), PGBIN (newest
# /usr/lib/postgresql/*/bin, else the directory of pg_ctl on PATH). Trust
# authentication, listens on 127.0.0.1 only. Run as root it runs the server as
# the `postgres` user. Needs the server binaries: apt-get install -y postgresql
set -euo pipefail

DATA="${PGDATA_DIR:-/tmp/nas-pgdata}"
PORT="${PGPORT:-55432}"
URL="postgresql+psycopg://postgres@127.0.0.1:${PORT}/postgres"

if [[ -z "${PGBIN:-}" ]]; then
  PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [[ -z "$PGBIN" ]] && command -v pg_ctl >/dev/null; then
    PGBIN="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
  fi
fi
if [[ -z "$PGBIN" || ! -x "$PGBIN/pg_ctl" ]]; then
  echo "pg_server.sh: PostgreSQL server binaries not found (apt-get install -y postgresql, or set PGBIN)" >&2
  exit 1
fi

as_pg() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

running() { as_pg "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if [[ ! -f "$DATA/PG_VERSION" ]]; then
      mkdir -p "$DATA"
      [[ "$(id -u)" == 0 ]] && chown postgres: "$DATA"
      chmod 700 "$DATA"
      as_pg "$PGBIN/initdb" -D "$DATA" -A trust -U postgres >"$DATA.initdb.log" 2>&1 || {
        cat "$DATA.initdb.log" >&2; exit 1; }
    fi
    if ! running; then
      as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
        -o "-k /tmp -p $PORT -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" \
        start >/dev/null || { cat "$DATA/server.log" >&2; exit 1; }
    fi
    echo "$URL"
    ;;
  stop)
    if [[ -f "$DATA/PG_VERSION" ]] && running; then
      as_pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    fi
    ;;
  url)
    echo "$URL"
    ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
