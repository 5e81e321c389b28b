"""Dead letters: outbox entries the drain could not persist, kept with their error, their charge
named in the ledger, and the operator's way out (retry, discard).

Where they live: PostgreSQL ``dead_letter`` (one row per outbox entry, unique ``outbox_id``; the
entry's fields as ASCII JSON, so NUL, lone surrogates and bytes that were not UTF-8 are stored
escaped), written in one transaction with the entry's charge; status 'open' until an operator
retries ('retried') or discards ('discarded') it.  Redis keeps a copy for a quick look,
``tollgate:{sN}:deadletter`` (a stream: the entry's fields plus outbox_id, error, error_class),
removed on retry or discard; PostgreSQL is the record (Redis is a cache of PostgreSQL).

The money (the choice, DESIGN.md invariant 4): the gate debited the turn when it accepted it, and a
dead-lettered turn keeps that charge as a **named debt**.  With the dead-letter row, the drain writes
a ledger debit of the entry's billed nanos, idempotency key ``tollgate:deadletter:<shard>:<entry
id>`` (:data:`CHARGE`), so ``gate balance = credits − debits − outbox not yet persisted`` holds to
the nano, and the ledger says which entry the money is for.  Then:

- retry (:meth:`worker.ledger.drain.OutboxDrain.retry_dead_letter`) persists the turn through the drain's
  path; its usage debit charges the turn, so a credit ``tollgate:deadletter-retried:…``
  (:data:`SETTLED`) cancels the named debt, and the row is marked 'retried', all in one transaction:
  exactly once.  The gate is not touched.
- discard (:func:`discard`) drops the turn and gives the money back: a ledger credit
  ``tollgate:deadletter-refund:…`` (:data:`REFUND`) and the row marked 'discarded' in one
  transaction, then the same credit in the gate (keyed: applied once).

An entry whose wallet the ledger cannot hold (unknown to PostgreSQL, an id it cannot store) gets no
ledger charge (``charged`` false); discard then refunds the gate alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Iterable, TypeGuard, cast

import redis
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.enums import TransactionKind
from models.turn import DeadLetter as DeadLetterRow
from models.wallet import Wallet, WalletTransaction
from worker.db import after_commit
from worker.errors import NotFound
from worker.gate.gate import UnknownWallet, WalletGate
from worker.gate.keys import (
    DEADLETTER_CHARGE_PREFIX,
    DEADLETTER_REFUND_PREFIX,
    DEADLETTER_SETTLED_PREFIX,
    deadletter_key,
)
from worker.gate.outbox import entry_figures

log = logging.getLogger(__name__)

#: ledger key prefixes, followed by ``<shard>:<outbox stream id>``
CHARGE = DEADLETTER_CHARGE_PREFIX
SETTLED = DEADLETTER_SETTLED_PREFIX
REFUND = DEADLETTER_REFUND_PREFIX
#: the largest charge a dead letter names (the ``bigint`` columns' top): beyond, the entry's ``b``
#: is no gate's and the dead letter names none
MAX_BILLED_NANOS = 2**63 - 1
#: fields the Redis copy adds to the outbox entry's own
_OWN_FIELDS = ("outbox_id", "error", "error_class")


class DeadLetterNotFound(NotFound, LookupError):
    """No open dead letter with this outbox id (never dead-lettered, or already retried or discarded)."""

    title = "Unknown dead letter"


# reading what other writers stored ------------------------------------------------------------


def _tolerant(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _entries(reply) -> list[tuple[str, dict[str, str]]]:
    return [
        (_tolerant(entry_id), {_tolerant(k): _tolerant(v) for k, v in (fields or {}).items()})
        for entry_id, fields in reply
    ]


def xrange_tolerant(
    client: redis.Redis, key: str, *, min: str = "-", max: str = "+", count: int | None = None
) -> list[tuple[str, dict[str, str]]]:
    """XRANGE that never fails on what another writer stored: bytes that are not UTF-8 are decoded
    with ``surrogateescape`` (so :func:`encode_fields` gives them back unchanged)."""
    try:
        return cast(list[tuple[str, dict[str, str]]], client.xrange(key, min=min, max=max, count=count))
    except UnicodeDecodeError:
        args = ["XRANGE", key, min, max] + (["COUNT", count] if count else [])
        return _entries(client.execute_command(*args, NEVER_DECODE=True))


def read_own_pending(
    client: redis.Redis, stream: str, group: str, consumer: str, count: int
) -> list[tuple[str, dict[str, str]]]:
    """This consumer's pending entries (XREADGROUP … 0), decoded as :func:`xrange_tolerant` does:
    the drain's way on when a read failed to decode an entry it was just given."""
    reply = client.execute_command(
        "XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, "0", NEVER_DECODE=True
    )
    if not reply:
        return []
    first = reply[0] if isinstance(reply, list) else next(iter(reply.items()))
    return _entries(first[1])


