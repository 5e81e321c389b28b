"""Turn endpoints: ``POST /v1/turns`` and ``POST /v1/turns/batch`` record turns through the process's
gate (the same gate as the Python client) and return the decisions; a denied turn's chat is paused
by a Celery task.  Persistence stays the worker's: a turn handler calls the gate and returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api_stub.api_docs import described
from api_stub.deps import (
    Admission,
    Caller,
    Problem,
    admit,
    authenticated,
    charge_known,
    get_async_gate,
    get_gate,
    may_charge,
    principal,
    reservation_wallet,
)
from api_stub.fast_path import FastPathRoute, fast_path, header, json_content
from models.enums import ApiRole
from models.turn import Decision, DecisionsPublic, TurnBatch, TurnIn
from worker.access.apikeys import Principal
from worker.celery_app import PAUSE_CHAT_TASK
from worker.celery_app import app as celery
from worker.gate.gate import UnknownWallet, WrongEnterprise
from worker.gate.keys import pausing_key
from worker.ledger.turns import transition_position
from worker.metrics import gate_seconds
from worker.pricing.prices import PricingError, TurnLimitExceeded
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: no tags: as before the split, so the OpenAPI document is unchanged; FastPathRoute: the turn
#: endpoints answer a well-formed request without FastAPI's dependency solving (:mod:`api_stub.fast_path`)
router = APIRouter(route_class=FastPathRoute)


async def _may_record(who: Principal, turns: list[TurnIn]) -> None:
    """Raises the Problem of the first turn, in order, that the caller may not record: 403 for
    another enterprise (or a key that is not an owner's), 404 for a platform wallet the key may not
    charge (:func:`deps.may_charge`: as an unknown wallet), 409 for a reservation held for another
    wallet.  The lookups are made first (the reservations' wallets awaited at once on the asyncio gate; the wallets'
    payers from memory, or in the thread pool when one needs PostgreSQL), then checked in order."""
    n = next(
        (i for i, t in enumerate(turns) if who.role is not ApiRole.owner or t.enterprise_id != who.enterprise_id),
        len(turns),
    )
    ours = turns[:n]  # the turns before the first of another enterprise: the only ones checked further
    settles = [(t.wallet_id, rid) for t in ours if (rid := t.reservation_id)]
    owners = await asyncio.gather(*(reservation_wallet(w, rid) for w, rid in settles)) if settles else []
    if all(charge_known(who, t.wallet_id) for t in ours):
        charges = [may_charge(who, t.wallet_id) for t in ours]
    else:
        charges = await run_in_threadpool(lambda: [may_charge(who, t.wallet_id) for t in ours])
    held = iter(owners)
    for i, turn in enumerate(turns):

        def field(name: str) -> str:
            return name if len(turns) == 1 else f"turns.{i}.{name}"

        if i == n:
            raise Problem(
                403,
                "Forbidden",
                f"this key may not record turns for enterprise {turn.enterprise_id!r}",
                [{"field": field("enterprise_id"), "message": "outside the key's enterprise"}],
            )
        if not charges[i]:  # another creator's platform wallet: as unknown
            detail = f"unknown wallet {turn.wallet_id!r} for this enterprise"
            raise Problem(404, "Unknown wallet", detail, [{"field": field("wallet_id"), "message": detail}])
        if turn.reservation_id and next(held) not in (None, turn.wallet_id):
            raise Problem(
                409,
                "Reservation of another wallet",
                f"reservation {turn.reservation_id!r} is not held for wallet {turn.wallet_id!r}",
                [{"field": field("reservation_id"), "message": "held for another wallet"}],
            )


async def _record(turns: list[TurnIn], who: Principal | None = None, *, pause: bool = True) -> list[Decision]:
    """Check the caller may record ``turns`` (when ``who`` is given), then price and record them
    through the event loop's asyncio gate (:func:`deps.get_async_gate`); with ``pause``, queue the
    pause of each denied turn's chat in the thread pool (:func:`_send_pause`, a Celery send).
    Pricing is Python work on the loop (about 10 µs a turn); what may block runs in the thread pool:
    a first sight of a wallet (PostgreSQL) and the pauses."""
    if who is not None:
        await _may_record(who, turns)
    gate = get_async_gate()
    return await _decided(turns, gate.record_turns, pause=pause)


async def _decided(
    turns: list[TurnIn], call: Callable[[list[TurnIn]], Awaitable[list[Decision]]], *, pause: bool
) -> list[Decision]:
    """The decisions of the gate's ``call(turns)``, its errors answered as Problems (422 for a turn
    above a limit or without a price, 404 for an unknown wallet), the gate's latency observed, and
    with ``pause`` each denied turn's chat paused (:func:`_send_pauses`).  Any other exception of
    ``call`` goes through unobserved."""
    started = time.perf_counter()
    gate = get_async_gate()
    try:
        decisions = await call(turns)
    except TurnLimitExceeded as exc:  # nothing charged: tokens, quantity or cost above a per-turn limit
        field = exc.field if len(turns) == 1 or exc.index is None else f"turns.{exc.index}.{exc.field}"
        raise Problem(
            422, "Turn above a limit", f"{field}: {exc.message}", [{"field": field, "message": exc.message}]
        ) from None
    except PricingError as exc:
        field = exc.field or "model"
        raise Problem(422, "Unknown price", str(exc), [{"field": field, "message": str(exc)}]) from None
    except (UnknownWallet, WrongEnterprise) as exc:  # one answer for both: other apps' ids are not probed
        detail = f"unknown wallet {exc.wallet_id!r} for this enterprise"
        raise Problem(404, "Unknown wallet", detail, [{"field": "wallet_id", "message": detail}]) from None
    # tollgate_gate_seconds: one histogram for every web process (kept in Redis, worker.metrics)
    gate_seconds.observe(gate.metrics_client, time.perf_counter() - started)
    denied = [turn for turn, d in zip(turns, decisions) if _denied(d)]
    if pause and denied:
        await run_in_threadpool(_send_pauses, denied)
    return decisions


def _denied(d: Decision) -> bool:
    """A turn the gate denied now: it never reaches the outbox, so its chat's pause is recorded by a task."""
    return not d.accepted and not d.duplicate


