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

from api_stub.api_docs import described
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
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole, BillingMode
from models.validation import SAFE_ID, QueryInt
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
from worker.ledger.accounts import GatePending, LedgerError, check_client_key, credit_wallet
from worker.ledger.audit import audit
from worker.pricing.prices import PricingError

# tags per route: wallets (balances, ledger, credits), reservations, modes
router = APIRouter(route_class=StrictJsonRoute)
WalletId = Annotated[str, Path(min_length=1, max_length=200, description="The wallet's id."), SAFE_ID]


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


@router.get(
    "/v1/wallets/{wallet_id}",
    response_model=WalletPublic,
    tags=["wallets"],
    summary="Get a wallet's balance",
    description=(
        "A wallet's balance and state, in integer nano-USD: the live balance turns are charged "
        "against (`gate_balance_nanos`), what reservations hold (`held_nanos`), whether its next turn "
        "would be accepted (`can_continue`), and the ledger's totals (`ledger_balance_nanos`, "
        "`credits_nanos`, `debits_nanos`), which trail the live balance by the turns not yet written "
        "to the ledger (seconds).\n\n"
        "**Key:** an **owner** key of the wallet's app, the wallet's own **end_user** key, or for a "
        "platform wallet (an app creator's, of no app) the owner key issued for it. **Admin** keys see "
        "totals only, never one wallet: 404."
    ),
    response_description="The wallet's balances (nano-USD), mode and state.",
    responses=described(
        ERROR_RESPONSES,
        {404: "No such wallet in your key's scope (another app's wallet, or an admin key). Nothing was done."},
    ),
)
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
    "/v1/wallets/{wallet_id}/reservations",
    response_model=ReservationPublic,
    tags=["reservations"],
    summary="Reserve funds before an LLM call",
    description=(
        "Hold part of a wallet's balance for a call about to be made, so concurrent calls cannot "
        "together spend more than the wallet has. Give either `amount_nanos` (your estimate, "
        "nano-USD) or `model`, `prompt_tokens` and `max_tokens`, which tollgate prices at the worst "
        "case (every prompt token at the input price, all `max_tokens` at the output price; "
        "`service_tier` prices it at that tier).\n\n"
        "**Answer:** `granted: true` when balance − held − amount ≥ 0, else `granted: false` and "
        "nothing is held: don't make the call, or make a smaller one. A wallet that is not limited is "
        "always granted; one whose turns are free now (development or track_only mode, a trial "
        "allowance left) is granted with nothing held (`amount_nanos: 0`); a blocked wallet (e.g. "
        "over its budget) is refused. Then either record the call's turn with the same "
        "`reservation_id` (`POST /v1/turns`), which settles it at the real cost, release it "
        "(`DELETE …/reservations/{reservation_id}`), or let it expire after `ttl_s` seconds.\n\n"
        "**Key:** an **owner** key of the wallet's app (for a platform wallet: the owner key issued for it).\n\n"
        "**Idempotent:** the same `reservation_id` again answers the first reservation with "
        "`duplicate: true` and holds nothing more."
    ),
    response_description="Granted or refused, with what is held and the wallet's balance right after (nano-USD).",
    responses=described(
        ERROR_RESPONSES | {409: {}},
        {
            403: "Only owner keys reserve funds. Nothing was held.",
            404: "No such wallet in your key's scope. Nothing was held.",
            409: (
                "`reservation_id` is already held for another wallet, or the wallet's state cannot take "
                "reservations (ask the operator to reload it). Nothing was held."
            ),
            422: (
                "Invalid input: neither or both of `amount_nanos` and `model`, `model` without `max_tokens`, "
                "`service_tier` without `model`, or a model or tier with no known price; `errors[].field` "
                "names it. Nothing was held."
            ),
        },
    ),
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
    "/v1/wallets/{wallet_id}/reservations/{reservation_id}",
    response_model=ReleasePublic,
    tags=["reservations"],
    summary="Release a reservation",
    description=(
        "Give back the funds a reservation holds when its call was not made (or its turn will not be "
        "recorded with that `reservation_id`). The wallet's available balance rises by "
        "`released_nanos` at once.\n\n"
        "**Key:** an **owner** key of the wallet's app (for a platform wallet: the owner key issued for it)."
    ),
    response_description="The reservation given back and the nano-USD it held.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "Only owner keys release funds. Nothing changed.",
            404: (
                "No such wallet in your key's scope, or the wallet holds no reservation `reservation_id` "
                "(already settled by its turn, released, expired, or another wallet's). Nothing changed."
            ),
        },
    ),
)
async def release(
    wallet_id: WalletId,
    reservation_id: Annotated[
        str,
        Path(min_length=1, max_length=200, description="The `reservation_id` the reservation was made with."),
        SAFE_ID,
    ],
    who: Caller,
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


@router.get(
    "/v1/wallets/{wallet_id}/ledger",
    response_model=WalletTransactionsPublic,
    tags=["wallets"],
    summary="List a wallet's ledger entries",
    description=(
        "The wallet's ledger, newest first, one page at a time: its credits (top-ups, grants) and its "
        "debits (each for a group of recorded turns, `turns` of them), in nano-USD. Pass the answer's "
        "`next_cursor` as `cursor` for the next page; `next_cursor: null` is the last page. Turns "
        "appear here a few seconds after they were charged.\n\n"
        "**Key:** an **owner** key of the wallet's app (for a platform wallet: the owner key issued "
        "for it), or the wallet's own **end_user** key. **Admin** keys: 404 (no end user's detail)."
    ),
    response_description="One page of ledger entries, newest first.",
    responses=described(ERROR_RESPONSES, {404: "No such wallet in your key's scope. Nothing was done."}),
)
def ledger(
    wallet_id: WalletId,
    who: Caller,
    limit: Annotated[QueryInt, Query(ge=1, le=500, description="Entries per page (1..500).")] = 50,
    cursor: Annotated[
        QueryInt | None,
        Query(ge=1, le=2**63 - 1, description="The `next_cursor` of the previous page; omit for the first page."),
    ] = None,
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


@router.post(
    "/v1/wallets/{wallet_id}/credits",
    response_model=CreditPublic,
    tags=["wallets"],
    summary="Credit a wallet",
    description=(
        "Add `amount_nanos` (integer nano-USD, > 0) to a wallet, e.g. after a payment made outside "
        "tollgate. The credit is in the ledger and the live balance when the call answers; chats "
        "paused for lack of funds that the wallet can now pay for become resumable "
        "(`chat.resumable`).\n\n"
        "**Key:** an **owner** key of the wallet's app, or an **admin** key. Every credit is "
        "audit-logged with the key that made it. An admin's answer has `balance_nanos: null` "
        "(admins never see one end user's balance).\n\n"
        "**Idempotent:** one credit per `idempotency_key` (use your payment's id): the same key, "
        "wallet and amount again answers `replayed: true` and credits nothing more."
    ),
    response_description="The credit applied (or replayed), and the wallet's balance after it (nano-USD).",
    responses=described(
        ERROR_RESPONSES | {409: {}, 503: {}},
        {
            403: "Only owner and admin keys credit wallets. Nothing was credited.",
            503: (
                "The credit is in the ledger but the live balance has not taken it yet: retry the same "
                "request (same `idempotency_key`) after `Retry-After`; it is never credited twice."
            ),
            404: "No such wallet in your key's scope. Nothing was credited.",
            409: (
                "`idempotency_key` was already used for another credit (another wallet or amount), or the "
                "wallet is not active for metering yet. Nothing was credited."
            ),
            422: (
                "Invalid amount or text, or an `idempotency_key` starting with `tollgate:` or `stripe:` (kept "
                "for tollgate's own entries and Stripe payments): `errors[].field` names it. Nothing was credited."
            ),
        },
    ),
)
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
            check_client_key(body.idempotency_key)  # before the lookup: a system key's use is not told
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


@router.put(
    "/v1/wallets/{wallet_id}/mode",
    response_model=ModePublic,
    tags=["modes"],
    summary="Set a wallet's billing mode",
    description=(
        "Give one wallet its own billing mode (`production`, `development`, `trial` or "
        "`track_only`), whatever its app's default, or send `mode: null` to make it follow its app's "
        "default again. Takes effect for the wallet's next turn; chats the new mode lets go on "
        "(e.g. paused for lack of funds, now in development) become resumable.\n\n"
        "**Key:** an **owner** key of the wallet's app, or an **admin** key. Audit-logged."
    ),
    response_description="The wallet's mode after the change.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "Only owner and admin keys change modes. Nothing changed.",
            404: "No such wallet in your key's scope. Nothing changed.",
            422: "`mode` is not one of production, development, trial, track_only or null. Nothing changed.",
        },
    ),
)
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