def encode_fields(fields: dict[str, str]) -> dict[bytes, bytes]:
    """Fields as the bytes they were read from (``surrogateescape``), for writing them back."""
    return {k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape") for k, v in fields.items()}


def storable(value: Any) -> TypeGuard[str]:
    """True if ``value`` is a str PostgreSQL can hold as text (valid UTF-8, no NUL)."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(value: str, limit: int) -> str:
    """``value`` if PostgreSQL can store it, else its ASCII escape; at most ``limit`` characters."""
    return (value if storable(value) else ascii(value)[1:-1])[:limit]


def identity(fields: dict[str, str]) -> tuple[str | None, str | None, int]:
    """``(turn_id, wallet_id, billed_nanos)`` of an outbox entry as far as it can be read; never
    raises (None where the payload holds no string, 0 when ``b`` is not an integer or is outside
    ``0..MAX_BILLED_NANOS``, a charge no gate takes)."""
    turn_id = wallet_id = None
    try:
        payload = json.loads(fields.get("t", ""))
        if isinstance(payload, list) and len(payload) > 2:
            turn_id = payload[1] if isinstance(payload[1], str) else None
            wallet_id = payload[2] if isinstance(payload[2], str) else None
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        billed = entry_figures(fields)[0] if ("b" in fields or "g" in fields) else 0
    except (ValueError, TypeError, KeyError):
        billed = 0
    if not 0 <= billed <= MAX_BILLED_NANOS:  # no gate takes a negative charge or one past bigint
        billed = 0
    return turn_id, wallet_id, billed


# the record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as an operator sees it.  ``turn_id`` and ``wallet_id`` are read from the
    stored fields (None when the payload has no string there; they may hold NUL, show them
    escaped); ``charged``: the ledger holds its named debt; ``fields``: the outbox entry's own."""

    shard: int
    outbox_id: str
    turn_id: str | None
    wallet_id: str | None
    billed_nanos: int
    error: str
    error_class: str
    charged: bool
    status: str
    created_at: datetime | None
    fields: dict[str, str] = field(repr=False)

    @property
    def entry_id(self) -> str:
        """The outbox stream id."""
        return self.outbox_id.partition(":")[2]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (``json.dumps`` escapes NUL and lone surrogates); ``created_at`` ISO 8601."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() if self.created_at else None
        return data


def _from_row(row: DeadLetterRow) -> DeadLetter:
    try:
        fields = json.loads(row.fields_json)
        if not isinstance(fields, dict):
            raise TypeError("not an object")
        fields = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}
    except (ValueError, TypeError, RecursionError):
        fields = {}
    turn_id, wallet_id, _billed = identity(fields)
    return DeadLetter(
        shard=row.shard,
        outbox_id=row.outbox_id,
        turn_id=turn_id,
        wallet_id=wallet_id,
        billed_nanos=row.billed_nanos,
        error=row.error,
        error_class=row.error_class,
        charged=row.charged,
        status=row.status,
        created_at=row.created_at,
        fields=fields,
    )


def record(
    session: Session, client: redis.Redis, shard: int, entry_id: str, fields: dict[str, str], exc: BaseException
) -> bool:
    """Dead-letter one outbox entry, in ``session`` (the caller commits; the drain gives each its
    own transaction): its ``dead_letter`` row and, when the ledger knows its wallet and it billed
    anything, its named debt (a debit, :data:`CHARGE`); its Redis copy (:func:`keep_copy`) once
    that commits.  Once per entry: a re-delivered entry finds its row and writes nothing.  Returns
    True if it was new.  If even the row cannot be written, the caller keeps the Redis copy as the
    record (:func:`keep_copy`)."""
    outbox_id = f"{shard}:{entry_id}"
    turn_id, wallet_id, billed = identity(fields)
    error, error_class = str(exc) or repr(exc), _class_name(exc)
    new = session.execute(
        insert(DeadLetterRow)
        .values(
            outbox_id=outbox_id,
            shard=shard,
            billed_nanos=billed,
            error=_clean(error, 2000),
            error_class=_clean(error_class, 200),
            fields_json=json.dumps(fields, ensure_ascii=True),
            status="open",
            turn_id=turn_id if storable(turn_id) and len(turn_id) <= 1000 else None,
            wallet_id=wallet_id if storable(wallet_id) and len(wallet_id) <= 1000 else None,
        )
        .on_conflict_do_nothing(index_elements=["outbox_id"])
        .returning(col(DeadLetterRow.id))
    ).first()
    if new is None:
        return False
    if billed > 0 and wallet_id is not None and storable(wallet_id) and session.get(Wallet, wallet_id) is not None:
        _ledger_entry(
            session,
            wallet_id,
            TransactionKind.debit,
            billed,
            CHARGE + outbox_id,
            f"dead-lettered outbox entry {outbox_id} (turn {ascii(turn_id)[:200]})",
        )
        session.execute(update(DeadLetterRow).where(col(DeadLetterRow.id) == new[0]).values(charged=True))
    after_commit(session, lambda: keep_copy(client, shard, entry_id, fields, exc))
    return True


