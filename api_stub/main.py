"""A thin placeholder FastAPI app: health and the gate's readiness.  The HTTP API proper, Stripe
webhooks and the ``/billing`` page come with their own issue."""

from __future__ import annotations

from fastapi import FastAPI

from worker.settings import get_settings

app = FastAPI(title="tollgate", version="0.1.0")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process is up (no dependencies are checked)."""
    return {"status": "ok"}


@app.get("/readyz")
def readyz() -> dict[str, str]:
    """Readiness: Redis and PostgreSQL answer."""
    import redis
    from sqlalchemy import text

    from worker.db import get_engine

    redis.Redis.from_url(get_settings().redis_url).ping()
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return {"status": "ready"}
