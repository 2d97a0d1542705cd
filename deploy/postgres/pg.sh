#!/usr/bin/env bash
# A throwaway PostgreSQL for billing's tests: installs Debian's `postgresql` if it is missing,
# runs one cluster on a loopback port with its data under .local/postgres (git-ignored; as root,
# /tmp/stepline-postgres-<checkout hash>, which the postgres user can reach), as a
# non-root user (postgres refuses to run as root).
#
#   deploy/postgres/pg.sh start    install if needed, init and start; prints the DSN last
#   deploy/postgres/pg.sh stop     stop the cluster this script started
#   deploy/postgres/pg.sh status   exit 0 when it is running
#   deploy/postgres/pg.sh dsn      print the DSN
#
# STEPLINE_POSTGRES_PORT (default 55432) and STEPLINE_POSTGRES_DIR (default: see above).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PORT="${STEPLINE_POSTGRES_PORT:-55432}"
if [[ -n "${STEPLINE_POSTGRES_DIR:-}" ]]; then
  DIR="$STEPLINE_POSTGRES_DIR"
elif [[ "$(id -u)" == 0 ]]; then
  # The server runs as the postgres user, who may not be able to traverse the checkout's
  # parents (a clone under `mktemp -d` is mode 700): keep its data under /tmp, one per checkout.
  DIR="/tmp/stepline-postgres-$(printf %s "$ROOT" | cksum | cut -d' ' -f1)"
else
  DIR="$ROOT/.local/postgres"
fi
DATA="$DIR/data"
LOG="$DIR/server.log"
DSN="postgresql://stepline@127.0.0.1:$PORT/postgres"

say() { echo "postgres: $*" >&2; }

bindir() {
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -n "$found" && -x "$found/initdb" ]]; then echo "$found"; return 0; fi
  return 1
}

install() {
  if bindir >/dev/null; then say "already installed ($(bindir))"; return 0; fi
  if [[ "$(id -u)" != 0 ]]; then
    say "PostgreSQL is not installed and this is not root: run 'apt-get install -y postgresql'"
    exit 3
  fi
  if ! command -v apt-get >/dev/null; then
    say "PostgreSQL is not installed and apt-get is not available on this machine"
    exit 3
  fi
  local started=$SECONDS
  say "installing Debian's postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null >&2 || { say "apt-get update failed"; exit 3; }
  apt-get install -y -q --no-install-recommends postgresql </dev/null >&2 \
    || { say "apt-get install postgresql failed"; exit 3; }
  bindir >/dev/null || { say "installed, but no initdb under /usr/lib/postgresql"; exit 3; }
  say "install took $((SECONDS - started))s"
}

# Run a command as the unprivileged owner of the cluster.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

running() { [[ -f "$DATA/postmaster.pid" ]] && as_owner "$(bindir)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  install
  local bin; bin="$(bindir)"
  mkdir -p "$DIR"
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" --shell /usr/sbin/nologin postgres
    chown postgres "$DIR"
  fi
  if running; then say "already running on 127.0.0.1:$PORT"; echo "$DSN"; return 0; fi
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    as_owner "$bin/initdb" -D "$DATA" -U stepline --auth=trust --encoding=UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
      || { cat "$DIR/initdb.log" >&2; exit 4; }
  fi
  # Throwaway test data: durability of the server itself is not what the tests check.
  as_owner "$bin/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
    -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off" >&2 \
    || { tail -n 20 "$LOG" >&2; exit 4; }
  say "running on 127.0.0.1:$PORT (data $DATA)"
  echo "$DSN"
}

stop() {
  local bin
  bin="$(bindir)" || { say "not installed"; return 0; }
  if running; then as_owner "$bin/pg_ctl" -D "$DATA" -m fast -w stop >&2; say "stopped"; else say "not running"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) running && say "running on 127.0.0.1:$PORT" ;;
  dsn) echo "$DSN" ;;
  *) echo "usage: $0 start|stop|status|dsn" >&2; exit 2 ;;
esac