def keep_copy(client: redis.Redis, shard: int, entry_id: str, fields: dict[str, str], exc: BaseException) -> None:
    """The dead letter's Redis copy (stream ``deadletter_key(shard)``): after its row committed,
    or as the only record when PostgreSQL refused the row."""
    error = str(exc) or repr(exc)
    client.xadd(
        deadletter_key(shard),
        cast(
            dict[Any, Any],
            encode_fields(
                {
                    **{k: v for k, v in fields.items() if k not in _OWN_FIELDS},
                    "outbox_id": entry_id,
                    "error": error[:2000],
                    "error_class": _class_name(exc),
                }
            ),
        ),
    )


def _class_name(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__module__}.{type(cause).__qualname__}"


def dead_lettered(session: Session, shard: int, entry_ids: Iterable[str]) -> set[str]:
    """Those of the shard's outbox entry ids that have a dead-letter row (re-delivered after a crash)."""
    wanted = {f"{shard}:{entry_id}": entry_id for entry_id in entry_ids}
    found = session.execute(select(col(DeadLetterRow.outbox_id)).where(col(DeadLetterRow.outbox_id).in_(list(wanted))))
    return {wanted[outbox_id] for outbox_id in found.scalars()}


def _ledger_entry(
    session: Session, wallet_id: str, kind: TransactionKind, amount_nanos: int, key: str, description: str
) -> bool:
    """One ledger entry and its wallet aggregate, once per ``key``.  True if new.  The caller commits."""
    new = session.execute(
        insert(WalletTransaction)
        .values(
            wallet_id=wallet_id,
            kind=kind,
            amount_nanos=amount_nanos,
            idempotency_key=key,
            description=description[:500],
        )
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(col(WalletTransaction.id))
    ).first()
    if new is None:
        return False
    column = col(Wallet.credits_nanos) if kind == TransactionKind.credit else col(Wallet.debits_nanos)
    session.execute(update(Wallet).where(col(Wallet.id) == wallet_id).values({column: column + amount_nanos}))
    return True


def list_dead_letters(
    session: Session, shards: Iterable[int] | None = None, *, status: str = "open"
) -> list[DeadLetter]:
    """Dead letters (default: the open ones) of the given shards (default: all), by shard, oldest
    first.  Whatever a row holds, reading it never raises."""
    query = (
        select(DeadLetterRow)
        .where(col(DeadLetterRow.status) == status)
        .order_by(col(DeadLetterRow.shard), col(DeadLetterRow.id))
    )
    if shards is not None:
        query = query.where(col(DeadLetterRow.shard).in_(list(shards)))
    return [_from_row(row) for row in session.execute(query).scalars()]


def find(session: Session, outbox_id: str) -> DeadLetter:
    """The open dead letter ``<shard>:<outbox stream id>``, its row locked until the caller's
    transaction ends (a concurrent retry or discard waits, then finds it resolved).
    Raises DeadLetterNotFound (also for a malformed id)."""
    shard_text, _, entry_id = outbox_id.partition(":")
    if not shard_text.isdigit() or not entry_id or not storable(outbox_id):
        raise DeadLetterNotFound(f"outbox_id: expected <shard>:<stream id>, got {outbox_id!r}", field="outbox_id")
    row = session.execute(
        select(DeadLetterRow)
        .where(col(DeadLetterRow.outbox_id) == outbox_id, col(DeadLetterRow.status) == "open")
        .with_for_update()
    ).scalar_one_or_none()
    if row is None:
        raise DeadLetterNotFound(f"outbox_id: no open dead letter {outbox_id!r}", field="outbox_id")
    return _from_row(row)


