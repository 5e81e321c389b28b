"""Operations endpoints: ``/metrics`` (Prometheus, admin key: gate latency, decisions by outcome,
outbox backlog per shard, the last reconciliation run, and the worker-side figures of
:mod:`api_stub.metrics`) and ``/healthz`` (liveness).  Neither is in the OpenAPI document.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from sqlalchemy import select
from sqlmodel import col

from api_stub import metrics as _worker_metrics  # noqa: F401  (registers the worker-side collector)
from api_stub.deps import Caller, Problem, get_gate
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole
from models.reconcile import ReconciliationRun
from worker.db import session_scope
from worker.gate.keys import outbox_key
from worker.settings import get_settings

OUTBOX_LENGTH = Gauge("tollgate_outbox_length", "Accepted turns not yet persisted, per outbox shard", ["shard"])
LAST_DRIFT_NANOS = Gauge(
    "tollgate_reconciliation_last_drift_nanos",
    "Absolute gate-vs-ledger drift found by the last reconciliation run, nano-USD",
)
LAST_DRIFTED_WALLETS = Gauge(
    "tollgate_reconciliation_last_drifted_wallets", "Wallets with drift in the last reconciliation run"
)

router = APIRouter(route_class=StrictJsonRoute)


@router.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    """Liveness: the process is up (no dependencies are checked)."""
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
def metrics(who: Caller) -> Response:
    """Prometheus metrics (admin key): gate latency, decisions by outcome, outbox backlog per shard."""
    if who.role is not ApiRole.admin:
        raise Problem(403, "Forbidden", "metrics need an admin key")
    _refresh_outbox_gauge()
    _refresh_reconciliation_gauges()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _refresh_reconciliation_gauges() -> None:
    """The last finished reconciliation run (it runs in a worker; its figures live in PostgreSQL)."""
    with session_scope() as session:
        run = session.execute(
            select(ReconciliationRun)
            .where(col(ReconciliationRun.finished_at).is_not(None))
            .order_by(col(ReconciliationRun.id).desc())
            .limit(1)
        ).scalar_one_or_none()
    LAST_DRIFT_NANOS.set(run.drift_nanos_abs if run else 0)
    LAST_DRIFTED_WALLETS.set(run.wallets_drifted if run else 0)


def _refresh_outbox_gauge() -> None:
    redis = get_gate().redis
    pipe = redis.pipeline(transaction=False)
    shards = range(get_settings().outbox_shards)
    for shard in shards:
        pipe.xlen(outbox_key(shard))
    for shard, length in zip(shards, pipe.execute()):
        OUTBOX_LENGTH.labels(str(shard)).set(length)
