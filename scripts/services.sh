#!/usr/bin/env bash
# Check that PostgreSQL and Redis answer on loopback; start the local ones if they are down.
# Used by `make demo`, `make test` and .ci/run.  Exits non-zero with a hint if a service can't be had.
set -euo pipefail

PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

wait_for() {  # name, command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then echo "services: $name is up"; return 0; fi
    sleep 0.5
  done
  echo "services: $name did not come up" >&2
  return 1
}

if ! pg_isready -h "$PGHOST" -p "$PGPORT" -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  else
    echo "services: PostgreSQL is not running on $PGHOST:$PGPORT and no local cluster was found." >&2
    echo "          Start one (e.g. 'docker compose up -d postgres') with trust auth for user postgres." >&2
    exit 1
  fi
  wait_for PostgreSQL pg_isready -h "$PGHOST" -p "$PGPORT" -q
else
  echo "services: PostgreSQL is up"
fi

if ! redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  else
    echo "services: Redis is not running on 127.0.0.1:$REDIS_PORT and redis-server is not installed." >&2
    echo "          Start one (e.g. 'docker compose up -d redis')." >&2
    exit 1
  fi
  wait_for Redis sh -c "redis-cli -h 127.0.0.1 -p $REDIS_PORT ping | grep -q PONG"
else
  echo "services: Redis is up"
fi