def resolve(session: Session, dl: DeadLetter, status: str) -> None:
    """Mark the dead letter 'retried' or 'discarded' in the caller's transaction."""
    session.execute(
        update(DeadLetterRow)
        .where(col(DeadLetterRow.outbox_id) == dl.outbox_id)
        .values(status=status, resolved_at=func.now())
    )


def settle_after_retry(session: Session, dl: DeadLetter) -> None:
    """In the retry's transaction, after the turn was persisted: cancel the named debt (the turn's
    usage debit now charges it) with a credit ``tollgate:deadletter-retried:…`` and mark it 'retried'."""
    _cancel_debt(session, dl, SETTLED, f"dead letter {dl.outbox_id} retried and persisted: its usage debit charges it")
    resolve(session, dl, "retried")


def refund_in_ledger(session: Session, dl: DeadLetter) -> None:
    """In the caller's transaction: refund the named debt (a credit ``tollgate:deadletter-refund:…``,
    if the ledger held it) and mark the dead letter 'discarded'.  Call :func:`refund_in_gate` after commit."""
    _cancel_debt(session, dl, REFUND, f"dead letter {dl.outbox_id} discarded: its charge refunded")
    resolve(session, dl, "discarded")


def _cancel_debt(session: Session, dl: DeadLetter, prefix: str, description: str) -> None:
    """If the ledger charged ``dl`` (its named debt), credit ``dl.billed_nanos`` back to the wallet
    keyed ``prefix + outbox_id`` (:data:`SETTLED` or :data:`REFUND`), in the caller's transaction."""
    if dl.charged:
        assert dl.wallet_id is not None  # charged only when the ledger knew the wallet
        _ledger_entry(
            session, dl.wallet_id, TransactionKind.credit, dl.billed_nanos, prefix + dl.outbox_id, description
        )


def refund_in_gate(gate: WalletGate, dl: DeadLetter) -> None:
    """Give the gate back what it debited for the turn (keyed by :data:`REFUND`: applied once).  A
    wallet the gate lacks is skipped (a rebuild loads the ledger balance).  Crash before this call:
    reconciliation reports the wallet's drift and ``--repair`` sets it (the ledger credit is there)."""
    if dl.billed_nanos <= 0 or not storable(dl.wallet_id):
        return
    try:
        gate.credit(dl.wallet_id, dl.billed_nanos, REFUND + dl.outbox_id)
    except UnknownWallet:
        log.warning(
            "dead letter %s: wallet %r is not in the gate; a rebuild loads the ledger balance",
            dl.outbox_id,
            dl.wallet_id,
        )


def drop_copy(client: redis.Redis, dl: DeadLetter) -> None:
    """Delete the Redis copy of a resolved dead letter (never raises: PostgreSQL is the record)."""
    try:
        for copy_id, stored in xrange_tolerant(client, deadletter_key(dl.shard)):
            if stored.get("outbox_id") == dl.entry_id:
                client.xdel(deadletter_key(dl.shard), copy_id)
    except redis.RedisError:
        log.warning("dead letter %s: its Redis copy stays", dl.outbox_id, exc_info=True)


def discard(session: Session, gate: WalletGate, outbox_id: str) -> DeadLetter:
    """Drop a dead letter for good and refund its charge: the ledger credit and the 'discarded' mark
    in ``session`` (the caller commits), then, after that commit, the same credit in the gate and
    the Redis copy dropped.  A second discard raises DeadLetterNotFound and changes nothing.
    Returns what was discarded."""
    dl = find(session, outbox_id)
    refund_in_ledger(session, dl)
    after_commit(session, lambda: refund_in_gate(gate, dl))
    after_commit(session, lambda: drop_copy(gate.redis, dl))
    return dl


def summary(dead: Iterable[DeadLetter]) -> dict[str, Any]:
    """Dead letters as a figure: ``{"count", "nanos", "by_shard": {shard: {"count", "nanos"}},
    "by_wallet": {wallet (ascii-escaped, '?' when unknown): {"count", "nanos"}}}`` (nano-USD)."""
    out: dict[str, Any] = {"count": 0, "nanos": 0, "by_shard": {}, "by_wallet": {}}
    for dl in dead:
        out["count"] += 1
        out["nanos"] += dl.billed_nanos
        wallet = "?" if dl.wallet_id is None else ascii(dl.wallet_id)[1:-1]
        for group, key in (("by_shard", str(dl.shard)), ("by_wallet", wallet)):
            figure = out[group].setdefault(key, {"count": 0, "nanos": 0})
            figure["count"] += 1
            figure["nanos"] += dl.billed_nanos
    return out
