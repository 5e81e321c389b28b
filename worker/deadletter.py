"""Dead letters: outbox entries the drain could not persist, kept with their error, their charge
named in the ledger, and the operator's way out (retry, discard).

Where they live (Redis, the shard's hash tag)::

    tollgate:{sN}:deadletter        stream: the outbox entry's own fields (t, b, a, m, …) plus
                                    outbox_id (its stream id in the outbox), error, error_class
    tollgate:{sN}:deadletter:ids    hash: outbox stream id → dead-letter stream id (one dead letter
                                    per outbox entry, however often the entry is re-delivered)

The money (the choice, DESIGN.md invariant 4): the gate debited the turn when it accepted it, and a
dead-lettered turn keeps that charge as a **named debt**.  The drain writes a ledger debit of the
entry's billed nanos, idempotency key ``tollgate:deadletter:<shard>:<entry id>`` (:data:`CHARGE`),
so ``gate balance = credits − debits − outbox not yet persisted`` holds to the nano, and the ledger
says which entry the money is for.  Then:

- ``retry`` (:meth:`worker.drain.OutboxDrain.retry_dead_letter`) persists the turn through the same
  path as the drain; its usage debit charges the turn, so a credit ``tollgate:deadletter-retried:…``
  (:data:`SETTLED`) cancels the named debt in the same transaction.  The gate is not touched.
- ``discard`` (:func:`discard`) drops the turn and gives the money back: a ledger credit
  ``tollgate:deadletter-refund:…`` (:data:`REFUND`), then the same credit in the gate.

An entry whose wallet the ledger cannot hold (unknown wallet, a NUL in its id) gets no ledger charge; reconciliation then shows the gate's debit as drift of that wallet, and discard
refunds the gate alone.  Either way ``tollgate reconcile`` reports dead letters as their own figure.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

import psycopg
import redis
from sqlalchemy import exc as sa_exc
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session

from models.tables import TransactionKind, Wallet, WalletTransaction
from worker.db import session_scope
from worker.wallet import UnknownWallet, WalletGate, shard_tag

log = logging.getLogger(__name__)

#: ledger key prefixes, followed by ``<shard>:<outbox stream id>``
CHARGE = "tollgate:deadletter:"
SETTLED = "tollgate:deadletter-retried:"
REFUND = "tollgate:deadletter-refund:"
#: fields the dead-letter stream adds to the outbox entry's own
_OWN_FIELDS = ("outbox_id", "error", "error_class")

#: failures of the connection, not of an entry: the batch stays pending and is retried as a whole
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # connection pool exhausted
    psycopg.OperationalError,  # connection lost, server shutting down, deadlock, serialization failure
    psycopg.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
)


class DeadLetterNotFound(LookupError):
    """No dead letter with this outbox id (never dead-lettered, or already retried or discarded)."""


def is_transient(exc: BaseException) -> bool:
    """True for a failure of PostgreSQL or Redis themselves (down, connection lost, deadlock,
    serialization failure, pool timeout): nothing is dead-lettered for it.  Any other exception,
    whatever its class, is the entry's own."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def _tolerant(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _entries(reply) -> list[tuple[str, dict[str, str]]]:
    return [(_tolerant(entry_id), {_tolerant(k): _tolerant(v) for k, v in (fields or {}).items()})
            for entry_id, fields in reply]


def xrange_tolerant(client: redis.Redis, key: str, *, min: str = "-", max: str = "+",
                    count: int | None = None) -> list[tuple[str, dict[str, str]]]:
    """XRANGE that never fails on what another writer stored: bytes that are not UTF-8 are decoded
    with ``surrogateescape`` (so :func:`encode_fields` gives them back unchanged)."""
    try:
        return client.xrange(key, min=min, max=max, count=count)
    except UnicodeDecodeError:
        args = ["XRANGE", key, min, max] + (["COUNT", count] if count else [])
        return _entries(client.execute_command(*args, NEVER_DECODE=True))


def read_own_pending(client: redis.Redis, stream: str, group: str, consumer: str,
                     count: int) -> list[tuple[str, dict[str, str]]]:
    """This consumer's pending entries (XREADGROUP … 0), decoded as :func:`xrange_tolerant` does:
    the drain's way on when a read failed to decode an entry it was just given."""
    reply = client.execute_command("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, "0",
                                   NEVER_DECODE=True)
    if not reply:
        return []
    first = reply[0] if isinstance(reply, list) else next(iter(reply.items()))
    return _entries(first[1])