def _send_pauses(turns: list[TurnIn]) -> None:
    """:func:`_send_pause` for each denied turn, in order (run in the thread pool: Redis and Celery
    are blocking clients)."""
    for turn in turns:
        _send_pause(turn)


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
        celery.send_task(
            PAUSE_CHAT_TASK,
            kwargs={
                "enterprise_id": turn.enterprise_id,
                "chat_id": turn.chat_id,
                "wallet_id": turn.wallet_id,
                "position": position,
            },
            ignore_result=True,
        )
    except Exception:  # the caller has the 'pause' answer; the pause record is bookkeeping
        log.warning("could not queue the pause of chat %s", turn.chat_id, exc_info=True)


def _json(model: BaseModel) -> Response:
    """Our own (already valid) answer as JSON, without FastAPI validating it again."""
    return Response(model.model_dump_json(), media_type="application/json")


async def _fast_record_turn(request: Request) -> Response | None:
    """:func:`record_turn` without FastAPI's dependency solving: a JSON body that ``TurnIn``
    validates (parsed and validated in one pass by pydantic, ``model_validate_json``), then the same
    caller (:func:`deps.principal`) and recording as the endpoint.  None (FastAPI's handler answers,
    with its own errors) for any other content type or a body ``TurnIn`` refuses."""
    if not json_content(request):
        return None
    try:
        turn = TurnIn.model_validate_json(await request.body())
    except ValidationError:
        return None
    who = await authenticated(header(request, b"authorization"))
    return _json(await _admit_and_record(turn, who))


class _Refused(Exception):
    """The admission inside the turn's script refused the request: its replies ``[revoked, answer, …]``."""

    def __init__(self, replies: list) -> None:
        super().__init__("refused by the admission")
        self.replies = replies


async def _admit_and_record(turn: TurnIn, who: Principal) -> Decision:
    """Admit the request of ``who`` (:func:`deps.admit`: revoked key 401, rate limit 429) and record
    ``turn`` as :func:`record_turn` does, with the answers in the same order (401, 429, then 403,
    404, 409, 422 and the gate's).  In one Redis round trip when it can: the admission inside the
    turn's script (``admit_record_turn.lua``: a refused request changes nothing of its turn), when the
    gate's Redis is the rate limits' and not a cluster, and the checks made before the gate (the
    caller's scope, the wallet's payer, the price) pass without Redis.  Otherwise, and whenever one
    of those checks refuses, the request is admitted first, then recorded (:func:`_record`)."""
    gate = get_async_gate()
    quote = None
    if (
        not turn.reservation_id  # its holder is read from Redis (409) before the gate
        and who.role is ApiRole.owner
        and turn.enterprise_id == who.enterprise_id
        and gate.settings.redis_url == get_settings().redis_url
        and gate.admits_in_one_call()
        and charge_known(who, turn.wallet_id)
        and may_charge(who, turn.wallet_id)
    ):
        try:
            quote = gate.quote(turn)
        except (PricingError, TurnLimitExceeded):  # answered after the admission, as before
            quote = None
    if quote is None:
        await admit(who.key_prefix)
        return (await _record([turn], who))[0]
    admission = Admission(who.key_prefix)

    async def admitted_and_recorded(turns: list[TurnIn]) -> list[Decision]:
        outcome = await gate.admit_and_record_turn(turn, quote, admission.script_keys(), admission.script_args())
        if not isinstance(outcome, Decision):
            raise _Refused(outcome)
        return [outcome]

    try:
        return (await _decided([turn], admitted_and_recorded, pause=True))[0]
    except _Refused as refused:  # nothing of the turn ran: answered as admit() answers
        revoked, *answers = refused.replies
        await admission.check(revoked, answers)
        raise RuntimeError("the admission script refused a request its replies admit") from None  # the same rules


