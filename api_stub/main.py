"""The orchestrator HTTP API (FastAPI): record turns through the same gate as the Python client,
read wallets, and Prometheus metrics.  Every ``/v1`` endpoint and ``/metrics`` need an API key
(``Authorization: Bearer tg_…``); errors are RFC 9457 problem documents naming the field.

Run: ``uvicorn api_stub.main:app --no-access-log`` (the Procfile's ``web``).  Request bodies are
capped at ``settings.max_body_bytes`` (:mod:`api_stub.body_limit`, 413).  Persistence stays the worker's: a turn handler calls the gate
and returns.
"""

from __future__ import annotations

import logging

import time
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel
from sqlalchemy import select

from models.turn import Decision, DecisionsPublic, TurnBatch, TurnIn
from models.enums import ApiRole
from models.reconcile import ReconciliationRun
from models.wallet import Enterprise, WalletPublic
from worker.access.apikeys import Principal, authenticate
from worker.db import session_scope
from worker.billing.payers import reservations_required
from worker.ledger.turns import transition_position
from worker.pricing.prices import PricingError, TurnLimitExceeded
from worker.settings import get_settings
from worker.gate.gate import UnknownWallet, WrongEnterprise
from worker.gate.keys import outbox_key
from api_stub.deps import Caller, Problem, get_gate, install_error_handlers, principal  # noqa: F401  (re-exported)
from api_stub import metrics as _worker_metrics  # noqa: F401  (registers the worker-side collector)
from api_stub import routes_analytics, routes_chats, routes_wallets
from api_stub.billing import router as billing_router
from api_stub.body_limit import BodySizeLimit
from api_stub.stripe_webhook import router as stripe_router
from api_stub.deps import charge_known, hold_wallet, may_charge, wallet_in_scope
from worker.celery_app import PAUSE_CHAT_TASK
from worker.gate.keys import pausing_key
from worker.celery_app import app as celery
from worker.chats.lifecycle import wallet_state