def encode_fields(fields: dict[str, str]) -> dict[str, bytes]:
    """Fields as the bytes they were read from (``surrogateescape``), for writing them back."""
    return {k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape") for k, v in fields.items()}


def deadletter_key(shard: int) -> str:
    """The dead-letter stream of one shard: entries that could not be persisted, with the error."""
    return f"{shard_tag(shard)}:deadletter"


def deadletter_index_key(shard: int) -> str:
    """Hash outbox stream id → dead-letter stream id of one shard."""
    return f"{shard_tag(shard)}:deadletter:ids"


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as an operator sees it.  ``turn_id`` and ``wallet_id`` are None when the
    payload does not hold a string there; ``billed_nanos`` is 0 when ``b`` is not an integer.
    ``charged``: the ledger holds its named debt (None: not looked up, see :func:`list_dead_letters`).
    ``fields``: the outbox entry's own fields."""

    shard: int
    entry_id: str
    deadletter_id: str
    turn_id: str | None
    wallet_id: str | None
    billed_nanos: int
    error: str
    error_class: str
    charged: bool | None
    fields: dict[str, str] = field(repr=False)

    @property
    def outbox_id(self) -> str:
        """``<shard>:<outbox stream id>``, as ``usage_event.outbox_id`` and the CLI name it."""
        return f"{self.shard}:{self.entry_id}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (strings as stored: ``json.dumps`` escapes NUL and lone surrogates)."""
        data = asdict(self)
        data["outbox_id"] = self.outbox_id
        return data


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def describe(shard: int, deadletter_id: str, stored: dict[str, str]) -> DeadLetter:
    """A dead-letter stream entry → :class:`DeadLetter`.  Never raises: whatever was stored (a
    malformed payload, NUL, a non-integer amount) is shown, not parsed."""
    fields = {k: v for k, v in stored.items() if k not in _OWN_FIELDS}
    turn_id = wallet_id = None
    try:
        payload = json.loads(fields.get("t", ""))
        if isinstance(payload, list) and len(payload) > 2:
            turn_id, wallet_id = _text(payload[1]), _text(payload[2])
    except (ValueError, TypeError):
        pass
    try:
        billed = int(fields.get("b", "0"))
    except (ValueError, TypeError):
        billed = 0
    return DeadLetter(shard=shard, entry_id=str(stored.get("outbox_id", "")), deadletter_id=deadletter_id,
                      turn_id=turn_id, wallet_id=wallet_id, billed_nanos=billed,
                      error=str(stored.get("error", "")), error_class=str(stored.get("error_class", "")),
                      charged=None, fields=fields)


def list_dead_letters(client: redis.Redis, shards: Iterable[int], *, session: Session | None = None) -> list[DeadLetter]:
    """Every dead letter of the given shards, oldest first per shard; with a ``session``, each
    marked ``charged`` as the ledger says (one query)."""
    found = []
    for shard in shards:
        found += [describe(shard, dl_id, stored) for dl_id, stored in xrange_tolerant(client, deadletter_key(shard))]
    if session is not None and found:
        keys = {CHARGE + dl.outbox_id for dl in found}  # ids Redis made: ASCII, storable
        held = set(session.execute(select(WalletTransaction.idempotency_key).where(
            WalletTransaction.idempotency_key.in_(keys))).scalars())
        found = [replace(dl, charged=CHARGE + dl.outbox_id in held) for dl in found]
    return found


def find(client: redis.Redis, outbox_id: str) -> DeadLetter:
    """The dead letter of ``<shard>:<outbox stream id>``.  Raises DeadLetterNotFound (also for a
    malformed id)."""
    shard_text, _, entry_id = outbox_id.partition(":")
    if not shard_text.isdigit() or not entry_id:
        raise DeadLetterNotFound(f"outbox_id: expected <shard>:<stream id>, got {outbox_id!r}")
    shard = int(shard_text)
    deadletter_id = client.hget(deadletter_index_key(shard), entry_id)
    stored = xrange_tolerant(client, deadletter_key(shard), min=deadletter_id, max=deadletter_id) if deadletter_id else []
    if not stored:
        raise DeadLetterNotFound(f"outbox_id: no dead letter {outbox_id!r}")
    return describe(shard, stored[0][0], stored[0][1])


def record(client: redis.Redis, shard: int, entry_id: str, fields: dict[str, str], exc: BaseException) -> bool:
    """Append the outbox entry to the shard's dead-letter stream with its error, once per entry
    (the index hash is checked under WATCH).  Returns True if it was new."""
    index = deadletter_index_key(shard)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(index)
                if pipe.hexists(index, entry_id):
                    return False
                pipe.multi()
                pipe.xadd(deadletter_key(shard), encode_fields({
                    **{k: v for k, v in fields.items() if k not in _OWN_FIELDS}, "outbox_id": entry_id,
                    "error": str(exc)[:2000] or repr(exc)[:2000], "error_class": _class_name(exc),
                }))
                dl_id = pipe.execute()[0]
                break
            except redis.WatchError:
                continue
    # the index after the stream entry: a crash in between leaves a second copy at worst, never none
    client.hsetnx(index, entry_id, dl_id)
    return True


def _class_name(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__module__}.{type(cause).__qualname__}"


def is_dead_lettered(client: redis.Redis, shard: int, entry_id: str) -> bool:
    """True if this outbox entry was dead-lettered already (a re-delivery after a crash)."""
    return bool(client.hexists(deadletter_index_key(shard), entry_id))


def charge(shard: int, entry_id: str, fields: dict[str, str]) -> bool:
    """Write the named debt of a dead-lettered entry: a ledger debit of its billed nanos
    (``tollgate:deadletter:<shard>:<entry id>``), once.  Returns True if the ledger holds it (now
    or from before); False when there is nothing to charge or the ledger cannot name the wallet
    (unknown, or not storable text).  Raises only transient errors (see :func:`is_transient`)."""
    dl = describe(shard, "", {**fields, "outbox_id": entry_id})
    if dl.billed_nanos <= 0 or dl.wallet_id is None:
        return False
    try:
        with session_scope() as session:
            if session.get(Wallet, dl.wallet_id) is None:
                return False
            _ledger_entry(session, dl.wallet_id, TransactionKind.debit, dl.billed_nanos, CHARGE + dl.outbox_id,
                          f"dead-lettered outbox entry {dl.outbox_id} (turn {ascii(dl.turn_id)[:200]})")
        return True
    except Exception as exc:
        if is_transient(exc):
            raise
        log.error("dead letter %s: its charge cannot be written to the ledger (%s)", dl.outbox_id, exc)
        return False


def _ledger_entry(session: Session, wallet_id: str, kind: TransactionKind, amount_nanos: int, key: str,
                  description: str) -> bool:
    """One ledger entry and its wallet aggregate, once per ``key``.  True if new.  The caller commits."""
    new = session.execute(
        insert(WalletTransaction)
        .values(wallet_id=wallet_id, kind=kind, amount_nanos=amount_nanos, idempotency_key=key,
                description=description[:500])
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(WalletTransaction.id)
    ).first()
    if new is None:
        return False
    column = Wallet.credits_nanos if kind == TransactionKind.credit else Wallet.debits_nanos
    session.execute(update(Wallet).where(Wallet.id == wallet_id).values({column: column + amount_nanos}))
    return True


def has_charge(session: Session, dl: DeadLetter) -> bool:
    """True if the ledger holds the named debt of ``dl``."""
    return session.execute(
        select(WalletTransaction.id).where(WalletTransaction.idempotency_key == CHARGE + dl.outbox_id)
    ).first() is not None


def settle_after_retry(session: Session, dl: DeadLetter) -> bool:
    """In the retry's transaction: cancel the named debt (the persisted turn's usage debit now
    charges it) with a credit ``tollgate:deadletter-retried:…``, once.  True if written now."""
    if not has_charge(session, dl):
        return False
    return _ledger_entry(session, dl.wallet_id, TransactionKind.credit, dl.billed_nanos, SETTLED + dl.outbox_id,
                         f"dead letter {dl.outbox_id} retried and persisted: its usage debit charges it")


def remove(client: redis.Redis, dl: DeadLetter) -> None:
    """Delete the dead letter (stream entry and index)."""
    pipe = client.pipeline(transaction=True)
    pipe.xdel(deadletter_key(dl.shard), dl.deadletter_id)
    pipe.hdel(deadletter_index_key(dl.shard), dl.entry_id)
    pipe.execute()


def discard(gate: WalletGate, outbox_id: str) -> DeadLetter:
    """Drop a dead letter for good and refund its charge: the ledger credit
    ``tollgate:deadletter-refund:<outbox id>`` (if the ledger held the named debt), then the same
    credit in the gate (the gate debited the turn when it accepted it), then the dead letter is
    deleted.  Safe to run again after a crash (both credits are keyed).  Returns what was discarded.
    Raises DeadLetterNotFound."""
    dl = find(gate.redis, outbox_id)
    if dl.billed_nanos > 0 and dl.wallet_id is not None:
        with session_scope() as session:
            if has_charge(session, dl):
                _ledger_entry(session, dl.wallet_id, TransactionKind.credit, dl.billed_nanos, REFUND + dl.outbox_id,
                              f"dead letter {dl.outbox_id} discarded: its charge refunded")
        try:
            dl.wallet_id.encode("utf-8")  # a wallet id that is not text was never the gate's
            gate.credit(dl.wallet_id, dl.billed_nanos, REFUND + dl.outbox_id)
        except (UnknownWallet, UnicodeEncodeError):
            log.warning("dead letter %s: wallet %r is not in the gate; a rebuild loads the ledger balance",
                        dl.outbox_id, dl.wallet_id)
    remove(gate.redis, dl)
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
