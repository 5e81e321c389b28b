"""The benchmarks' own namespaces, so a benchmark can run while the tests do.

Redis logical DB 12 and the PostgreSQL database ``tollgate_bench`` (each benchmark flushes the one
and drops, recreates and migrates the other); override with ``TOLLGATE_BENCH_REDIS_URL`` /
``TOLLGATE_BENCH_DATABASE_URL``.  tollgate's settings are read once and cached, so a benchmark calls
:func:`use_bench_namespaces` before it imports anything of ``worker`` or ``api_stub``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_REDIS_URL = os.environ.get("TOLLGATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
BENCH_DB_URL = os.environ.get(
    "TOLLGATE_BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/tollgate_bench"
)


def use_bench_namespaces() -> None:
    """Point this process's tollgate settings (and the processes it starts) at the bench namespaces:
    ``TOLLGATE_REDIS_URL`` and ``TOLLGATE_BROKER_URL`` at :data:`BENCH_REDIS_URL`,
    ``TOLLGATE_DATABASE_URL`` at :data:`BENCH_DB_URL`; no price overrides file."""
    os.environ["TOLLGATE_REDIS_URL"] = BENCH_REDIS_URL
    os.environ["TOLLGATE_BROKER_URL"] = BENCH_REDIS_URL
    os.environ["TOLLGATE_DATABASE_URL"] = BENCH_DB_URL
    os.environ.pop("TOLLGATE_PRICE_OVERRIDES_PATH", None)
