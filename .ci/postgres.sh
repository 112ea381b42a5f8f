# A throwaway PostgreSQL 15 cluster for the Prefect-server tests (trust auth, 127.0.0.1, a free port, database
# "prefect"), from Debian's /usr/lib/postgresql/15/bin.
#
#   source .ci/postgres.sh          # (.ci/run) start one, export ANOMFLOW_TEST_POSTGRES_URL, stop it on exit
#   bash .ci/postgres.sh start      # print the URL (line 1) and the cluster folder (line 2); exit 3: no binaries
#   bash .ci/postgres.sh stop DIR   # stop that cluster and remove its folder
#
# initdb refuses to run as root, so as root the server runs as the `postgres` user (runuser).
PG_BIN="${ANOMFLOW_PG_BIN:-/usr/lib/postgresql/15/bin}"

_pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_pg_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Start a cluster; prints "URL\nDIR". Returns 3 when the binaries are absent.
anomflow_pg_start() {
  if ! [ -x "$PG_BIN/initdb" ]; then
    echo "no PostgreSQL 15 binaries at $PG_BIN (Debian package postgresql-15)" >&2
    return 3
  fi
  local dir port
  dir="$(mktemp -d /tmp/anomflow-pg.XXXXXX)"
  chmod 755 "$dir"
  mkdir "$dir/data"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/data" "$dir"; fi
  _pg_as_owner "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; return 1; }
  port="$(_pg_free_port)"
  _pg_as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c fsync=off" start >/dev/null \
    || { cat "$dir/server.log" >&2; return 1; }
  _pg_as_owner "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U postgres prefect \
    || { anomflow_pg_stop "$dir"; return 1; }
  echo "postgresql+asyncpg://postgres@127.0.0.1:$port/prefect"
  echo "$dir"
}

# Stop the cluster in DIR (if running) and remove DIR.
anomflow_pg_stop() {
  local dir="$1"
  [ -n "$dir" ] && [ -d "$dir/data" ] || return 0
  _pg_as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then   # sourced (by .ci/run)
  if ! [ -x "$PG_BIN/initdb" ]; then
    apt-get install -y -q postgresql-15 >/dev/null \
      || (apt-get update -q >/dev/null && apt-get install -y -q postgresql-15 >/dev/null)
  fi
  _anomflow_pg_out="$(anomflow_pg_start)"
  export ANOMFLOW_TEST_POSTGRES_URL="${_anomflow_pg_out%%$'\n'*}"
  ANOMFLOW_PG_DIR="${_anomflow_pg_out##*$'\n'}"
  trap 'anomflow_pg_stop "$ANOMFLOW_PG_DIR"' EXIT
  echo "PostgreSQL 15 for the Prefect-server tests: $ANOMFLOW_TEST_POSTGRES_URL" >&2
else
  set -euo pipefail
  case "${1:-}" in
    start) anomflow_pg_start ;;
    stop) anomflow_pg_stop "${2:?usage: postgres.sh stop DIR}" ;;
    *) echo "usage: bash .ci/postgres.sh start | stop DIR" >&2; exit 2 ;;
  esac
fi
