"""Wallet endpoints: a wallet's balances, reservations (reserve, release; a turn with ``reservation_id``
settles one at ``POST /v1/turns``), the ledger, credits, and mode changes.  Handlers call the gate
or one ledger service and return.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from sqlalchemy import select
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from api_stub.deps import (
    ERROR_RESPONSES,
    Caller,
    Problem,
    field_problem,
    forbid_unless,
    get_async_gate,
    get_gate,
    reservation_wallet,
    unknown_wallet,
    wallet_in_scope,
)
from models.enums import ApiRole, BillingMode
from models.validation import SAFE_ID
from models.wallet import (
    CreditCreate,
    CreditPublic,
    Enterprise,
    ModePublic,
    ModeUpdate,
    ReleasePublic,
    ReservationCreate,
    ReservationPublic,
    Wallet,
    WalletPublic,
    WalletTransaction,
    WalletTransactionPublic,
    WalletTransactionsPublic,
)
from worker.access.apikeys import Principal
from worker.billing.modes import ModeError, set_wallet_mode
from worker.billing.payers import reservations_required
from worker.chats.lifecycle import wallet_state_async
from worker.chats.wiring import after_credit, resume_wallet_chats
from worker.db import session_scope
from worker.gate.gate import GateConfigError, UnknownWallet
from worker.ledger.accounts import GatePending, LedgerError, credit_wallet
from worker.ledger.audit import audit
from worker.pricing.prices import PricingError

router = APIRouter(tags=["wallets"])
WalletId = Annotated[str, Path(min_length=1, max_length=200), SAFE_ID]


def _owner_wallet(who, wallet_id: str, action: str) -> None:
    """Owner keys only, and only on a wallet of their app or the platform wallet the key was issued
    for (404 otherwise)."""
    forbid_unless(who, ApiRole.owner, action=action)
    with session_scope() as session:
        wallet_in_scope(session, who, wallet_id, creator=True)


def _wallet_row(who: Principal, wallet_id: str) -> tuple[Wallet, bool]:
    """The wallet row in the caller's scope (:func:`deps.wallet_in_scope`, creator too) and whether
    its turns need reservations (PostgreSQL: run in the thread pool)."""
    with session_scope() as session:
        row = wallet_in_scope(session, who, wallet_id, creator=True)
        enterprise = session.get(Enterprise, row.enterprise_id) if row.enterprise_id else None
        return row, reservations_required(row, enterprise)


@router.get("/v1/wallets/{wallet_id}", response_model=WalletPublic, responses={401: {}, 403: {}, 404: {}, 422: {}})
async def wallet(wallet_id: WalletId, who: Caller) -> WalletPublic:
    """A wallet's balances: its app's owner key, its own end-user key, or (a level-1 wallet, which
    has no app) the owner key issued for it; admins see aggregates only (404 here).  The row is read
    in the thread pool (PostgreSQL), the gate's state awaited on the asyncio gate."""
    row, required = await run_in_threadpool(_wallet_row, who, wallet_id)
    try:
        state = await wallet_state_async(get_async_gate(), wallet_id)
    except UnknownWallet:
        state = None
    return WalletPublic(
        wallet_id=row.id,
        enterprise_id=row.enterprise_id,
        level=row.level,
        mode=row.mode,
        limited=row.limited,
        gate_balance_nanos=state.balance_nanos if state else None,
        held_nanos=state.held_nanos if state else None,
        can_continue=state.can_continue if state else None,
        ledger_balance_nanos=row.credits_nanos - row.debits_nanos,
        credits_nanos=row.credits_nanos,
        debits_nanos=row.debits_nanos,
        debt_nanos=row.debt_nanos,
        reservations_required=required,
    )


