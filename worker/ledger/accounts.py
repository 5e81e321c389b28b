"""Accounts: enterprises, wallets, credits and debits (the usage of drained turns: :mod:`worker.ledger.turns`).

Every function here takes a ``session`` and never commits: the caller (a task, route, CLI command,
the drain, the public API's wrappers in :mod:`worker`) owns the transaction.  Functions that also
touch the gate (:func:`open_wallet`, :func:`credit_wallet`) send their Redis step with
``db.after_commit``, so Redis is never ahead of the ledger for money coming in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.enums import BillingMode, PayerLevel, TransactionKind
from models.validation import MAX_DESCRIPTION, reads_as_prefix
from models.wallet import Enterprise, Wallet, WalletTransaction
from worker.billing.payers import gate_profile
from worker.db import after_commit
from worker.errors import InputError, Unavailable
from worker.gate.gate import WalletGate
from worker.gate.keys import RESERVED_KEY_PREFIX, SYSTEM_KEY_PREFIXES
from worker.ledger.audit import audit
from worker.validation import InvalidInput, check_text

log = logging.getLogger(__name__)

#: idempotency keys tollgate writes itself (usage debits); callers' keys may not start with it
#: largest amount one credit may carry, nano-USD (keeps sums far from BIGINT's 2^63)
MAX_CREDIT_NANOS = 2**62


class LedgerError(InputError, ValueError):
    """A ledger request is invalid (names the field), e.g. an unknown wallet or a bad amount."""


class GatePending(Unavailable, RuntimeError):
    """The credit is in the ledger but the gate could not apply it yet; retry with the same key."""

    title = "Credit pending"


@dataclass(frozen=True, slots=True)
class Credited:
    """A credit applied in the gate (:func:`credit_wallet`), for its ``on_credited`` hook.

    ``amount_nanos`` / ``balance_nanos``: nano-USD, the credit and the gate balance after it;
    ``new``: False when the ledger entry existed already (a retry completing the gate side)."""

    wallet_id: str
    enterprise_id: str | None
    amount_nanos: int
    balance_nanos: int
    idempotency_key: str
    new: bool


#: ``on_credited(gate, credited)``: what follows a credit once the gate has it (resume the wallet's
#: paused chats, announce ``wallet.credited``: :func:`worker.chats.wiring.after_credit`)
OnCredited = Callable[[WalletGate, Credited], None]


def ensure_enterprise(session: Session, enterprise_id: str, *, name: str | None = None) -> None:
    """Create the enterprise (app) ``enterprise_id`` if it does not exist."""
    session.execute(
        insert(Enterprise)
        .values(id=enterprise_id, name=name or enterprise_id, default_mode=BillingMode.production)
        .on_conflict_do_nothing(index_elements=["id"])
    )


def open_wallet(
    session: Session,
    gate: WalletGate,
    *,
    wallet_id: str,
    enterprise_id: str | None,
    owner_id: str,
    level: PayerLevel = PayerLevel.app_usage,
    mode: BillingMode | None = None,
    limited: bool = True,
) -> Wallet:
    """Create a wallet in PostgreSQL (if new) and load it into the gate with its ledger balance.

    ``mode`` None: the wallet follows its app's ``default_mode`` (the settings' default without an
    app); a mode given here overrides the app's for this wallet.  Opening an existing wallet changes
    nothing in PostgreSQL and keeps the gate's balance.  Writes in ``session`` (never commits); the
    gate loads the wallet once the caller's transaction commits (``after_commit``).  Returns the
    wallet row.
    Raises ``worker.errors.InvalidInput`` (a ValueError) naming ``wallet_id``, ``enterprise_id``
    or ``owner_id`` when one is not an acceptable id (nothing is written).
    """
    check_text(wallet_id, "wallet_id")
    if enterprise_id is not None:
        check_text(enterprise_id, "enterprise_id")
    check_text(owner_id, "owner_id")
    app = None
    if enterprise_id:
        ensure_enterprise(session, enterprise_id)
        app = session.get(Enterprise, enterprise_id)
    inherited = app.default_mode if app is not None else gate.settings.default_mode
    session.execute(
        insert(Wallet)
        .values(
            id=wallet_id,
            enterprise_id=enterprise_id,
            owner_id=owner_id,
            level=level,
            mode=mode or inherited,
            mode_override=mode is not None,
            limited=limited,
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    wallet = session.get(Wallet, wallet_id)
    assert wallet is not None
    profile = gate_profile(session, wallet)
    balance = wallet.credits_nanos - wallet.debits_nanos
    after_commit(session, lambda: gate.load_wallet(wallet_id, balance_nanos=balance, **profile))
    return wallet


def _check_credit_text(wallet_id: object, idempotency_key: object, description: object) -> None:
    """The edge rules of ``models.validation`` for a credit's text (ids, key, description), before
    any of it reaches Redis or PostgreSQL.  Raises LedgerError naming the field."""
    try:
        check_text(wallet_id, "wallet_id")
        check_text(idempotency_key, "idempotency_key")
        check_text(description, "description", kind="text", max_length=MAX_DESCRIPTION, min_length=0)
    except InvalidInput as exc:
        raise LedgerError(str(exc), field=exc.field) from None


def check_client_key(idempotency_key: str) -> None:
    """Refuse a credit key from an API or CLI caller that starts with a prefix tollgate writes itself
    (:data:`~worker.gate.keys.SYSTEM_KEY_PREFIXES`: ``tollgate:`` for allowances, usage, refunds and
    dead letters, ``stripe:`` for Stripe payments), or only looks as if it did, so no caller's credit
    poses as a Stripe payment on a statement or takes the key of a payment still to come.  Raises
    LedgerError naming ``idempotency_key``.

    "Looks as if" is :func:`models.validation.reads_as_prefix`: Unicode compatibility forms (NFKC:
    fullwidth ``ｓｔｒｉｐｅ：…``, mathematical ``𝐬𝐭𝐫𝐢𝐩𝐞:…``, ``ſtripe:…``), case (``STRIPE:…``) and
    the look-alikes of Unicode's confusables data (UTS #39; Cyrillic ``ѕtripe:…``, Greek
    ``tοllgate:…``, ``to1lgate:…``) are folded before the prefix is looked for.  Keys keep their
    documented alphabet (any letters, README "Input limits"): restricting them to ASCII would refuse
    keys callers may already use, while the look-alike fold refuses exactly the keys that read as a
    system key on a statement or in a log.  Whitespace, zero-width, format and other invisible
    characters never reach here: the id rules (:mod:`models.validation`) refuse them in any key."""
    if not isinstance(idempotency_key, str):
        return
    prefix = reads_as_prefix(idempotency_key, SYSTEM_KEY_PREFIXES)
    if prefix is not None:
        reads = "starts with" if idempotency_key.startswith(prefix) else "reads as a key starting with"
        raise LedgerError(
            f"idempotency_key: {idempotency_key!r} {reads} {prefix!r}, which tollgate keeps for its own "
            "entries (case, Unicode compatibility forms and look-alike letters folded); choose another key",
            field="idempotency_key",
        )


def record_credit(
    session: Session,
    *,
    wallet_id: str,
    amount_nanos: int,
    idempotency_key: str,
    description: str = "",
    system_key: bool = False,
) -> bool:
    """Add a credit entry to the ledger once per ``idempotency_key``; returns True if it was new.
    A key with a system prefix is refused unless ``system_key`` (:func:`check_client_key`).

    Raises: LedgerError for a non-positive amount (``amount_nanos``) or unknown ``wallet_id``, or
    text ``models.validation`` refuses (ids, ``idempotency_key``, ``description``), naming the field.
    """
    if not isinstance(amount_nanos, int) or isinstance(amount_nanos, bool) or not 0 < amount_nanos <= MAX_CREDIT_NANOS:
        raise LedgerError(
            f"amount_nanos must be an integer of nano-USD in 1..2^62, got {amount_nanos!r}", field="amount_nanos"
        )
    _check_credit_text(wallet_id, idempotency_key, description)
    if not idempotency_key or len(idempotency_key) > 200:
        raise LedgerError(
            f"idempotency_key must be 1..200 characters, got {idempotency_key!r}", field="idempotency_key"
        )
    if not system_key:
        check_client_key(idempotency_key)
    if session.get(Wallet, wallet_id) is None:
        raise LedgerError(f"wallet_id: unknown wallet {wallet_id!r}", field="wallet_id")
    inserted = session.execute(
        insert(WalletTransaction)
        .values(
            wallet_id=wallet_id,
            kind=TransactionKind.credit,
            amount_nanos=amount_nanos,
            idempotency_key=idempotency_key,
            description=description,
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(col(WalletTransaction.id))
    ).first()
    if inserted is None:
        return False
    session.execute(
        update(Wallet).where(col(Wallet.id) == wallet_id).values(credits_nanos=col(Wallet.credits_nanos) + amount_nanos)
    )
    return True


@dataclass(slots=True)
class PendingCredit:
    """What :func:`credit_wallet` returns: the credit's ledger side, written in the caller's
    session; ``balance_nanos`` (the gate balance after the credit, nano-USD) is set once the
    caller's transaction has committed and the gate has the credit (None before, or when the
    commit rolled back).  ``new``: False when the key's ledger entry existed already."""

    wallet_id: str
    amount_nanos: int
    idempotency_key: str
    new: bool
    balance_nanos: int | None = None