async def _fast_record_turns(request: Request) -> Response | None:
    """:func:`record_turns` without FastAPI's dependency solving, as :func:`_fast_record_turn`."""
    if not json_content(request):
        return None
    try:
        batch = TurnBatch.model_validate_json(await request.body())
    except ValidationError:
        return None
    decisions = await _record(batch.turns, await principal(header(request, b"authorization")))
    return _json(DecisionsPublic.model_construct(data=decisions, count=len(decisions)))


@router.post(
    "/v1/turns",
    response_model=Decision,
    tags=["turns"],
    summary="Record one turn",
    description=(
        "Record one agent turn (an LLM call's tokens, or units of a non-LLM meter) and get the billing "
        "decision for it. Call it after each LLM response, before the agent goes on.\n\n"
        "**Key:** an **owner** key of the turn's app (`enterprise_id`).\n\n"
        "**Answer:** `accepted: true` and `action: continue` when the turn was charged (or recorded for "
        "free in development, track_only or trial); `accepted: false` and `action: pause` when the "
        "wallet cannot pay it: stop the chat until the wallet is credited (the chat is marked paused "
        "and a `chat.resumable` event follows the credit). A denied turn is a 200, not an error. "
        "Money in the answer is integer nano-USD (1 USD = 1,000,000,000).\n\n"
        "**Idempotent:** the same `turn_id` for the same wallet of the app is recorded once; sending "
        "it again answers the first decision with `duplicate: true` and charges nothing, so a "
        "timed-out call can be retried as is. A turn with `reservation_id` settles that reservation "
        "(see `POST /v1/wallets/{wallet_id}/reservations`); a reservation held for another wallet is "
        "refused with 409."
    ),
    response_description="The decision: charged (continue) or denied (pause), with the wallet's balance after it.",
    responses=described(
        {401: {}, 403: {}, 404: {}, 409: {}, 422: {}, 429: {}},
        {
            403: "The key is not an owner key, or the turn's `enterprise_id` is another app's. Nothing was recorded.",
            409: "`reservation_id` is held for another wallet (`errors[].field` names it). Nothing was recorded.",
            404: "`wallet_id` is not a wallet of this app (or a platform wallet this key may charge). Nothing was recorded.",
            422: (
                "Invalid turn, a `model` (or `service_tier`) without a known price, or tokens, quantity or cost "
                "above a per-turn limit: `errors[].field` names the field. Nothing was recorded or charged."
            ),
        },
    ),
)
@fast_path(_fast_record_turn)
async def record_turn(turn: TurnIn, who: Caller) -> Response:
    """Record one turn (owner key of the turn's enterprise).  Idempotent by ``turn_id``.

    The gate's round trip is awaited on the event loop (asyncio Redis, :func:`deps.get_async_gate`),
    so a slow Redis never stalls the loop's other requests; a first sight of the wallet (a database
    read) and the pause of a denied turn's chat (Celery) run in the thread pool
    (``benchmarks/RESULTS.md``, HTTP)."""
    return _json((await _record([turn], who))[0])


@router.post(
    "/v1/turns/batch",
    response_model=DecisionsPublic,
    tags=["turns"],
    summary="Record up to 1,000 turns",
    description=(
        "Record up to 1,000 turns in one request, decided in order, and get one decision per turn in the "
        "same order: the batch form of `POST /v1/turns`, for orchestrators that buffer turns.\n\n"
        "**Key:** an **owner** key of every turn's app.\n\n"
        "**All or nothing on bad input:** a turn that is invalid, of another app, of an unknown wallet "
        "or over a per-turn limit refuses the whole batch (the field is named `turns.<index>.<field>`) "
        "and nothing is recorded. Otherwise each turn is decided on its own: later turns of a wallet "
        "see the balance left by earlier ones, and a denied turn answers `accepted: false`, "
        "`action: pause` in its place.\n\n"
        "**Idempotent** per `turn_id`, as `POST /v1/turns`: resending a batch charges nothing twice."
    ),
    response_description="One decision per turn, in the order of the turns.",
    responses=described(
        {401: {}, 403: {}, 404: {}, 409: {}, 422: {}, 429: {}},
        {
            403: "The key is not an owner key, or a turn's `enterprise_id` is another app's. Nothing was recorded.",
            409: (
                "A turn's `reservation_id` is held for another wallet (`turns.<index>.reservation_id`). "
                "Nothing was recorded."
            ),
            404: "A turn's `wallet_id` is not a wallet of this app (`turns.<index>.wallet_id`). Nothing was recorded.",
            422: (
                "A turn is invalid, has no known price, or is above a per-turn limit: `errors[].field` is "
                "`turns.<index>.<field>`. Nothing was recorded or charged."
            ),
        },
    ),
)
@fast_path(_fast_record_turns)
async def record_turns(batch: TurnBatch, who: Caller) -> Response:
    """Record up to 1,000 turns in order (owner key); a bad turn rejects the batch and changes nothing."""
    decisions = await _record(batch.turns, who)
    return _json(DecisionsPublic.model_construct(data=decisions, count=len(decisions)))