@router.post(
    "/v1/wallets/{wallet_id}/reservations", response_model=ReservationPublic, responses=ERROR_RESPONSES | {409: {}}
)
async def reserve(wallet_id: WalletId, body: ReservationCreate, who: Caller) -> ReservationPublic:
    """Reserve ``amount_nanos`` (≥ 1) of the wallet before an LLM call, or the worst case of a call
    given ``model`` (+ ``service_tier``: priced at that tier), ``prompt_tokens`` and ``max_tokens``
    (owner key of the wallet's app).

    Granted only while balance − reserved − amount ≥ 0 (production, limited wallets); settle it with
    ``POST /v1/turns`` carrying ``reservation_id``, give it back with ``DELETE``, or let it expire
    after ``ttl_s``.  409 when the wallet's mode takes no reservations.  The scope check runs in the
    thread pool (PostgreSQL); the reservation is made on the asyncio gate.
    """
    await run_in_threadpool(_owner_wallet, who, wallet_id, "reserve funds")
    if body.reservation_id and await reservation_wallet(wallet_id, body.reservation_id) not in (None, wallet_id):
        raise field_problem(409, "Reservation in use", "reservation_id", "already held for another wallet")
    if (body.amount_nanos is None) == (body.model is None):
        raise field_problem(
            422,
            "Invalid request",
            "amount_nanos",
            "give either amount_nanos or model with prompt_tokens and max_tokens",
        )
    if body.model is not None and body.max_tokens is None:
        raise field_problem(422, "Invalid request", "max_tokens", "required with model")
    if body.service_tier is not None and body.model is None:
        raise field_problem(
            422, "Invalid request", "service_tier", "only with model (an amount_nanos reservation is not priced)"
        )
    try:
        reservation = await get_async_gate().reserve(
            wallet_id,
            body.amount_nanos,
            ttl_s=body.ttl_s,
            reservation_id=body.reservation_id,
            model=body.model,
            provider=body.provider,
            prompt_tokens=body.prompt_tokens,
            max_tokens=body.max_tokens,
            service_tier=body.service_tier,
        )
    except PricingError as exc:
        raise field_problem(422, "Unknown price", exc.field or "model", str(exc)) from None
    except UnknownWallet:
        raise unknown_wallet(wallet_id) from None
    except GateConfigError as exc:
        raise Problem(409, "Mode takes no reservations", str(exc)) from None
    return reservation


@router.delete(
    "/v1/wallets/{wallet_id}/reservations/{reservation_id}", response_model=ReleasePublic, responses=ERROR_RESPONSES
)
async def release(
    wallet_id: WalletId, reservation_id: Annotated[str, Path(min_length=1, max_length=200), SAFE_ID], who: Caller
) -> ReleasePublic:
    """Give back a reservation not settled by a turn (owner key).  404 naming ``reservation_id`` when the
    wallet holds no such reservation (already settled, released, expired, or another wallet's)."""
    await run_in_threadpool(_owner_wallet, who, wallet_id, "release funds")
    if await reservation_wallet(wallet_id, reservation_id) != wallet_id:
        raise field_problem(
            404,
            "Unknown reservation",
            "reservation_id",
            f"wallet {wallet_id!r} holds no reservation {reservation_id!r}",
        )
    released = await get_async_gate().release(wallet_id, reservation_id)
    return ReleasePublic(reservation_id=reservation_id, wallet_id=wallet_id, released_nanos=released)


@router.get("/v1/wallets/{wallet_id}/ledger", response_model=WalletTransactionsPublic, responses=ERROR_RESPONSES)
def ledger(
    wallet_id: WalletId,
    who: Caller,
    limit: Annotated[int, Query(ge=1, le=500, description="entries per page")] = 50,
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="next_cursor of the previous page")] = None,
) -> WalletTransactionsPublic:
    """The wallet's ledger entries (``wallet_transaction``), newest first, one page: its app's owner
    (or, for a platform wallet, the owner key issued for it) or its own end user (admins see no end
    user's detail)."""
    with session_scope() as session:
        wallet_in_scope(session, who, wallet_id, creator=True)
        stmt = select(WalletTransaction).where(col(WalletTransaction.wallet_id) == wallet_id)
        if cursor is not None:
            stmt = stmt.where(col(WalletTransaction.id) < cursor)
        rows = session.execute(stmt.order_by(col(WalletTransaction.id).desc()).limit(limit + 1)).scalars().all()
    data = [WalletTransactionPublic.model_validate(r) for r in rows[:limit]]
    return WalletTransactionsPublic(
        wallet_id=wallet_id, data=data, count=len(data), next_cursor=data[-1].id if len(rows) > limit else None
    )