def credit_wallet(
    session: Session,
    gate: WalletGate,
    *,
    wallet_id: str,
    amount_nanos: int,
    idempotency_key: str,
    description: str = "",
    actor: str | None = None,
    on_credited: OnCredited | None = None,
    system_key: bool = False,
) -> PendingCredit:
    """Credit a wallet once per key: the ledger entry is written in ``session`` (the caller
    commits), then, once that transaction has committed (``after_commit``), the gate's balance.

    With ``actor`` ('cli', 'key:<prefix>', …) a new credit also writes an audit-log row, in the
    same transaction as its ledger entry.  ``on_credited(gate, Credited)`` runs once the gate has
    the credit (not when the key's entry is older than the gate remembers); its errors are logged,
    the money is in.  The entry points pass :func:`worker.chats.wiring.after_credit` (resume the
    wallet's paused chats, then ``wallet.credited``); :func:`worker.credit_wallet` is wired so.

    A retry with the same key after a crash between the two completes the gate side only (the gate
    remembers applied keys for ``settings.dedupe_ttl_s``; an older entry is not re-applied, and
    reconciliation repairs any gap: ``tollgate.ledger.reconcile`` with repair).  Returns a
    :class:`PendingCredit` whose ``balance_nanos`` the commit fills in (nano-USD).
    ``system_key``: the key is one tollgate made (a Stripe payment's ``stripe:…``); otherwise a key
    starting with a system prefix is refused (:func:`check_client_key`).

    Raises: LedgerError, also when the key was already used for another wallet or amount (nothing
    changes); UnknownWallet when the gate lacks the wallet (nothing changes: rebuild it first);
    GatePending, from the caller's ``commit()``, when the ledger entry committed but the gate
    failed (retry with the same key).
    """
    _check_credit_text(wallet_id, idempotency_key, description)
    if not system_key:
        check_client_key(idempotency_key)  # before the gate is read, as record_credit would refuse it
    gate.balance(wallet_id)  # UnknownWallet before anything is written
    new = record_credit(
        session,
        wallet_id=wallet_id,
        amount_nanos=amount_nanos,
        idempotency_key=idempotency_key,
        description=description,
        system_key=system_key,
    )
    entry = session.execute(
        select(WalletTransaction).where(col(WalletTransaction.idempotency_key) == idempotency_key)
    ).scalar_one()
    wallet = session.get(Wallet, wallet_id)
    assert wallet is not None  # record_credit refused an unknown wallet
    enterprise_id = wallet.enterprise_id
    if new and actor:
        audit(
            session,
            actor=actor,
            action="credit",
            enterprise_id=enterprise_id,
            wallet_id=wallet_id,
            amount_nanos=amount_nanos,
            idempotency_key=idempotency_key,
        )
    if entry.wallet_id != wallet_id or entry.amount_nanos != amount_nanos or entry.kind != TransactionKind.credit:
        raise LedgerError(
            f"idempotency_key: {idempotency_key!r} was already used for a {entry.kind} of "
            f"{entry.amount_nanos} nanos to wallet {entry.wallet_id!r}",
            field="idempotency_key",
            http_status=409,
            title="Idempotency key in use",
        )
    age_s = _credit_age_s(session, entry)
    pending = PendingCredit(wallet_id, amount_nanos, idempotency_key, new)
    after_commit(session, lambda: _apply_credit(gate, pending, enterprise_id, age_s, on_credited))
    return pending


