"""The gate: prices a turn in-process and runs ``record_turn.lua`` (one atomic step in Redis) to
debit the payer's wallet, remember the turn_id and append the turn to the outbox.

Redis keys (every key one script touches shares the shard's hash tag, so the gate runs unchanged on
Redis Cluster)::

    tollgate:{sN}:wallet:<wallet_id>   hash  balance, held, mode, limited, enterprise, blocked, level,
                                             share_bps, trial_left, trial_then, accepted_turns, denied_turns,
                                             require_hold ('1': reservations required), debt (nanos),
                                             max_turn_nanos (the most one turn may cost)
    tollgate:{sN}:seen:<W>:<b>[:<a>]   hash  first answers of turn_ids in their scope, the (enterprise,
                                             wallet) pair, by fingerprint, per time bucket b of width
                                             W = settings.dedupe_ttl_s (worker.gate.dedupe, lib_seen.lua)
    tollgate:{sN}:turn:<n>:<enterprise>:<m>:<wallet>:<turn_id>
                                       str   the layout before (a string per turn): still read, never written
    tollgate:{sN}:credit:<m>:<wallet>:<key> str  credit already applied (same TTL)
    tollgate:{sN}:adjust:<m>:<wallet>:<key> str  signed adjustment (e.g. allowance expiry) already applied (same TTL)
    tollgate:{sN}:outbox               stream of accepted turns not yet persisted
    tollgate:{sN}:kick                 str   a drain was asked for within settings.kick_interval_ms
    tollgate:{sN}:transitions          str   count of chat transitions (worker.ledger.turns.transition_position)
    tollgate:{sN}:hold:<reservation>   hash  a reservation: wallet, amount, expires_ms (keys.reservation_key)
    tollgate:{sN}:holds                zset  reservation ids by expiry (ms); the wallet's 'held' sums them
                                             (keys.reservation_expiry_key)

Ids may contain ':', so every part of a composed key but the last is written with its length
first (``<n>:<part>``, see :func:`scoped_key`): wallet ``app:x:u1`` with turn ``t`` and wallet
``app:x`` with turn ``u1:t`` are two keys.

``N = crc32(wallet_id) % settings.outbox_shards``; the shard count is written once to
``tollgate:config:outbox_shards`` and a gate with another count refuses to start (wallets would move
shards and the turns queued on the old ones would be stranded).  Nothing but this module runs the
scripts.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Callable, Iterable, Iterator, Sequence, TypedDict, Unpack, cast

import redis
from hiredis import pack_command
from redis.typing import EncodableT, FieldT

from models.enums import BillingMode
from models.turn import Decision, TurnIn, trusted_decision
from models.wallet import DEFAULT_MAX_TURN_COST_NANOS, ReservationPublic
from worker.errors import Conflict, InvalidInput, NotFound, Unavailable
from worker.gate.dedupe import fingerprint
from worker.gate.keys import (
    ALLOWANCE_EXPIRY_PREFIX,
    FLAT_FEE_PREFIX,
    SHARDS_KEY,
    reservation_expiry_key,
    reservation_key,
    scoped_key,
    shard_of,
    shard_tag,
    turn_key,
)
from worker.gate.outbox import Kicker, celery_kicker, turn_payload
from worker.gate.pipeline import (
    NOT_RUN_ON_CLUSTER,
    TURNS_PER_CALL,
    pipeline_evalsha,
    ramp,
    send_packed,
    send_packed_retrying,
)
from worker.gate.scripts import lua_source, turn_script_source
from worker.metrics import decision_counter
from worker.pricing.meters import meter_price
from worker.pricing.prices import PriceBook, PriceSheet, TurnLimitExceeded, TurnPrice
from worker.settings import Settings, get_settings, redis_client
from worker.validation import check_text

#: a service tier's name, as TurnIn accepts it (``models.turn``)
_TIER = re.compile(r"[a-z0-9_.-]{1,32}")

log = logging.getLogger(__name__)


class WrongEnterprise(NotFound, LookupError):
    """The wallet belongs to another app than the turn's ``enterprise_id``; nothing changes."""

    title = "Unknown wallet"

    def __init__(self, wallet_id: str) -> None:
        super().__init__(f"wallet {wallet_id!r} does not belong to the turn's enterprise", field="wallet_id")
        self.wallet_id = wallet_id


class GateConfigError(Conflict, RuntimeError):
    """The gate's settings disagree with what Redis holds (the outbox shard count, a wallet's mode)."""


class GateBatchError(Unavailable, RuntimeError):
    """Redis refused some calls of a batch after others were applied.

    ``decisions`` has the decision of each turn that was applied and ``None`` for each that was not;
    the applied ones are debited and queued like any other.
    """

    title = "Partly recorded"

    def __init__(self, error: Exception, decisions: list[Decision | None]) -> None:
        super().__init__(f"{sum(d is None for d in decisions)} of {len(decisions)} turn(s) not recorded: {error}")
        self.error = error
        self.decisions = decisions


def _own_keys(tag: str, turn: TurnIn, reservation_id: str | None) -> tuple[str, str, str]:
    """A turn's own keys in shard ``tag``: its wallet, its turn_id's answer, the reservation it settles."""
    return (
        f"{tag}:wallet:{turn.wallet_id}",
        turn_key(tag, turn.enterprise_id, turn.wallet_id, turn.turn_id),
        reservation_key(tag, reservation_id or ""),
    )


def _own_args(
    turn: TurnIn, price: TurnPrice, reservation_id: str | None, reservation_required: bool, dedupe_key: bytes
) -> tuple:
    """A turn's own script arguments: cost, payload, reservation_id, whether a reservation is
    required (the script's ``require_hold``), enterprise_id, tokens and the turn_id's fingerprint
    (keyed with ``dedupe_key``, :func:`worker.gate.dedupe.fingerprint`)."""
    return (
        price.cost_nanos,
        turn_payload(turn, price),
        reservation_id or "",
        "1" if reservation_required else "0",
        turn.enterprise_id,
        turn.prompt_tokens + turn.completion_tokens,
        fingerprint(dedupe_key, turn.enterprise_id, turn.wallet_id, turn.turn_id),
    )


def _cost_limit(cost_nanos: int, limit_nanos: int, *, index: int | None = None) -> TurnLimitExceeded:
    """The refusal of a turn costing ``cost_nanos``, above its app's ``max_turn_cost_nanos``."""
    return TurnLimitExceeded(
        "cost_nanos",
        f"the turn costs {cost_nanos:,} nanos, above its app's max_turn_cost_nanos of {limit_nanos:,}",
        index=index,
    )