@router.post("/v1/wallets/{wallet_id}/credits", response_model=CreditPublic, responses=ERROR_RESPONSES | {409: {}})
def credit(wallet_id: WalletId, body: CreditCreate, who: Caller) -> CreditPublic:
    """Credit the wallet (owner key of its app, or admin) once per ``idempotency_key``: the ledger
    entry commits, then the gate's balance; audit-logged (``credit``).  409 naming
    ``idempotency_key`` when the key was used for another credit.  The reply's ``balance_nanos`` is
    the wallet's balance after the credit for its app's owner, and null for an admin (who sees
    aggregates, never one end user's balance)."""
    forbid_unless(who, ApiRole.owner, ApiRole.admin, action="credit wallets")
    try:
        with session_scope() as session:  # one transaction: ledger entry and audit row; the gate after it
            row = wallet_in_scope(session, who, wallet_id, admin=True)
            enterprise_id = row.enterprise_id
            previous = session.execute(
                select(
                    col(WalletTransaction.wallet_id), col(WalletTransaction.amount_nanos), col(WalletTransaction.kind)
                ).where(col(WalletTransaction.idempotency_key) == body.idempotency_key)
            ).first()
            if previous is not None and tuple(previous) != (wallet_id, body.amount_nanos, "credit"):
                # never say whose: the key may be another app's
                raise field_problem(409, "Idempotency key in use", "idempotency_key", "already used for another entry")
            pending = credit_wallet(
                session,
                get_gate(),
                wallet_id=wallet_id,
                amount_nanos=body.amount_nanos,
                idempotency_key=body.idempotency_key,
                description=body.description,
                on_credited=after_credit,
            )
            audit(
                session,
                actor=who.actor,
                action="credit",
                enterprise_id=enterprise_id,
                wallet_id=wallet_id,
                amount_nanos=body.amount_nanos,
                idempotency_key=body.idempotency_key,
                replayed=previous is not None,
            )
    except UnknownWallet:
        raise Problem(
            409, "Wallet not in the gate", f"wallet {wallet_id!r} is not loaded in the gate; nothing was credited"
        ) from None
    except LedgerError as exc:
        field = "amount_nanos" if exc.field == "amount_nanos" else "idempotency_key"
        status = 409 if exc.http_status == 409 else 422
        raise field_problem(
            status, "Credit refused", field, "already used for another entry" if status == 409 else str(exc)
        ) from None
    except GatePending as exc:
        raise Problem(503, "Credit pending", str(exc), headers={"Retry-After": "1"}) from None
    balance = pending.balance_nanos
    return CreditPublic(
        wallet_id=wallet_id,
        amount_nanos=body.amount_nanos,
        idempotency_key=body.idempotency_key,
        balance_nanos=None if who.role is ApiRole.admin else balance,
        replayed=previous is not None,
    )


def mode_problem(exc: ModeError) -> Problem:
    """A mode change refused: 422 naming ``mode``, or 404 naming the wallet or app that is unknown."""
    field, message = exc.field or "mode", exc.reason
    if field == "mode":
        return field_problem(422, "Invalid request", "mode", message)
    return field_problem(404, "Unknown " + field.removesuffix("_id"), field, message)


@router.put("/v1/wallets/{wallet_id}/mode", response_model=ModePublic, responses=ERROR_RESPONSES)
def wallet_mode(wallet_id: WalletId, body: ModeUpdate, who: Caller) -> ModePublic:
    """Override a wallet's billing mode, or (``mode: null``) make it follow its app's default
    again: owner key of its app, or admin.  Audit-logged (``mode_change``); chats the new mode
    lets go on are resumed."""
    forbid_unless(who, ApiRole.owner, ApiRole.admin, action="change modes")
    try:
        with session_scope() as session:
            wallet_in_scope(session, who, wallet_id, admin=True)
            mode = set_wallet_mode(
                session, get_gate(), wallet_id, body.mode, actor=who.actor, resume=resume_wallet_chats
            )
    except ModeError as exc:
        raise mode_problem(exc) from None
    return ModePublic(mode=BillingMode(mode), wallet_id=wallet_id)