def _credit_age_s(session: Session, entry: WalletTransaction) -> float:
    """Seconds since the ledger entry ``entry`` was written (the database's clock)."""
    return float(session.execute(select(func.extract("epoch", func.now() - entry.created_at))).scalar_one())


def _remembered(gate: WalletGate, age_s: float) -> bool:
    """The gate still remembers (dedupes) a ledger key written ``age_s`` seconds ago: its applied
    markers live ``settings.dedupe_ttl_s``; an hour's margin keeps a marker from expiring mid-retry."""
    return age_s <= gate.settings.dedupe_ttl_s - 3600


def complete_credit(
    session: Session, gate: WalletGate, idempotency_key: str, *, on_credited: OnCredited | None = None
) -> PendingCredit | None:
    """Send again, after the caller's commit, the gate step of the credit already in the ledger
    under ``idempotency_key`` (the gate applies a key once, so a credit it has is not counted
    twice): the repair of a crash or a Redis failure between a credit's commit and its gate step.
    ``on_credited`` runs as in :func:`credit_wallet` (with ``new`` False).  Writes nothing.
    Returns the :class:`PendingCredit`, or None when the key is no credit in the ledger or is older
    than the gate remembers (reconciliation covers those).  Raises GatePending from the commit."""
    entry = session.execute(
        select(WalletTransaction).where(col(WalletTransaction.idempotency_key) == idempotency_key)
    ).scalar_one_or_none()
    if entry is None or entry.kind != TransactionKind.credit:
        return None
    age_s = _credit_age_s(session, entry)
    if not _remembered(gate, age_s):
        return None
    wallet = session.get(Wallet, entry.wallet_id)
    enterprise_id = wallet.enterprise_id if wallet is not None else None
    pending = PendingCredit(entry.wallet_id, entry.amount_nanos, idempotency_key, False)
    after_commit(session, lambda: _apply_credit(gate, pending, enterprise_id, age_s, on_credited))
    return pending


