#!/usr/bin/env bash
# Make sure PostgreSQL and Redis/Valkey answer at tollgate's URLs (and the test suite's): where nothing
# answers on loopback, start the embedded servers of the `embedded` extra, detached, data in
# .tollgate/ (`tollgate services up --test`; stop them with `tollgate services down`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/tollgate" services up --test "$@"