def _priced(turn: TurnIn, quote: TurnPrice | PriceSheet) -> TurnPrice:
    """A turn's price from :meth:`WalletGate._quote`'s answer (a sheet is applied to its tokens)."""
    if isinstance(quote, TurnPrice):
        return quote
    return quote.price(
        turn.prompt_tokens,
        turn.completion_tokens,
        turn.cached_prompt_tokens,
        turn.cache_write_tokens,
        turn.cache_write_1h_tokens,
    )


class UnknownWallet(NotFound, LookupError):
    """The wallet does not exist in the gate (never created, or Redis lost it: rebuild it)."""

    title = "Unknown wallet"

    def __init__(self, wallet_id: str) -> None:
        super().__init__(f"unknown wallet {wallet_id!r}", field="wallet_id")
        self.wallet_id = wallet_id


@functools.lru_cache(maxsize=1)
def process_gate() -> "WalletGate":
    """The one gate of this process (API workers, Celery tasks, CLI commands, the in-process
    client): ``settings.redis_url``, one Redis pool, scripts registered once, drain kicks sent to
    Celery without a result (:func:`worker.gate.outbox.celery_kicker`).

    Reset with ``process_gate.cache_clear()``: tests do so after changing settings, and a forked
    child does so itself (its parent's pool is not its own)."""
    return WalletGate()


os.register_at_fork(after_in_child=process_gate.cache_clear)


#: ``record_turns``' wallet pre-check: the wallet-hash fields read for each wallet of a batch
WALLET_CHECK_FIELDS = ("mode", "enterprise", "max_turn_nanos")

#: wallets whose shard (:meth:`GateCore.shard`) and pre-check command (:meth:`WalletGate._check_wallets`)
#: a gate remembers; past this many the memo starts again (bounded memory whatever the ids)
_SHARD_CACHE_MAX = 65_536


class ReserveOptions(TypedDict, total=False):
    """The keyword arguments of a reservation, the same for both gates (:meth:`WalletGate.reserve`,
    :meth:`worker.gate.aio.AsyncWalletGate.reserve`); checked, with their defaults (``ttl_s`` 300
    seconds, ``prompt_tokens`` 0, the rest None), by :meth:`GateCore._reserve_call`."""

    ttl_s: int
    reservation_id: str | None
    model: str | None
    provider: str | None
    prompt_tokens: int
    max_tokens: int | None
    service_tier: str | None