def unapplied_credits(session: Session, gate: WalletGate, *, older_than_s: int = 60, limit: int = 1000) -> list[str]:
    """Idempotency keys of credits (:func:`record_credit`'s: callers' keys, never tollgate's own)
    committed more than ``older_than_s`` seconds ago, recently enough for the gate to remember them
    (see :func:`_remembered`), that the gate has not applied: their gate step was lost (a crash or a
    Redis failure after the commit).  Oldest first, at most ``limit``.  Wallets the gate lacks are
    left out (a rebuild loads them with their ledger balance).  Reads only."""
    wt = WalletTransaction
    window_s = max(gate.settings.dedupe_ttl_s - 3600, 0)
    rows = session.execute(
        select(col(wt.wallet_id), col(wt.idempotency_key))
        .where(
            col(wt.kind) == TransactionKind.credit,
            ~col(wt.idempotency_key).startswith(RESERVED_KEY_PREFIX, autoescape=True),
            col(wt.created_at) > func.now() - func.make_interval(0, 0, 0, 0, 0, 0, window_s),
            col(wt.created_at) < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
        )
        .order_by(col(wt.id))
        .limit(limit)
    ).all()
    if not rows:
        return []
    pipe = gate.redis.pipeline(transaction=False)
    for wallet_id, key in rows:
        pipe.exists(gate.wallet_key(wallet_id))
        pipe.exists(*gate.applied_keys(wallet_id, [("credit", key)]))
    found = pipe.execute()
    return [key for i, (_w, key) in enumerate(rows) if found[2 * i] and not found[2 * i + 1]]


def _apply_credit(
    gate: WalletGate, pending: PendingCredit, enterprise_id: str | None, age_s: float, on_credited: OnCredited | None
) -> None:
    """The gate side of :func:`credit_wallet`, after its ledger entry committed.  Raises GatePending."""
    wallet_id, key = pending.wallet_id, pending.idempotency_key
    if not _remembered(gate, age_s):
        pending.balance_nanos = gate.balance(wallet_id)
        return
    try:
        pending.balance_nanos = balance = gate.credit(wallet_id, pending.amount_nanos, key)
    except Exception as exc:
        raise GatePending(
            f"credit {key!r} is in the ledger but not yet in the gate ({exc}); retry with the same idempotency key"
        ) from exc
    if on_credited is not None:
        credited = Credited(wallet_id, enterprise_id, pending.amount_nanos, balance, key, pending.new)
        try:
            on_credited(gate, credited)
        except Exception:
            log.error("credit %s to %s: its after-credit hook failed", key, wallet_id, exc_info=True)


def ledger_balance(session: Session, wallet_id: str) -> int:
    """``credits − debits`` of a wallet from its ledger entries, nano-USD.  Raises LedgerError."""
    wallet = session.get(Wallet, wallet_id)
    if wallet is None:
        raise LedgerError(f"wallet_id: unknown wallet {wallet_id!r}", field="wallet_id")
    wt = WalletTransaction
    credits, debits = session.execute(
        select(
            func.coalesce(func.sum(col(wt.amount_nanos)).filter(col(wt.kind) == TransactionKind.credit), 0),
            func.coalesce(func.sum(col(wt.amount_nanos)).filter(col(wt.kind) == TransactionKind.debit), 0),
        ).where(col(wt.wallet_id) == wallet_id)
    ).one()
    return int(credits) - int(debits)