GATE_SECONDS = Histogram(
    "tollgate_gate_seconds", "Time to price and record turns through the gate, per request (seconds)",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
DECISIONS = Counter("tollgate_decisions", "Gate decisions by outcome", ["outcome"])
_OUTCOMES = {outcome: DECISIONS.labels(outcome) for outcome in ("accepted", "denied", "duplicate")}
OUTBOX_LENGTH = Gauge("tollgate_outbox_length", "Accepted turns not yet persisted, per outbox shard", ["shard"])
LAST_DRIFT_NANOS = Gauge("tollgate_reconciliation_last_drift_nanos",
                         "Absolute gate-vs-ledger drift found by the last reconciliation run, nano-USD")
LAST_DRIFTED_WALLETS = Gauge("tollgate_reconciliation_last_drifted_wallets",
                             "Wallets with drift in the last reconciliation run")

log = logging.getLogger(__name__)

app = FastAPI(title="tollgate", version="0.1.0",
              description="Real-time token metering and billing: the orchestrator API.")


install_error_handlers(app)
app.add_middleware(BodySizeLimit)  # settings.max_body_bytes, counted as the body streams in (413)
app.include_router(routes_wallets.router)
app.include_router(routes_chats.router)
app.include_router(routes_analytics.router)


def _may_record(who: Caller, turns: list[TurnIn]) -> None:
    for i, turn in enumerate(turns):
        field = "enterprise_id" if len(turns) == 1 else f"turns.{i}.enterprise_id"
        if who.role is not ApiRole.owner or turn.enterprise_id != who.enterprise_id:
            raise Problem(403, "Forbidden", f"this key may not record turns for enterprise {turn.enterprise_id!r}",
                          [{"field": field, "message": "outside the key's enterprise"}])
        if not may_charge(who, turn.wallet_id):  # another creator's platform wallet: as unknown
            field = "wallet_id" if len(turns) == 1 else f"turns.{i}.wallet_id"
            detail = f"unknown wallet {turn.wallet_id!r} for this enterprise"
            raise Problem(404, "Unknown wallet", detail, [{"field": field, "message": detail}])
        if turn.reservation_id and hold_wallet(turn.wallet_id, turn.reservation_id) not in (None, turn.wallet_id):
            field = "reservation_id" if len(turns) == 1 else f"turns.{i}.reservation_id"
            raise Problem(409, "Reservation of another wallet",
                          f"reservation {turn.reservation_id!r} is not held for wallet {turn.wallet_id!r}",
                          [{"field": field, "message": "held for another wallet"}])


def _record(turns: list[TurnIn], who: Principal | None = None, *, pause: bool = True) -> list[Decision]:
    """Check the caller may record ``turns`` (when ``who`` is given), then price and record them
    through the gate; with ``pause``, queue the pause of each denied turn's chat (:func:`_send_pause`).
    Blocking (Redis; PostgreSQL on a cache miss; the broker): see the endpoints for where it runs."""
    if who is not None:
        _may_record(who, turns)
    started = time.perf_counter()
    try:
        decisions = get_gate().record_turns(turns)
    except TurnLimitExceeded as exc:  # nothing charged: tokens, quantity or cost above a per-turn limit
        field = exc.field if len(turns) == 1 or exc.index is None else f"turns.{exc.index}.{exc.field}"
        raise Problem(422, "Turn above a limit", f"{field}: {exc.message}",
                      [{"field": field, "message": exc.message}]) from None
    except PricingError as exc:
        field = exc.field or "model"
        raise Problem(422, "Unknown price", str(exc), [{"field": field, "message": str(exc)}]) from None
    except (UnknownWallet, WrongEnterprise) as exc:  # one answer for both: other apps' ids are not probed
        detail = f"unknown wallet {exc.wallet_id!r} for this enterprise"
        raise Problem(404, "Unknown wallet", detail, [{"field": "wallet_id", "message": detail}]) from None
    GATE_SECONDS.observe(time.perf_counter() - started)
    for turn, d in zip(turns, decisions):
        _OUTCOMES["duplicate" if d.duplicate else "accepted" if d.accepted else "denied"].inc()
        if pause and _denied(d):
            _send_pause(turn)
    return decisions


def _denied(d: Decision) -> bool:
    """A turn the gate denied now: it never reaches the outbox, so its chat's pause is recorded by a task."""
    return not d.accepted and not d.duplicate


def _send_pause(turn: TurnIn) -> None:
    """Queue ``tollgate.billing.pause_chat`` for a denied turn's chat (idempotent: one open pause),
    at most once a minute per chat, so an orchestrator that keeps calling cannot flood the queue.
    The task carries the denial's position in the gate's order (``transition_position`` now, just
    after the gate answered), so a task that runs after the chat was credited and resumed changes
    nothing."""
    try:
        if not get_gate().redis.set(pausing_key(turn.enterprise_id, turn.chat_id), 1, nx=True, ex=60):
            return
        position = transition_position(get_gate(), turn.wallet_id)
        celery.send_task(PAUSE_CHAT_TASK, kwargs={
            "enterprise_id": turn.enterprise_id, "chat_id": turn.chat_id, "wallet_id": turn.wallet_id,
            "position": position}, ignore_result=True)
    except Exception:  # the caller has the 'pause' answer; the pause record is bookkeeping
        log.warning("could not queue the pause of chat %s", turn.chat_id, exc_info=True)


@app.get("/healthz", include_in_schema=False)
def healthz() -> dict[str, str]:
    """Liveness: the process is up (no dependencies are checked)."""
    return {"status": "ok"}


def _json(model: BaseModel) -> Response:
    """Our own (already valid) answer as JSON, without FastAPI validating it again."""
    return Response(model.model_dump_json(), media_type="application/json")


@app.post("/v1/turns", response_model=Decision, responses={401: {}, 403: {}, 404: {}, 422: {}})
async def record_turn(turn: TurnIn, who: Caller) -> Response:
    """Record one turn (owner key of the turn's enterprise).  Idempotent by ``turn_id``.

    When the caller's right to charge the wallet is known in memory (:func:`deps.charge_known`), the
    gate is called on the event loop: one turn is one loopback Redis round trip (~0.2 ms), which
    costs less than the hop to the thread pool and back (``benchmarks/RESULTS.md``, HTTP).  What may
    block longer runs in the thread pool, so a slow PostgreSQL or a broker that hangs never stalls
    the loop's other requests: a first sight of the wallet (a database read), and queueing the pause
    of a denied turn's chat (Celery).  A batch (up to 1,000 turns priced in Python) runs there whole."""
    if who.role is ApiRole.owner and charge_known(who, turn.wallet_id):
        decision = _record([turn], who, pause=False)[0]
    else:
        decision = (await run_in_threadpool(_record, [turn], who, pause=False))[0]
    if _denied(decision):
        await run_in_threadpool(_send_pause, turn)
    return _json(decision)


@app.post("/v1/turns/batch", response_model=DecisionsPublic, responses={401: {}, 403: {}, 404: {}, 422: {}})
async def record_turns(batch: TurnBatch, who: Caller) -> Response:
    """Record up to 1,000 turns in order (owner key); a bad turn rejects the batch and changes nothing."""
    decisions = await run_in_threadpool(_record, batch.turns, who)
    return _json(DecisionsPublic.model_construct(data=decisions, count=len(decisions)))


@app.get("/v1/wallets/{wallet_id}", response_model=WalletPublic, responses={401: {}, 403: {}, 404: {}, 422: {}})
def wallet(wallet_id: routes_wallets.WalletId, who: Caller) -> WalletPublic:
    """A wallet's balances: its app's owner key, its own end-user key, or (a level-1 wallet, which
    has no app) the owner key issued for it; admins see aggregates only (404 here)."""
    with session_scope() as session:
        row = wallet_in_scope(session, who, wallet_id, creator=True)
        app_row = session.get(Enterprise, row.enterprise_id) if row.enterprise_id else None
        required = reservations_required(row, app_row)
    try:
        state = wallet_state(get_gate(), wallet_id)
    except UnknownWallet:
        state = None
    return WalletPublic(wallet_id=row.id, enterprise_id=row.enterprise_id, level=row.level, mode=row.mode,
                        limited=row.limited, gate_balance_nanos=state.balance_nanos if state else None,
                        held_nanos=state.held_nanos if state else None,
                        can_continue=state.can_continue if state else None,
                        ledger_balance_nanos=row.credits_nanos - row.debits_nanos,
                        credits_nanos=row.credits_nanos, debits_nanos=row.debits_nanos,
                        debt_nanos=row.debt_nanos, reservations_required=required)


@app.get("/metrics", include_in_schema=False)
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
            select(ReconciliationRun).where(ReconciliationRun.finished_at.is_not(None))
            .order_by(ReconciliationRun.id.desc()).limit(1)
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



app.include_router(stripe_router)  # Stripe webhook, Checkout
app.include_router(billing_router)  # /billing page and exports