class GateCore:
    """What the blocking :class:`WalletGate` and the asyncio :class:`worker.gate.aio.AsyncWalletGate`
    share, none of it I/O: the key map of the shards, pricing (:meth:`_quotes`), the wallet
    pre-check on rows already read (:meth:`_check_rows`), each script's KEYS and ARGV
    (:meth:`_call_specs`, :meth:`_packed_groups`, :meth:`_reserve_call`) and the decoding of its
    replies (:class:`TurnReplies`, :meth:`_reservation`, :meth:`_translate`).  A subclass owns the
    Redis client and sends what this builds; a change to a script's keys or arguments is made here
    once and both gates follow.

    Args:
        settings: defaults to :func:`worker.settings.get_settings`.
        price_book: defaults to genai-prices plus ``settings.price_overrides_path``.
        kicker: called with a shard number when that outbox should be drained now; defaults to
            sending the Celery task.  Pass ``lambda shard: None`` to rely on beat's backstop.
    """

    def __init__(
        self, *, settings: Settings | None = None, price_book: PriceBook | None = None, kicker: Kicker | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self.prices = price_book or PriceBook.from_file(self.settings.price_overrides_path)
        self.kicker = kicker or celery_kicker
        #: per shard: its tag and the keys every turn of it names (outbox, kick flag, reservation expiries)
        self._shard_keys = [
            (tag, f"{tag}:outbox", f"{tag}:kick", reservation_expiry_key(tag))
            for tag in map(shard_tag, range(self.settings.outbox_shards))
        ]
        self._dedupe_key = self.settings.dedupe_key.encode()
        self._shards: dict[str, int] = {}  # wallet_id → shard (:meth:`shard`)

    # keys -------------------------------------------------------------------------------------
    def shard(self, wallet_id: str) -> int:
        """The outbox shard that holds ``wallet_id`` (:func:`shard_of`, remembered per wallet)."""
        shard = self._shards.get(wallet_id)
        if shard is None:
            shard = shard_of(wallet_id, self.settings.outbox_shards)
            if len(self._shards) >= _SHARD_CACHE_MAX:
                self._shards.clear()
            self._shards[wallet_id] = shard
        return shard

    def wallet_key(self, wallet_id: str) -> str:
        """Redis key of a wallet's hash."""
        return f"{shard_tag(self.shard(wallet_id))}:wallet:{wallet_id}"

    def turn_key(self, enterprise_id: str, wallet_id: str, turn_id: str) -> str:
        """Redis key of a turn_id's first answer in its scope as the layout before
        ``worker.gate.dedupe`` wrote it (see :func:`turn_key`): still read, never written."""
        return turn_key(shard_tag(self.shard(wallet_id)), enterprise_id, wallet_id, turn_id)

    def _turn_keys(self, turn: TurnIn, reservation_id: str | None = None) -> list[str]:
        """``record_turn.lua``'s KEYS for one turn (see its header)."""
        tag, outbox, kick, expiries = self._shard_keys[self.shard(turn.wallet_id)]
        wallet, seen, reservation = _own_keys(tag, turn, reservation_id)
        return [wallet, seen, outbox, kick, reservation, expiries]

    def _reservation_keys(self, wallet_id: str, reservation_id: str) -> list[str]:
        """``reserve.lua``'s and ``release.lua``'s KEYS: the wallet, the reservation, the shard's expiries."""
        tag = shard_tag(self.shard(wallet_id))
        return [f"{tag}:wallet:{wallet_id}", reservation_key(tag, reservation_id), reservation_expiry_key(tag)]

    def reservation_key(self, wallet_id: str, reservation_id: str) -> str:
        """Redis key of reservation ``reservation_id``, on ``wallet_id``'s shard (:func:`keys.reservation_key`)."""
        return reservation_key(shard_tag(self.shard(wallet_id)), reservation_id)

    # turns: pricing, pre-check, calls ---------------------------------------------------------
    def _quotes(self, turns: Sequence[TurnIn]) -> list[TurnPrice | PriceSheet]:
        """Every turn priced before anything is sent (an LLM turn: its price sheet resolved and its
        tokens checked against the model's context window, :meth:`_quote`).  Raises what
        :meth:`_quote` raises; a ``TurnLimitExceeded`` carries the turn's ``index``."""
        quotes = []
        for i, t in enumerate(turns):
            try:
                quotes.append(self._quote(t))
            except TurnLimitExceeded as exc:
                exc.index = i
                raise
        return quotes

    def _check_rows(
        self, turns: Sequence[TurnIn], quotes: Sequence[TurnPrice | PriceSheet], rows: dict[str, Sequence]
    ) -> None:
        """The wallet pre-check of a batch on the rows read: ``rows[wallet_id]`` is the wallet
        hash's :data:`WALLET_CHECK_FIELDS` for every wallet of ``turns``, in :func:`wallets_of`'s
        order.  Every wallet must be in the gate and belong to its turns' app, and (given
        ``quotes``) no turn may cost more than its wallet's ``max_turn_nanos``, so a batch with a
        bad turn is refused whole, nothing applied (the script checks the cost again, atomically).
        A ``quotes`` list has each turn's sheet replaced by its price (priced once: the calls built
        later take it as it is).
        Raises UnknownWallet, WrongEnterprise, TurnLimitExceeded (``cost_nanos``, with ``index``)."""
        # each wallet's one app among its turns, None when they name several (no owner matches then)
        enterprise: dict[str, str | None] = {}
        for t in turns:
            if enterprise.setdefault(t.wallet_id, t.enterprise_id) != t.enterprise_id:
                enterprise[t.wallet_id] = None
        limits: dict[str, int] = {}
        for wallet_id, (mode, owner, limit) in rows.items():
            if mode is None:
                raise UnknownWallet(wallet_id)
            if owner is not None and enterprise[wallet_id] != owner:
                raise WrongEnterprise(wallet_id)
            limits[wallet_id] = int(limit) if limit is not None else DEFAULT_MAX_TURN_COST_NANOS
        replace = isinstance(quotes, list)
        for i, (turn, quote) in enumerate(zip(turns, quotes)):
            price = _priced(turn, quote)
            if replace:
                quotes[i] = price  # type: ignore[index]  # a list, checked above
            if price.cost_nanos > limits[turn.wallet_id]:
                raise _cost_limit(price.cost_nanos, limits[turn.wallet_id], index=i)

    def _call_specs(
        self, turns: Sequence[TurnIn], quotes: Sequence[TurnPrice | PriceSheet], reserve_exact: bool = False
    ) -> list[tuple[str, list[str], tuple]]:
        """One turn, or a ``reserve_exact`` batch, as ``(script attribute, KEYS, ARGV)`` calls in the
        order they are sent: ``record_turn.lua`` per turn (``_record``), with ``reserve_exact`` each
        turn's exact reservation (``reserve.lua``, ``_reserve``) before it."""
        calls: list[tuple[str, list[str], tuple]] = []
        expires_ms = int(time.time() * 1000) + 60_000
        for turn, quote in zip(turns, quotes):
            price = _priced(turn, quote)
            reservation_id = turn.reservation_id
            if reserve_exact:
                reservation_id = auto_id = f"auto:{turn.turn_id}"
                calls.append(
                    (
                        "_reserve",
                        self._reservation_keys(turn.wallet_id, auto_id),
                        (price.cost_nanos, expires_ms, auto_id, turn.wallet_id),
                    )
                )
            calls.append(
                (
                    "_record",
                    self._turn_keys(turn, reservation_id),
                    self._record_args(turn, price, reservation_id, reserve_exact),
                )
            )
        return calls

    def _packed_groups(
        self, turns: Sequence[TurnIn], quotes: Sequence[TurnPrice | PriceSheet], batches: list[list[int]], sha: str
    ) -> Iterator[tuple[bytes, int]]:
        """``record_turns.lua`` (SHA ``sha``) per group of :meth:`_shard_batches`, each EVALSHA built
        (prices, keys, payloads) and packed by hiredis only when taken, as ``(packed bytes, 1 reply)``."""
        for batch in batches:
            keys, args = self._group_call(turns, quotes, batch)
            yield pack_command(("EVALSHA", sha, len(keys), *keys, *args)), 1

    # reservations: arguments and answers ------------------------------------------------------
    def _reserve_call(
        self,
        wallet_id: str,
        amount_nanos: int | None,
        *,
        ttl_s: int = 300,
        reservation_id: str | None = None,
        model: str | None = None,
        provider: str | None = None,
        prompt_tokens: int = 0,
        max_tokens: int | None = None,
        service_tier: str | None = None,
    ) -> tuple[list[str], list]:
        """``reserve.lua``'s KEYS and ARGV ``[amount_nanos, expires_ms, reservation_id, wallet_id]``
        for :meth:`WalletGate.reserve` (its arguments, checked and priced here; a missing
        ``reservation_id`` is made up: ``r_<uuid4 hex>``).  Raises what :meth:`WalletGate.reserve`
        documents, nothing sent."""
        if (amount_nanos is None) == (model is None):
            raise InvalidInput("amount_nanos", "give either amount_nanos or model (with prompt_tokens and max_tokens)")
        if service_tier is not None and model is None:
            raise InvalidInput("service_tier", "only with model (an amount_nanos reservation is not priced)")
        if model is not None:
            if max_tokens is None:
                raise InvalidInput("max_tokens", "required with model")
            amount_nanos = self.quote_reservation(model, provider, prompt_tokens, max_tokens, service_tier)
        if not isinstance(amount_nanos, int) or isinstance(amount_nanos, bool) or not 1 <= amount_nanos <= 2**62:
            raise ValueError(f"amount_nanos must be an integer of nano-USD in 1..2^62, got {amount_nanos!r}")
        if not isinstance(ttl_s, int) or not 1 <= ttl_s <= 86_400:
            raise ValueError(f"ttl_s must be 1..86400 seconds, got {ttl_s!r}")
        check_text(wallet_id, "wallet_id")  # InvalidInput (a ValueError) naming the field
        if reservation_id is not None:
            check_text(reservation_id, "reservation_id")
        reservation_id = reservation_id or f"r_{uuid.uuid4().hex}"
        expires_ms = int(time.time() * 1000) + ttl_s * 1000
        return self._reservation_keys(wallet_id, reservation_id), [amount_nanos, expires_ms, reservation_id, wallet_id]

    @staticmethod
    def _reservation(reply: Sequence, wallet_id: str, reservation_id: str) -> ReservationPublic:
        """``reserve.lua``'s reply ``[status, amount, balance, held, duplicate]`` as a
        :class:`~models.wallet.ReservationPublic` (nanos)."""
        status, amount, balance, held, duplicate = reply
        return ReservationPublic(
            reservation_id=reservation_id,
            wallet_id=wallet_id,
            granted=status == "reserved",
            amount_nanos=int(amount),
            balance_nanos=int(balance),
            held_nanos=int(held),
            duplicate=bool(duplicate),
        )

    def _quote(self, turn: TurnIn) -> TurnPrice | PriceSheet:
        """What prices a turn, resolved now so a batch with a turn that cannot be priced is refused
        before anything is sent: the price sheet of an LLM turn's model (its token arithmetic, which
        cannot fail, is left to :func:`_priced`), else the priced turn (a meter, or a model priced by
        genai-prices itself).  Raises worker.pricing.prices.PricingError, worker.pricing.meters.UnknownMeter,
        worker.pricing.prices.TurnLimitExceeded (tokens above the model's context window, a meter's
        quantity above its maximum)."""
        if turn.meter != "llm":
            return meter_price(turn.meter, turn.quantity)
        sheet = self.prices.sheet(turn.model, turn.provider, turn.occurred_at, turn.service_tier)
        sheet.check_window(turn.prompt_tokens, turn.completion_tokens)
        return sheet if sheet.exotic is None else _priced(turn, sheet)

    def _record_args(
        self, turn: TurnIn, price: TurnPrice, reservation_id: str | None, reservation_required: bool
    ) -> tuple:
        """``record_turn.lua``'s ARGV for one turn (see its header)."""
        cost, payload, rid, require, enterprise, tokens, seen = _own_args(
            turn, price, reservation_id, reservation_required, self._dedupe_key
        )
        return (
            cost,
            payload,
            self.settings.dedupe_ttl_s,
            self.settings.kick_interval_ms,
            rid,
            require,
            enterprise,
            tokens,
            seen,
        )

    def _group_call(
        self, turns: Sequence[TurnIn], quotes: Sequence[TurnPrice | PriceSheet], batch: list[int]
    ) -> tuple[list[str], list]:
        """``record_turns.lua``'s KEYS and ARGV (see its header) for the turns at indexes ``batch``,
        all of one shard."""
        tag, outbox, kick, expiries = self._shard_keys[self.shard(turns[batch[0]].wallet_id)]
        keys = [outbox, kick, expiries]
        args: list = [len(batch), self.settings.dedupe_ttl_s, self.settings.kick_interval_ms]
        for i in batch:
            turn = turns[i]
            keys += _own_keys(tag, turn, turn.reservation_id)
            args += _own_args(turn, _priced(turn, quotes[i]), turn.reservation_id, False, self._dedupe_key)
        return keys, args

    def _shard_batches(self, turns: Sequence[TurnIn]) -> list[list[int]]:
        """Indexes of ``turns`` grouped by shard, in order within each, :data:`TURNS_PER_CALL` per group,
        in the order the groups are sent.  The first group and the last are cut into smaller ones
        (8, 16, 32, … and … 32, 16, 8): Redis starts on the first few turns while the rest of the
        group is still being built, and waits less on the last (see :meth:`_record_streamed`)."""
        by_shard: dict[int, list[int]] = {}
        for i, turn in enumerate(turns):
            by_shard.setdefault(self.shard(turn.wallet_id), []).append(i)
        batches: list[list[int]] = []
        for indexes in by_shard.values():
            batches += [indexes[j : j + TURNS_PER_CALL] for j in range(0, len(indexes), TURNS_PER_CALL)]
        if len(batches) > 1:
            batches = ramp(batches[0]) + batches[1:-1] + [part[::-1] for part in ramp(batches[-1][::-1])][::-1]
        return batches

    def quote_reservation(
        self, model: str, provider: str | None, prompt_tokens: int, max_tokens: int, service_tier: str | None = None
    ) -> int:
        """The worst-case cost of an LLM call before it is made, nano-USD (>= 1): every prompt token
        at the model's input price (no cache discount) and ``max_tokens`` completion tokens at its
        output price, today's prices (OpenRouter's in-flight budget does the same), at the
        provider's ``service_tier`` as a turn of that tier is priced (None, ``default``, ``auto``,
        ``standard``: the standard price; ``priority``, ``flex``, …: genai-prices' price of that tier).

        Raises ValueError naming ``prompt_tokens`` / ``max_tokens`` (integers in 0..10^9) or
        ``service_tier`` (not 1..32 of ``[a-z0-9_.-]``), worker.pricing.prices.PricingError (unknown model;
        a tier without a price for the model: the message starts with ``service_tier:``)."""
        for name, value in (("prompt_tokens", prompt_tokens), ("max_tokens", max_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**9:
                raise ValueError(f"{name} must be an integer of tokens in 0..10^9, got {value!r}")
        if service_tier is not None and not (isinstance(service_tier, str) and _TIER.fullmatch(service_tier)):
            raise InvalidInput("service_tier", f"must be 1..32 characters of [a-z0-9_.-], got {service_tier!r}")
        sheet = self.prices.sheet(model, provider, datetime.now(UTC), service_tier)
        return max(1, sheet.price(prompt_tokens, max_tokens, 0, 0).cost_nanos)

    @staticmethod
    def _translate(exc: Exception, wallet_id: str) -> Exception:
        if "TOLLGATE_UNKNOWN_WALLET" in str(exc):
            return UnknownWallet(wallet_id)
        if "TOLLGATE_WRONG_ENTERPRISE" in str(exc):
            return WrongEnterprise(wallet_id)
        if "TOLLGATE_TURN_COST_LIMIT" in str(exc):  # "TOLLGATE_TURN_COST_LIMIT <cost> <limit>"
            cost, limit = str(exc).split("TOLLGATE_TURN_COST_LIMIT", 1)[1].split()[:2]
            return _cost_limit(int(cost), int(limit))
        if "TOLLGATE_BAD_MODE" in str(exc):
            return GateConfigError(f"wallet {wallet_id!r} has a mode the gate does not know; reload it")
        return exc


def wallets_of(turns: Sequence[TurnIn]) -> list[str]:
    """The distinct wallets of a batch, sorted: the order the pre-check reads them in."""
    return sorted({t.wallet_id for t in turns})


class TurnReplies:
    """The decoding of a batch's script replies into decisions, shared by both gates: ``decide(i,
    reply)`` for each turn index ``i`` with its ``record_turn(s).lua`` reply (``[status, balance,
    action, billed, duplicate, kick, cost]``) or the exception of its call; then the shards to kick
    (:attr:`kicks`) and :meth:`result`."""

    def __init__(self, gate: GateCore, turns: Sequence[TurnIn]) -> None:
        self.gate, self.turns = gate, turns
        self.decisions: list[Decision | None] = [None] * len(turns)
        self.kicks: set[int] = set()
        self.errors: list[Exception] = []

    def decide(self, i: int, reply) -> None:
        """Turn ``i``'s reply: a decision, a shard to kick, or an error (translated, with ``index``)."""
        self.decide_group((i,), (reply,))

    def decide_group(self, batch: Sequence[int], reply) -> None:
        """One ``record_turns.lua`` reply (a list of turn replies, or the exception of the whole
        call) for the turns at indexes ``batch``, in order: what :meth:`decide` does for each, in
        one loop (a batch's replies are decoded here, one call per group rather than per turn).
        Raises ValueError when the reply does not hold one turn reply per index."""
        if isinstance(reply, Exception):
            reply = [reply] * len(batch)
        turns, decisions = self.turns, self.decisions
        for i, turn_reply in zip(batch, reply, strict=True):
            turn = turns[i]
            if isinstance(turn_reply, Exception):
                error = self.gate._translate(turn_reply, turn.wallet_id)
                if isinstance(error, TurnLimitExceeded):
                    error.index = i
                self.errors.append(error)
                continue
            status, balance, action, billed, duplicate, kick, cost = turn_reply
            if kick:
                self.kicks.add(self.gate.shard(turn.wallet_id))
            decisions[i] = trusted_decision(  # values come from our own script: no re-validation
                turn.turn_id,
                status == "accepted",
                action,
                int(balance) if balance != "" else None,
                int(cost),
                int(billed),
                bool(duplicate),
            )

    def result(self) -> list[Decision]:
        """Every turn's decision, in order.  Raises the first error when no turn was applied, else
        :class:`GateBatchError` when some were not."""
        if self.errors:
            if all(d is None for d in self.decisions):
                raise self.errors[0]
            raise GateBatchError(self.errors[0], self.decisions)
        return self.decisions  # type: ignore[return-value]  # no None without an error


class WalletGate(GateCore):
    """Records turns against wallets in Redis, atomically and idempotently (blocking redis-py; the
    asyncio twin is :class:`worker.gate.aio.AsyncWalletGate`, both built on :class:`GateCore`).

    Args:
        client: a redis-py client (``decode_responses=True``); defaults to ``settings.redis_url``.
        settings, price_book, kicker: as :class:`GateCore`.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        settings: Settings | None = None,
        price_book: PriceBook | None = None,
        kicker: Kicker | None = None,
    ) -> None:
        super().__init__(settings=settings, price_book=price_book, kicker=kicker)
        self.redis = client or redis_client(self.settings)
        self._check_commands: dict[str, bytes] = {}  # wallet_id → packed pre-check HMGET
        self._record = self.redis.register_script(turn_script_source("record_turn.lua"))
        self._record_many = self.redis.register_script(turn_script_source("record_turns.lua"))
        self._seen = self.redis.register_script(lua_source("seen.lua", "lib_seen.lua"))
        self._adjust = self.redis.register_script(lua_source("adjust.lua"))
        self._repair = self.redis.register_script(lua_source("repair_balance.lua"))
        self._reserve = self.redis.register_script(lua_source("reserve.lua"))
        self._release = self.redis.register_script(lua_source("release.lua"))
        self._check_shard_count()

    def _check_shard_count(self) -> None:
        shards = str(self.settings.outbox_shards)
        self.redis.set(SHARDS_KEY, shards, nx=True)
        stored = cast(str | None, self.redis.get(SHARDS_KEY))  # decode_responses=True: str replies
        if stored != shards:
            raise GateConfigError(
                f"TOLLGATE_OUTBOX_SHARDS is {shards} but this Redis holds wallets on {stored} shards; "
                "moving wallets between shards needs a drained outbox and a rebuild"
            )

    # turn_ids remembered --------------------------------------------------------------------
    def _seen_call(self, op: str, enterprise_id: str, wallet_id: str, turn_id: str):
        tag = shard_tag(self.shard(wallet_id))
        return self._seen(
            keys=[f"{tag}:outbox", turn_key(tag, enterprise_id, wallet_id, turn_id)],
            args=[
                op,
                self.settings.dedupe_ttl_s,
                fingerprint(self._dedupe_key, enterprise_id, wallet_id, turn_id),
            ],
        )

    def remembered_answer(self, enterprise_id: str, wallet_id: str, turn_id: str) -> Decision | None:
        """The decision a retry of ``turn_id`` (in its (enterprise_id, wallet_id) scope) would get
        now, ``duplicate`` true; ``None`` when the gate does not remember it (never recorded, a new
        turn refused before any write, or its window is over).  Changes nothing."""
        reply = self._seen_call("get", enterprise_id, wallet_id, turn_id)
        if not reply:
            return None
        status, balance, action, billed, _duplicate, _kick, cost = reply
        return trusted_decision(
            turn_id,
            status == "accepted",
            action,
            int(balance) if balance != "" else None,
            int(cost),
            int(billed),
            True,
        )

    def forget_turn(self, enterprise_id: str, wallet_id: str, turn_id: str) -> int:
        """Forget a remembered turn_id, as if its window were over: a later turn with it is decided
        anew (and, if already persisted, refunded by the drain).  Returns the copies removed (0: not
        remembered).  For tests and operators' repairs; nothing else calls it."""
        return int(self._seen_call("forget", enterprise_id, wallet_id, turn_id))

    # wallets ----------------------------------------------------------------------------------
    def load_wallet(
        self,
        wallet_id: str,
        *,
        mode: str,
        limited: bool,
        balance_nanos: int,
        overwrite: bool = False,
        blocked_reason: str | None = None,
        enterprise_id: str | None = None,
        level: str = "app_usage",
        share_bps: int = 0,
        trial_left: int = 0,
        trial_then: str = "pause",
        max_turn_cost_nanos: int | None = None,
        reservations_required: bool = False,
    ) -> None:
        """Put a wallet into the gate.  Without ``overwrite`` an existing balance and trial allowance
        are kept (mode, limit, level, share and trial rule are set), so loading twice never resets
        money.  ``balance_nanos`` is nano-USD; ``level`` the payer level; ``share_bps`` the app
        creator's share of a level-2 charge in basis points (0..10000); ``trial_left`` trial tokens
        left; ``trial_then`` 'bill' or 'pause' once they are used; ``max_turn_cost_nanos`` the most
        one turn may cost (the app's setting; None leaves the wallet's as it is, and a wallet without
        one gets ``DEFAULT_MAX_TURN_COST_NANOS`` from the script); ``reservations_required``: every
        charged turn needs a live reservation of this wallet (hash field ``require_hold``).

        Raises: ValueError naming the argument (mode, level, share_bps, trial_then, max_turn_cost_nanos).
        """
        if max_turn_cost_nanos is not None and (
            not isinstance(max_turn_cost_nanos, int)
            or isinstance(max_turn_cost_nanos, bool)
            or not 0 <= max_turn_cost_nanos <= 2**62
        ):
            raise InvalidInput(
                "max_turn_cost_nanos", f"{max_turn_cost_nanos!r} is not an integer of nano-USD in 0..2^62"
            )
        if mode not in BillingMode.__members__:
            raise InvalidInput("mode", f"{mode!r} is not one of {', '.join(BillingMode.__members__)}")
        if level not in ("platform", "app_usage"):
            raise InvalidInput("level", f"{level!r} is not 'platform' or 'app_usage'")
        if not isinstance(share_bps, int) or not 0 <= share_bps <= 10_000:
            raise InvalidInput("share_bps", f"{share_bps!r} is not an integer in 0..10000")
        if trial_then not in ("bill", "pause"):
            raise InvalidInput("trial_then", f"{trial_then!r} is not 'bill' or 'pause'")
        key = self.wallet_key(wallet_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "mode": mode,
                "limited": "1" if limited else "0",
                "level": level,
                "share_bps": share_bps,
                "trial_then": trial_then,
                "require_hold": "1" if reservations_required else "0",
            },
        )
        if enterprise_id:  # record_turn.lua then refuses turns of any other app
            pipe.hset(key, "enterprise", enterprise_id)
        if max_turn_cost_nanos is not None:
            pipe.hset(key, "max_turn_nanos", max_turn_cost_nanos)
        if blocked_reason:
            pipe.hset(key, "blocked", blocked_reason)
        else:
            pipe.hdel(key, "blocked")
        if overwrite:
            pipe.hset(key, mapping={"balance": balance_nanos, "trial_left": trial_left})
        else:
            pipe.hsetnx(key, "balance", balance_nanos)
            pipe.hsetnx(key, "trial_left", trial_left)
        pipe.execute()

    def set_mode(
        self, wallet_id: str, mode: str, *, trial_left: int | None = None, trial_then: str | None = None
    ) -> None:
        """Change a wallet's mode in the gate (the caller records it in PostgreSQL first); turns
        already decided keep the mode they were decided under.  ``trial_left`` (tokens), when given,
        replaces the trial allowance left.  Raises ValueError (mode, trial_then), UnknownWallet."""
        if mode not in BillingMode.__members__:
            raise InvalidInput("mode", f"{mode!r} is not one of {', '.join(BillingMode.__members__)}")
        if trial_then is not None and trial_then not in ("bill", "pause"):
            raise InvalidInput("trial_then", f"{trial_then!r} is not 'bill' or 'pause'")
        key = self.wallet_key(wallet_id)
        if not self.redis.hexists(key, "mode"):  # a stray hash with a mode would be a wallet without limit
            raise UnknownWallet(wallet_id)
        mapping: dict[FieldT, EncodableT] = {"mode": mode}
        if trial_left is not None:
            mapping["trial_left"] = trial_left
        if trial_then is not None:
            mapping["trial_then"] = trial_then
        self.redis.hset(key, mapping=mapping)

    def available(self, wallet_id: str) -> tuple[int, int, str]:
        """``(balance_nanos, held_nanos, mode)`` of a wallet in the gate (available = balance − held).
        Raises :class:`UnknownWallet`."""
        balance, held, mode = self.redis.hmget(self.wallet_key(wallet_id), "balance", "held", "mode")
        if balance is None:
            raise UnknownWallet(wallet_id)
        return int(balance), int(held or 0), cast(str, mode)  # open_wallet sets mode with balance

    def set_blocked(self, wallet_id: str, reason: str | None) -> None:
        """Refuse (``reason``) or allow again (``None``) a production wallet's turns whatever its
        balance.  The caller records ``wallet.blocked_reason`` in PostgreSQL first, so a rebuild keeps
        it.  Raises UnknownWallet."""
        key = self.wallet_key(wallet_id)
        if not self.redis.hexists(key, "mode"):  # never make a stray hash look like a wallet
            raise UnknownWallet(wallet_id)
        if reason:
            self.redis.hset(key, "blocked", reason)
        else:
            self.redis.hdel(key, "blocked")

    def applied_keys(self, wallet_id: str, ledger_keys: Iterable[tuple[str, str]]) -> list[str]:
        """The gate's dedupe keys of ledger entries ``(kind, idempotency_key)`` that the gate applies
        itself through ``adjust.lua``: credits (``credit:`` keys) and allowance expiries (``adjust:`` keys)."""
        tag = shard_tag(self.shard(wallet_id))
        keys = []
        for kind, key in ledger_keys:
            if kind == "credit":
                keys.append(f"{tag}:credit:{scoped_key(wallet_id, key)}")
            elif key.startswith((ALLOWANCE_EXPIRY_PREFIX, FLAT_FEE_PREFIX)):
                keys.append(f"{tag}:adjust:{scoped_key(wallet_id, key)}")
        return keys

    def mark_applied(self, wallet_id: str, ledger_keys: Iterable[tuple[str, str]]) -> None:
        """Mark ledger entries as applied in the gate (after a rebuild that already counts them)."""
        keys = self.applied_keys(wallet_id, ledger_keys)
        if keys:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, "1", ex=self.settings.dedupe_ttl_s, nx=True)
            pipe.execute()

    def repair_balance(
        self,
        wallet_id: str,
        *,
        expected_nanos: int,
        seen_balance: str,
        seen_accepted: str,
        ledger_keys: Iterable[tuple[str, str]] = (),
    ) -> bool:
        """Set the gate balance to ``expected_nanos`` if the wallet still shows ``seen_balance`` and
        ``seen_accepted`` (its balance and accepted_turns as read in a reconciliation snapshot), and
        mark the recent ledger entries ``(kind, key)`` it counts as applied, in one step, so a pending
        retry of one of them cannot apply it twice.  True if set, False if the wallet moved meanwhile.
        Raises UnknownWallet."""
        keys = [self.wallet_key(wallet_id), *self.applied_keys(wallet_id, ledger_keys)]
        try:
            return bool(
                self._repair(keys=keys, args=[expected_nanos, seen_balance, seen_accepted, self.settings.dedupe_ttl_s])
            )
        except redis.ResponseError as exc:
            raise self._translate(exc, wallet_id) from exc

    def balance(self, wallet_id: str) -> int:
        """The wallet's balance in the gate, nano-USD.  Raises :class:`UnknownWallet`."""
        value = self.redis.hget(self.wallet_key(wallet_id), "balance")
        if value is None:
            raise UnknownWallet(wallet_id)
        return int(value)

    def credit(self, wallet_id: str, amount_nanos: int, idempotency_key: str) -> int:
        """Add ``amount_nanos`` (> 0) to the gate's balance once per ``idempotency_key``.

        Callers record the credit in the PostgreSQL ledger first (``worker.ledger.accounts.credit_wallet``
        does both).  Returns the balance after, nano-USD.
        Raises: ValueError for a non-positive amount; UnknownWallet.
        """
        if not isinstance(amount_nanos, int) or isinstance(amount_nanos, bool) or amount_nanos <= 0:
            raise ValueError(f"amount_nanos must be a positive integer, got {amount_nanos!r}")
        return self._apply_once(wallet_id, amount_nanos, "credit", idempotency_key)

    def _apply_once(self, wallet_id: str, delta_nanos: int, namespace: str, key: str) -> int:
        """``adjust.lua``: add ``delta_nanos`` once per ``tollgate:{sN}:<namespace>:<m>:<wallet>:<key>``."""
        tag = shard_tag(self.shard(wallet_id))
        try:
            balance, _dup = self._adjust(
                keys=[
                    f"{tag}:wallet:{wallet_id}",
                    f"{tag}:{namespace}:{scoped_key(wallet_id, key)}",
                    f"{tag}:{namespace}:{wallet_id}:{key}",
                ],  # the key before 0012 (see adjust.lua)
                args=[delta_nanos, self.settings.dedupe_ttl_s],
            )
        except redis.ResponseError as exc:
            raise self._translate(exc, wallet_id) from exc
        return int(balance)

    def adjust(self, wallet_id: str, delta_nanos: int, key: str) -> int:
        """Add the signed ``delta_nanos`` (non-zero; negative debits) to the gate's balance once per
        ``key`` (``adjust.lua``), e.g. the expiry debit of unused monthly allowance.

        Callers record the matching ledger entry in PostgreSQL first; the gate only mirrors it, so the
        balance may go below zero if the ledger says so.  Returns the balance after, nano-USD.
        Raises: ValueError for a zero, non-integer or out-of-range (|delta| > 2^62) amount; UnknownWallet.
        """
        if (
            not isinstance(delta_nanos, int)
            or isinstance(delta_nanos, bool)
            or delta_nanos == 0
            or abs(delta_nanos) > 2**62
        ):
            raise ValueError(f"delta_nanos must be a non-zero integer within ±2^62, got {delta_nanos!r}")
        return self._apply_once(wallet_id, delta_nanos, "adjust", key)

    def blocked_reasons(self, wallet_ids: Iterable[str]) -> dict[str, str | None]:
        """The ``blocked`` reason each wallet has in the gate (``None``: not blocked or not in the
        gate), one pipelined round trip.  Returns ``{wallet_id: reason}``."""
        ids = list(dict.fromkeys(wallet_ids))
        pipe = self.redis.pipeline(transaction=False)
        for wallet_id in ids:
            pipe.hget(self.wallet_key(wallet_id), "blocked")
        return dict(zip(ids, pipe.execute())) if ids else {}

    # turns ------------------------------------------------------------------------------------
    def record_turn(self, turn: TurnIn) -> Decision:
        """Price, debit and enqueue one turn (one EVALSHA).  Idempotent by ``turn.turn_id``.

        Returns: the :class:`~models.turn.Decision`.
        Raises: worker.pricing.prices.PricingError (unknown model), UnknownWallet; nothing changes then.
        """
        return self.record_turns([turn])[0]

    def record_turns(self, turns: Sequence[TurnIn], *, reserve_exact: bool = False) -> list[Decision]:
        """Record many turns with one pipelined round trip, each through the same script, in order.

        A turn with ``reservation_id`` settles that reservation (its amount is released and the
        actual cost debited).  With ``reserve_exact`` each turn first reserves exactly its cost (in
        the same pipeline) and is denied, not debited, if that reservation is refused: the policy
        of an orchestrator that reserves before every call (``tollgate replay --policy reserve``).

        Every turn is priced and every wallet checked before anything is sent, so a bad turn
        rejects the whole batch and changes nothing.
        Raises: worker.pricing.prices.PricingError, UnknownWallet (nothing changed); GateBatchError if Redis
        refused part of the batch after pricing and checks passed (its ``decisions`` say which).
        """
        if not turns:
            return []
        quotes = self._quotes(turns)
        if len(turns) > 1:  # one turn needs no pre-check: the script refuses an unknown wallet itself
            self._check_wallets(turns, quotes)
        replies = TurnReplies(self, turns)
        if len(turns) == 1 or reserve_exact:
            out = self._record_calls(turns, quotes, reserve_exact)
            # with reserve_exact: the record_turn answers (a refused reservation shows as a denial)
            for i, reply in enumerate(out[1::2] if reserve_exact else out):
                replies.decide(i, reply)
        elif isinstance(self.redis, redis.RedisCluster):
            self._record_batched(turns, quotes, replies.decide_group)
        else:
            self._record_streamed(turns, quotes, replies.decide_group)
        for shard in sorted(replies.kicks):
            self.kicker(shard)
        decision_counter.add(self.redis, replies.decisions)  # /metrics: every process's decisions
        return replies.result()

    def _record_calls(
        self, turns: Sequence[TurnIn], quotes: Sequence[TurnPrice | PriceSheet], reserve_exact: bool
    ) -> list:
        """One turn, or a ``reserve_exact`` batch: every call built first (:meth:`_call_specs`), then
        sent (one EVALSHA, or pipelined with each turn's reservation before it).  Returns one reply
        or exception per call."""
        calls = [
            (getattr(self, name), keys, args) for name, keys, args in self._call_specs(turns, quotes, reserve_exact)
        ]
        if len(calls) == 1:  # one round trip: EVALSHA (redis-py loads the script on NOSCRIPT)
            script, keys, args = calls[0]
            try:
                return [script(keys=keys, args=args)]
            except redis.ResponseError as exc:
                return [exc]
        return self._evalsha_pipelined(calls)

    def _record_streamed(
        self,
        turns: Sequence[TurnIn],
        quotes: Sequence[TurnPrice | PriceSheet],
        decide_group: Callable[[list[int], object], None],
    ) -> None:
        """A batch on one Redis server: ``record_turns.lua`` per :data:`TURNS_PER_CALL` turns of a shard.
        Each EVALSHA is built (prices, keys, payloads) and packed only when the one before it has
        been sent, and each reply is turned into decisions while Redis runs the next, so Redis and
        this process work at the same time.  Calls ``decide_group(indexes, reply)`` for every call,
        in the order of the calls (in order within a shard); ``reply`` is the call's reply or
        exception (:meth:`TurnReplies.decide_group`)."""
        batches = self._shard_batches(turns)
        groups = iter(batches)
        send_packed_retrying(
            self.redis,
            self._packed_groups(turns, quotes, batches, self._record_many.sha),
            [self._record_many],
            lambda reply: decide_group(next(groups), reply),
        )

    def _record_batched(
        self,
        turns: Sequence[TurnIn],
        quotes: Sequence[TurnPrice | PriceSheet],
        decide_group: Callable[[list[int], object], None],
    ) -> None:
        """A batch on Redis Cluster: ``record_turns.lua`` per :data:`TURNS_PER_CALL` turns of a shard,
        every call built first, then pipelined per node.  Calls ``decide_group(indexes, reply)``
        for every call."""
        batches = self._shard_batches(turns)
        many = [(self._record_many, *self._group_call(turns, quotes, batch)) for batch in batches]
        for batch, reply in zip(batches, self._evalsha_pipelined(many)):
            decide_group(batch, reply)

    def _evalsha_pipelined(self, calls: Sequence[tuple[redis.commands.core.Script, list[str], Sequence[Any]]]) -> list:
        """EVALSHA every call in one non-transactional pipeline (on Redis Cluster: one pipeline per
        node holding the calls' slots, in call order within each node).  Returns one reply or
        exception per call, in order."""
        if not isinstance(self.redis, redis.RedisCluster):
            return pipeline_evalsha(self.redis, calls)
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        for i, (_script, keys, _args) in enumerate(calls):
            node = self.redis.get_node_from_key(keys[0])  # every key of a call shares one hash tag
            groups.setdefault(node.name, (self.redis.get_redis_connection(node), []))[1].append(i)
        replies: list = [None] * len(calls)
        for client, indexes in groups.values():
            for i, reply in zip(indexes, pipeline_evalsha(client, [calls[i] for i in indexes])):
                if isinstance(reply, NOT_RUN_ON_CLUSTER):
                    # the slot moved or is moving (resharding), or the cluster is down for a moment:
                    # the script did not run; send it alone through the cluster client, which follows
                    # the redirection, refreshes its slot map and retries TRYAGAIN / CLUSTERDOWN
                    script, keys, args = calls[i]
                    try:
                        reply = script(keys=keys, args=args)
                    except redis.exceptions.ResponseError as exc:
                        reply = exc
                replies[i] = reply
        return replies

    # reservations -----------------------------------------------------------------------------
    def reserve(
        self, wallet_id: str, amount_nanos: int | None = None, **options: Unpack[ReserveOptions]
    ) -> ReservationPublic:
        """Reserve funds of a wallet before an LLM call, for ``ttl_s`` seconds: ``amount_nanos`` (an
        integer >= 1 nano-USD), or, given ``model`` (+ ``provider``, + the ``service_tier`` the call
        asks for), ``prompt_tokens`` and ``max_tokens`` instead, the call's worst case priced by the
        gate at that tier (:meth:`quote_reservation`).

        Granted only if ``balance − held − amount >= 0`` (a production, limited wallet); then a turn
        recorded with ``reservation_id`` settles it, :meth:`release` gives it back, and
        :meth:`expire_reservations` releases it after ``ttl_s``.  The same ``reservation_id`` twice is one
        reservation.  Returns a :class:`~models.wallet.ReservationPublic` (frozen).  Raises ValueError naming the argument (amount_nanos
        below 1 or not an integer, both or neither of amount_nanos and model, prompt_tokens,
        max_tokens, ttl_s, service_tier (malformed, or given without model); ``InvalidInput`` for a
        ``wallet_id`` or ``reservation_id`` that ``models.validation`` refuses),
        worker.pricing.prices.PricingError (unknown model; a tier without a price: ``service_tier: …``),
        UnknownWallet.
        """
        keys, args = self._reserve_call(wallet_id, amount_nanos, **options)
        try:
            reply = self._reserve(keys=keys, args=args)
        except redis.ResponseError as exc:
            raise self._translate(exc, wallet_id) from exc
        return self._reservation(reply, wallet_id, args[2])

    def release(self, wallet_id: str, reservation_id: str) -> int:
        """Give back a reservation not settled by a turn; returns the nanos released (0 if already gone)."""
        return int(self._release(keys=self._reservation_keys(wallet_id, reservation_id), args=[reservation_id]))

    def expire_reservations(self, *, now_ms: int | None = None, limit: int = 1000) -> int:
        """Release every reservation whose time is up (the beat job), at most ``limit`` per shard;
        returns how many gave nanos back.  ``now_ms``: Unix ms, default now."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        released = 0
        for shard in range(self.settings.outbox_shards):
            tag = shard_tag(shard)
            expiries = reservation_expiry_key(tag)
            # decode_responses=True: members and fields come back as str
            due = cast(list[str], self.redis.zrangebyscore(expiries, "-inf", now_ms, start=0, num=limit))
            for reservation_id in due:
                wallet_id = cast(str | None, self.redis.hget(reservation_key(tag, reservation_id), "wallet"))
                if wallet_id is None:  # settled meanwhile: only the index entry is left
                    self.redis.zrem(expiries, reservation_id)
                    continue
                released += self.release(wallet_id, reservation_id) > 0
        return released

    def _check_wallets(self, turns: Sequence[TurnIn], quotes: Sequence[TurnPrice | PriceSheet] = ()) -> None:
        """Before a batch is sent: every wallet is in the gate and belongs to its turns' app, and
        (given ``quotes``) no turn costs more than its wallet's ``max_turn_nanos``, so a batch with a
        bad turn is refused whole, nothing applied (the script checks the cost again, atomically).
        Raises UnknownWallet, WrongEnterprise, TurnLimitExceeded (``cost_nanos``, with ``index``)."""
        ids = wallets_of(turns)
        rows: list = []
        if not isinstance(self.redis, redis.RedisCluster):
            try:  # one write of the HMGETs packed once per wallet (redis-py's pipeline packs each in Python)
                send_packed(self.redis, [(b"".join(map(self._check_command, ids)), len(ids))], None, rows.append)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                rows = []  # read-only: sent again below, through redis-py and its retries
            if any(isinstance(row, Exception) for row in rows):
                raise next(row for row in rows if isinstance(row, Exception))
        if len(rows) != len(ids):
            pipe = self.redis.pipeline(transaction=False)
            for wallet_id in ids:
                pipe.hmget(self.wallet_key(wallet_id), *WALLET_CHECK_FIELDS)
            rows = pipe.execute()
        self._check_rows(turns, quotes, dict(zip(ids, rows)))

    def _check_command(self, wallet_id: str) -> bytes:
        """The pre-check's ``HMGET <wallet key> mode enterprise max_turn_nanos`` of ``wallet_id``,
        packed (hiredis) once per wallet and remembered (:data:`_SHARD_CACHE_MAX` wallets)."""
        packed = self._check_commands.get(wallet_id)
        if packed is None:
            command: tuple[Any, ...] = ("HMGET", self.wallet_key(wallet_id), *WALLET_CHECK_FIELDS)
            packed = pack_command(command)  # hiredis' stub types a one-element tuple
            if len(self._check_commands) >= _SHARD_CACHE_MAX:
                self._check_commands.clear()
            self._check_commands[wallet_id] = packed
        return packed
