"""A billing session over one chat, for both payer levels, synchronous and asyncio.

Lifecycle::

    session = BillingSession.start(transport, level="app_usage", payer_id="u-42",
                                   enterprise_id="app-7", workflow="support", chat_id="chat-1")
    while session.can_continue():              # the wallet can pay (or was credited since a pause)
        response = llm(...)
        try:
            session.record_response(response, agent="planner", duration_ms=830)
        except WalletExhausted as exc:         # the turn is recorded; the chat must stop here
            await session.wait_for_resume(timeout=600)   # returns once the wallet is credited
            # (sync code, even inside a running event loop as AG2's hooks: session.wait_for_resume_sync(600))
    summary = session.finalize()               # totals per agent, compared with the workflow's averages

Everything money is integer nano-USD; tokens are integers; durations are milliseconds (turns) or
seconds (timeouts).  The session's totals are counted from the gate's decisions (turns it accepted,
at the cost it charged), so they are the same on every transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict, Unpack

from pydantic import ValidationError

import worker
from models.turn import Decision, TurnIn
from worker import InvalidInput, check_text
from worker.client.adapters import USAGE_FIELDS, TokenUsage, adapter_error, turn_fields, usage_from_response
from worker.client.transports import TollgateClientError

log = logging.getLogger(__name__)

Level = Literal["platform", "app_usage"]
#: the events that may resume a chat (``worker.events`` wire form, pub/sub ``tollgate:events:<app>``)
RESUME_EVENTS = ("chat.resumable", "wallet.credited")


class _SessionOptionsRequired(TypedDict):
    """The required keys of :class:`SessionOptions`."""

    level: Level
    payer_id: str
    enterprise_id: str


class SessionOptions(_SessionOptionsRequired, total=False):
    """The keyword arguments of :meth:`BillingSession.start` and :meth:`AsyncBillingSession.start`.

    ``level``: ``'platform'`` (the app creator pays; ``payer_id`` = mozaiks_user_id) or
    ``'app_usage'`` (the app's end user pays; ``payer_id`` = platform_user_id); ``enterprise_id``: the
    app; ``workflow``: the workflow name (default ``'default'``); ``chat_id``: default a new random id;
    ``cost_threshold_nanos``: stop the workflow once the session cost reaches this (nano-USD), with a
    warning logged at ``warn_at_bps`` basis points of it (default 8,000: 80 %); ``events_url``: Redis
    URL of the app's events (default: the transport's).
    """

    workflow: str
    chat_id: str | None
    cost_threshold_nanos: int | None
    warn_at_bps: int
    events_url: str | None


class _LlmTurnArgsRequired(TypedDict):
    """The required keys of :class:`LlmTurnArgs`."""

    agent: str
    model: str
    prompt_tokens: int
    completion_tokens: int


class LlmTurnArgs(_LlmTurnArgsRequired, total=False):
    """The keyword arguments of ``record_turn``: one LLM turn from raw counts (tokens; ``duration_ms``
    the response time, ms, default 0; ``cached_prompt_tokens`` default 0); ``turn_id`` (idempotency
    key) defaults to a new unique id, ``occurred_at`` to now."""

    cached_prompt_tokens: int
    duration_ms: int
    provider: str | None
    turn_id: str | None
    occurred_at: datetime | None


class _ResponseTurnArgsRequired(TypedDict):
    """The required keys of :class:`ResponseTurnArgs`."""

    agent: str


class ResponseTurnArgs(_ResponseTurnArgsRequired, total=False):
    """The keyword arguments of ``record_response`` beside the response: the ``agent``, its response
    time ``duration_ms`` (ms, default 0), the ``provider`` (default: the adapter's), ``turn_id``
    (default ``<chat_id>:<response id>``) and ``occurred_at`` (default now)."""

    duration_ms: int
    provider: str | None
    turn_id: str | None
    occurred_at: datetime | None


class _MeterArgsRequired(TypedDict):
    """The required keys of :class:`MeterArgs`."""

    quantity: int


class MeterArgs(_MeterArgsRequired, total=False):
    """The keyword arguments of ``record_meter`` beside the meter: ``quantity`` (an integer > 0),
    ``agent`` (default ``'system'``), ``turn_id`` (default a new unique id), ``occurred_at`` (default now)."""

    agent: str
    turn_id: str | None
    occurred_at: datetime | None


class WalletExhausted(TollgateClientError):
    """The wallet cannot pay for more turns: the chat must stop until it is credited.

    Attributes:
        wallet_id / chat_id: where.
        balance_nanos: the wallet's balance after the last turn, nano-USD (≤ 0), or None if unknown.
        decision: the gate's :class:`~models.turn.Decision` of the turn that hit the floor, if a
            turn did (``decision.accepted``: the turn itself was charged and recorded).
    """

    def __init__(
        self, wallet_id: str, balance_nanos: int | None, chat_id: str, decision: Decision | None = None
    ) -> None:
        super().__init__(
            f"wallet {wallet_id!r} is exhausted (balance {balance_nanos} nanos): chat {chat_id!r} "
            "is paused until the wallet is credited"
        )
        self.wallet_id = wallet_id
        self.balance_nanos = balance_nanos
        self.chat_id = chat_id
        self.decision = decision


class CostThresholdExceeded(TollgateClientError):
    """The session's cost crossed its threshold: the workflow stops (the turn that crossed it is
    recorded).  ``cost_nanos`` and ``threshold_nanos`` are nano-USD."""

    def __init__(self, chat_id: str, cost_nanos: int, threshold_nanos: int) -> None:
        super().__init__(f"chat {chat_id!r} cost {cost_nanos} nanos, crossing its threshold of {threshold_nanos} nanos")
        self.chat_id = chat_id
        self.cost_nanos = cost_nanos
        self.threshold_nanos = threshold_nanos


class SessionEnded(TollgateClientError):
    """The session was finalized: it records nothing more."""


@dataclass(frozen=True, slots=True)
class Resumed:
    """Why :meth:`BillingSession.wait_for_resume` returned: ``cause`` is ``'balance'`` (the balance
    was already positive when checked after subscribing), ``'chat.resumable'`` or
    ``'wallet.credited'``; ``balance_nanos`` the wallet's balance then (None: unlimited); ``event``
    the event's wire form, if one."""

    cause: str
    balance_nanos: int | None
    event: dict[str, Any] | None = None


@dataclass
class Totals:
    """Running totals of accepted turns: counts and tokens (integers), ``duration_ms`` (ms),
    ``cost_nanos`` (at the prices charged) and ``billed_nanos`` (debited), nano-USD."""

    turns: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    duration_ms: int = 0
    cost_nanos: int = 0
    billed_nanos: int = 0

    def add(self, turn: TurnIn, decision: Decision) -> None:
        self.turns += 1
        self.prompt_tokens += turn.prompt_tokens
        self.completion_tokens += turn.completion_tokens
        self.cached_prompt_tokens += turn.cached_prompt_tokens
        self.duration_ms += turn.duration_ms
        self.cost_nanos += decision.cost_nanos
        self.billed_nanos += decision.billed_nanos

    def as_dict(self) -> dict[str, int]:
        return {
            "turns": self.turns,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "duration_ms": self.duration_ms,
            "cost_nanos": self.cost_nanos,
            "billed_nanos": self.billed_nanos,
        }


@dataclass(frozen=True)
class SessionSummary:
    """What :meth:`BillingSession.finalize` returns.

    ``totals`` and ``agents`` (per agent) are LLM turns (:meth:`Totals.as_dict`: turns, tokens,
    ``duration_ms``, ``cost_nanos``, ``billed_nanos``); ``meters`` are non-LLM records per meter
    (``records``, ``quantity``, ``cost_nanos``, ``billed_nanos``); ``cost_nanos``/``billed_nanos``
    add both, nano-USD.  ``workflow_averages`` is :func:`worker.chats.rollups.workflow_averages` of the
    session's workflow and month (None when the transport cannot read it) and
    ``comparison`` this session against it::

        {"total_sessions": int, "cost_nanos": int, "avg_cost_nanos": int, "cost_delta_nanos": int,
         "cost_vs_avg_bps": int | None,          # 10_000 = exactly average; None when the average is 0
         "total_tokens": int, "avg_total_tokens": float, "turns": int, "avg_turns": float}
    """

    chat_id: str
    wallet_id: str
    enterprise_id: str
    workflow: str
    level: str
    period: str
    totals: dict[str, int]
    agents: dict[str, dict[str, int]]
    meters: dict[str, dict[str, int]]
    cost_nanos: int
    billed_nanos: int
    pauses: int
    workflow_averages: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (every field)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def compare(totals: dict[str, int], cost_nanos: int, averages: dict[str, Any]) -> dict[str, Any]:
    """This session's cost, tokens and turns beside the workflow's per-session averages (see
    :class:`SessionSummary`); integer nanos and basis points, no float near money."""
    sessions = int(averages["total_sessions"])
    avg_cost = int(averages["avg_cost_nanos"])
    avg_turns = round(int(averages["total_turns"]) / sessions, 2) if sessions else 0.0  # a count, not money
    return {
        "total_sessions": sessions,
        "cost_nanos": cost_nanos,
        "avg_cost_nanos": avg_cost,
        "cost_delta_nanos": cost_nanos - avg_cost,
        "cost_vs_avg_bps": cost_nanos * 10_000 // avg_cost if avg_cost else None,
        "total_tokens": totals["total_tokens"],
        "avg_total_tokens": averages["avg_total_tokens"],
        "turns": totals["turns"],
        "avg_turns": avg_turns,
    }


def _wallet_id_for(level: str, enterprise_id: str, payer_id: str) -> str:
    return worker.wallet_id_for(level, enterprise_id=enterprise_id, payer_id=payer_id)


class _Core:
    """State and bookkeeping shared by the synchronous and asyncio sessions (no I/O here)."""

    def __init__(
        self,
        transport,
        *,
        level: Level,
        payer_id: str,
        enterprise_id: str,
        workflow: str = "default",
        chat_id: str | None = None,
        cost_threshold_nanos: int | None = None,
        warn_at_bps: int = 8_000,
        events_url: str | None = None,
    ) -> None:
        if level not in ("platform", "app_usage"):
            raise InvalidInput("level", f"{level!r} is not 'platform' or 'app_usage'")
        if cost_threshold_nanos is not None and (
            not isinstance(cost_threshold_nanos, int)
            or isinstance(cost_threshold_nanos, bool)
            or cost_threshold_nanos <= 0
        ):
            raise InvalidInput(
                "cost_threshold_nanos", f"must be a positive integer of nano-USD, got {cost_threshold_nanos!r}"
            )
        if not isinstance(warn_at_bps, int) or not 0 < warn_at_bps <= 10_000:
            raise InvalidInput("warn_at_bps", f"must be an integer in 1..10000, got {warn_at_bps!r}")
        # the edge rules of models.validation (InvalidInput, a ValueError naming the argument),
        # before anything is sent: a chat's ids reach PostgreSQL through its start record
        for name, value in (("payer_id", payer_id), ("enterprise_id", enterprise_id), ("workflow", workflow)):
            check_text(value, name)
        if chat_id is not None:
            check_text(chat_id, "chat_id")
        self.transport = transport
        self.level = level
        self.payer_id = payer_id
        self.enterprise_id = enterprise_id
        self.workflow = workflow
        self.chat_id = chat_id or f"chat_{uuid.uuid4().hex}"
        self.wallet_id = _wallet_id_for(level, enterprise_id, payer_id)
        self.cost_threshold_nanos = cost_threshold_nanos
        self.warn_at_bps = warn_at_bps
        self.events_url = events_url or getattr(transport, "events_url", None)
        self.started_at = datetime.now(UTC)
        #: 'connected' (turns flow), 'paused' (stopped: see ``pause_reason``) or 'ended'
        self.state = "connected"
        self.pause_reason: str | None = None
        self.balance_nanos: int | None = None
        self.last_decision: Decision | None = None
        self.totals = Totals()
        self.agents: dict[str, Totals] = {}
        self.meters: dict[str, dict[str, int]] = {}
        self.cost_nanos = 0
        self.billed_nanos = 0
        self.pauses = 0
        self.warned = False
        self._seq = 0

    # turns ------------------------------------------------------------------------------------
    def _turn_id(self, turn_id: str | None, hint: str | None = None) -> str:
        if turn_id:
            return turn_id
        self._seq += 1
        return f"{self.chat_id}:{hint}" if hint else f"{self.chat_id}:{self._seq}:{uuid.uuid4().hex[:12]}"

    def _check_open(self) -> None:
        if self.state == "ended":
            raise SessionEnded(f"session of chat {self.chat_id!r} was finalized")

    def _turn(
        self, *, turn_id: str | None = None, hint: str | None = None, occurred_at: datetime | None = None, **fields: Any
    ) -> TurnIn:
        """A turn of this chat (its wallet, app and workflow) from ``fields``; ``turn_id`` as given,
        else ``<chat_id>:<hint>``, else a new unique id; ``occurred_at`` as given, else now."""
        if occurred_at is not None:
            fields["occurred_at"] = occurred_at
        return TurnIn(
            wallet_id=self.wallet_id,
            enterprise_id=self.enterprise_id,
            chat_id=self.chat_id,
            workflow=self.workflow,
            turn_id=self._turn_id(turn_id, hint),
            **fields,
        )

    def _llm_turn(self, *, agent: str, **turn: Any) -> TurnIn:
        """The turn of :meth:`BillingSession.record_turn` (:class:`LlmTurnArgs`)."""
        self._check_open()
        return self._turn(agent=agent, **turn)

    def _response_turn(self, response: Any, *, agent: str, provider: str | None = None, **turn: Any) -> TurnIn:
        """The turn of :meth:`BillingSession.record_response` (:class:`ResponseTurnArgs`)."""
        self._check_open()
        usage: TokenUsage = (
            response if isinstance(response, TokenUsage) else usage_from_response(response, provider=provider)
        )
        if usage.unbilled_cache_write_tokens:
            log.warning(
                "turn of chat %s: %d cache-write tokens billed at the input price (TurnIn has no "
                "cache_write_tokens field yet)",
                self.chat_id,
                usage.unbilled_cache_write_tokens,
            )
        hint = usage.response_id if turn.get("turn_id") is None else None
        try:
            return self._turn(hint=hint, agent=agent, **turn, **turn_fields(usage))
        except ValidationError as exc:  # what the response said, refused by the turn: the adapter's error
            error = adapter_error(exc, USAGE_FIELDS | {"turn_id"} if hint else USAGE_FIELDS)
            if error is None:
                raise
            raise error from exc

    def _meter_turn(self, meter: str, *, quantity: int, agent: str = "system", **turn: Any) -> TurnIn:
        """The record of :meth:`BillingSession.record_meter` (:class:`MeterArgs`)."""
        self._check_open()
        return self._turn(agent=agent, meter=meter, quantity=quantity, **turn)

    def _after(self, turn: TurnIn, decision: Decision) -> tuple[Exception | None, bool]:
        """Count an answer; returns (the error to raise, whether a pause must be recorded)."""
        self.last_decision = decision
        self.balance_nanos = decision.balance_nanos
        if decision.accepted and not decision.duplicate:
            self.cost_nanos += decision.cost_nanos
            self.billed_nanos += decision.billed_nanos
            if turn.meter == "llm":
                self.totals.add(turn, decision)
                self.agents.setdefault(turn.agent, Totals()).add(turn, decision)
            else:
                m = self.meters.setdefault(
                    turn.meter, {"records": 0, "quantity": 0, "cost_nanos": 0, "billed_nanos": 0}
                )
                m["records"] += 1
                m["quantity"] += turn.quantity
                m["cost_nanos"] += decision.cost_nanos
                m["billed_nanos"] += decision.billed_nanos
        if decision.action == "pause":
            newly = self.state != "paused"
            self.state, self.pause_reason = "paused", "wallet_exhausted"
            self.pauses += newly
            return WalletExhausted(self.wallet_id, decision.balance_nanos, self.chat_id, decision), newly
        threshold = self.cost_threshold_nanos
        if threshold is not None:
            if self.cost_nanos >= threshold:
                newly = self.state != "paused"
                self.state, self.pause_reason = "paused", "cost_threshold"
                self.pauses += newly
                log.warning(
                    "chat %s of workflow %s: cost %d nanos crossed its threshold %d nanos; stopping",
                    self.chat_id,
                    self.workflow,
                    self.cost_nanos,
                    threshold,
                )
                return CostThresholdExceeded(self.chat_id, self.cost_nanos, threshold), newly
            if not self.warned and self.cost_nanos * 10_000 >= threshold * self.warn_at_bps:
                self.warned = True
                log.warning(
                    "chat %s of workflow %s: cost %d nanos reached %d bps of its threshold %d nanos",
                    self.chat_id,
                    self.workflow,
                    self.cost_nanos,
                    self.warn_at_bps,
                    threshold,
                )
        return None, False

    def _pause_kwargs(self) -> dict[str, Any]:
        b = self.balance_nanos
        return {
            "enterprise_id": self.enterprise_id,
            "chat_id": self.chat_id,
            "wallet_id": self.wallet_id,
            "reason": self.pause_reason,
            "needed_nanos": (1 - b) if b is not None and b <= 0 else None,
        }

    def _on_gate(self, ok: bool) -> tuple[bool, bool]:
        """(may go on, was resumed now) given whether the gate would accept the wallet's next turn."""
        if self.state == "ended":
            return False, False
        if self.state == "paused" and self.pause_reason != "wallet_exhausted":
            return False, False  # a cost threshold is lifted only by resume()
        if ok and self.state == "paused":
            self.state, self.pause_reason = "connected", None
            return True, True
        return ok, False

    def _resume_kwargs(self) -> dict[str, Any]:
        return {"enterprise_id": self.enterprise_id, "chat_id": self.chat_id}

    def _start_kwargs(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ("enterprise_id", "chat_id", "wallet_id", "workflow")}

    def _finish_kwargs(self) -> dict[str, Any]:
        """The transport's ``finish`` arguments; the session is ended from here on."""
        self.state = "ended"
        return {
            "enterprise_id": self.enterprise_id,
            "chat_id": self.chat_id,
            "workflow": self.workflow,
            "period": self.started_at.strftime("%Y-%m"),
        }

    def resume(self) -> None:
        """Lift a pause the session imposed itself (a cost threshold), e.g. after raising the threshold
        (``cost_threshold_nanos``); a wallet pause lifts itself once the wallet is credited."""
        self._check_open()
        if self.state == "paused" and self.pause_reason == "cost_threshold":
            self.state, self.pause_reason = "connected", None

    def _summary(self, averages: dict[str, Any] | None) -> SessionSummary:
        totals = self.totals.as_dict()
        return SessionSummary(
            chat_id=self.chat_id,
            wallet_id=self.wallet_id,
            enterprise_id=self.enterprise_id,
            workflow=self.workflow,
            level=self.level,
            period=self.started_at.strftime("%Y-%m"),
            totals=totals,
            agents={a: t.as_dict() for a, t in sorted(self.agents.items())},
            meters={m: dict(v) for m, v in sorted(self.meters.items())},
            cost_nanos=self.cost_nanos,
            billed_nanos=self.billed_nanos,
            pauses=self.pauses,
            workflow_averages=averages,
            comparison=compare(totals, self.cost_nanos, averages) if averages else None,
        )

    # resume -----------------------------------------------------------------------------------
    def _matches(self, event: Any) -> bool:
        """Whether ``event`` (a decoded pub/sub message) tells this chat it may go on: a well-formed
        (:func:`_event_parts`) ``chat.resumable`` of its chat or wallet, or ``wallet.credited`` of
        its wallet with a balance above zero (or none given)."""
        parts = _event_parts(event)
        if parts is None:
            return False
        kind, data, balance = parts
        if kind == "chat.resumable":
            return data.get("chat_id") == self.chat_id or data.get("wallet_id") == self.wallet_id
        if kind == "wallet.credited":
            return data.get("wallet_id") == self.wallet_id and (balance is None or balance > 0)
        return False

    async def _wait_for_resume(self, timeout: float, can_continue, balance, resumed) -> Resumed:
        if self.events_url is None:
            raise TollgateClientError("events_url: the session needs a Redis URL to hear resume events")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidInput("timeout", f"must be a positive number of seconds, got {timeout!r}")
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.events_url, decode_responses=True)
        pubsub = client.pubsub()
        try:
            async with asyncio.timeout(timeout):
                await pubsub.subscribe(worker.events_channel(self.enterprise_id))
                while True:  # wait for the server's confirmation: from here no event is missed
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg["type"] == "subscribe":
                        break
                ok, _ = self._on_gate(await can_continue())
                if ok:
                    current = await balance()
                    self.balance_nanos = current
                    await resumed()
                    return Resumed("balance", current)
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg["type"] != "message":
                        continue
                    try:
                        event = json.loads(msg["data"])
                    except (TypeError, ValueError):
                        continue
                    if self._matches(event):
                        value = event["data"].get("balance_nanos")  # an int or None (_event_parts)
                        current = value if value is not None else await balance()
                        self.balance_nanos = current
                        if self.state == "paused" and self.pause_reason == "wallet_exhausted":
                            self.state, self.pause_reason = "connected", None
                        await resumed()
                        return Resumed(event["type"], current, event)
        except TimeoutError:
            raise TimeoutError(
                f"wallet {self.wallet_id!r} of chat {self.chat_id!r} was not credited within {timeout} s"
            ) from None
        finally:
            await pubsub.aclose()
            await client.aclose()


def _event_parts(event: Any) -> tuple[Any, dict[str, Any], int | None] | None:
    """``(type, data, balance_nanos)`` of an event as tollgate publishes it (``{"type": …, "data":
    {…, "balance_nanos": int | absent}}``), or None for anything else on the channel: a ``data``
    that is not an object, a balance that is not an integer (a float, a bool, a string, digits of
    another script).  Any publisher on the Redis channel can send those; before, one raised
    AttributeError or ValueError out of ``wait_for_resume``, or resumed on ``1.5`` read as 1 nano."""
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    balance = data.get("balance_nanos")
    if balance is not None and type(balance) is not int:
        return None
    return event.get("type"), data, balance


class BillingSession(_Core):
    """A billing session over one chat (synchronous).  Create it with :meth:`start`.

    Attributes: ``wallet_id`` (from ``worker.billing.payers.wallet_id_for``), ``chat_id``, ``state``
    (``connected`` | ``paused`` | ``ended``), ``pause_reason``, ``balance_nanos`` (last known,
    nano-USD), ``last_decision``.
    """

    @classmethod
    def start(cls, transport: Any, **options: Unpack[SessionOptions]) -> "BillingSession":
        """Start a session: resolve the payer's wallet and check it exists.

        ``transport``: :class:`~worker.client.transports.InProcessTransport` or ``HttpTransport``;
        ``options``: :class:`SessionOptions` (``level``, ``payer_id`` and ``enterprise_id`` required).
        Raises: ValueError naming the argument; WalletNotFound.
        """
        session = cls(transport, **options)
        transport.start(**session._start_kwargs())
        session.balance_nanos = transport.balance(session.wallet_id)
        return session

    def can_continue(self) -> bool:
        """True if the next turn may run: the session is not ended nor stopped by its cost threshold,
        and the gate would accept the wallet's next turn (in-process: balance minus reservations > 0, not
        blocked, or a free mode; HTTP: balance > 0 or unlimited).  One round trip; a paused chat
        whose wallet was credited since is connected again."""
        if self.state == "ended":
            return False
        ok, resumed = self._on_gate(self.transport.can_continue(self.wallet_id))
        if resumed:
            self.transport.resumed(**self._resume_kwargs())
        return ok

    def record(self, turn: TurnIn) -> Decision:
        """Send a built turn.  Returns its Decision.  Raises WalletExhausted (action ``pause``; the
        decision is on the exception), CostThresholdExceeded, UnknownModel, WalletNotFound."""
        decision = self.transport.record(turn)
        error, newly = self._after(turn, decision)
        if newly:
            self.transport.pause(**self._pause_kwargs())
        if error is not None:
            raise error
        return decision

    def record_turn(self, **turn: Unpack[LlmTurnArgs]) -> Decision:
        """Record one LLM turn from raw counts (:class:`LlmTurnArgs`).  Raises pydantic.ValidationError
        naming the field, and as :meth:`record`."""
        return self.record(self._llm_turn(**turn))

    def record_response(self, response: Any, **turn: Unpack[ResponseTurnArgs]) -> Decision:
        """Record one LLM turn from an SDK response (:mod:`worker.client.adapters`) or a
        :class:`TokenUsage` (:class:`ResponseTurnArgs`; ``turn_id`` defaults to ``<chat_id>:<response
        id>``, so recording the same response twice is one turn).  Raises AdapterError, and as
        :meth:`record`."""
        return self.record(self._response_turn(response, **turn))

    def record_meter(self, meter: str, **record: Unpack[MeterArgs]) -> Decision:
        """Record a non-LLM meter through the same gate and ledger: ``emails`` (emails sent),
        ``storage_gb_month`` (MB-months), ``function_calls`` (invocations); :class:`MeterArgs`.
        Raises pydantic.ValidationError naming ``meter``/``quantity``, and as :meth:`record`."""
        return self.record(self._meter_turn(meter, **record))

    def ensure_can_continue(self) -> None:
        """Raise WalletExhausted (or CostThresholdExceeded) unless :meth:`can_continue`."""
        if not self.can_continue():
            if self.pause_reason == "cost_threshold":
                raise CostThresholdExceeded(self.chat_id, self.cost_nanos, self.cost_threshold_nanos or 0)
            raise WalletExhausted(self.wallet_id, self.balance_nanos, self.chat_id, self.last_decision)

    async def wait_for_resume(self, timeout: float) -> Resumed:
        """Wait until the wallet is credited: subscribes to ``tollgate:events:<enterprise_id>``, checks
        the balance once after subscribing (a credit just before is not missed), then returns on a
        ``chat.resumable`` event of this chat or wallet, or a ``wallet.credited`` event of this wallet
        leaving a positive balance.  The session is connected again.  ``timeout`` in seconds.
        Raises TimeoutError."""
        t, w = self.transport, self.wallet_id
        return await self._wait_for_resume(
            timeout,
            lambda: asyncio.to_thread(t.can_continue, w),
            lambda: asyncio.to_thread(t.balance, w),
            lambda: asyncio.to_thread(lambda: t.resumed(**self._resume_kwargs())),
        )

    def wait_for_resume_sync(self, timeout: float) -> Resumed:
        """:meth:`wait_for_resume` for synchronous code: blocks the calling thread until the wallet is
        credited (same events, same balance check, same result) or ``timeout`` seconds pass.  Usable
        from any thread, including one that is running an event loop (AG2 calls its sync hooks from
        inside one, where ``asyncio.run`` is refused): the wait runs on a loop of its own in a helper
        thread.  Raises TimeoutError; ValueError (timeout); TollgateClientError (no events_url)."""
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            raise InvalidInput("timeout", f"must be a positive number of seconds, got {timeout!r}")
        outcome: dict[str, Any] = {}

        def wait() -> None:
            try:
                outcome["resumed"] = asyncio.run(self.wait_for_resume(timeout))
            except BaseException as exc:  # handed to the caller's thread below
                outcome["error"] = exc

        helper = threading.Thread(target=wait, name=f"tollgate-resume-{self.chat_id}", daemon=True)
        helper.start()
        helper.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["resumed"]

    def finalize(self) -> SessionSummary:
        """End the session (and the chat, in-process: completed, its rollups refreshed) and return
        its :class:`SessionSummary`, compared with the workflow's averages when the transport can
        read them.  Idempotent in effect: a second call returns the same totals."""
        return self._summary(self.transport.finish(**self._finish_kwargs()))


class AsyncBillingSession(_Core):
    """:class:`BillingSession` for asyncio, on ``AsyncInProcessTransport`` or ``AsyncHttpTransport``:
    the same methods, awaitable, with the same results and errors."""

    @classmethod
    async def start(cls, transport: Any, **options: Unpack[SessionOptions]) -> "AsyncBillingSession":
        """See :meth:`BillingSession.start`."""
        session = cls(transport, **options)
        await transport.start(**session._start_kwargs())
        session.balance_nanos = await transport.balance(session.wallet_id)
        return session

    async def can_continue(self) -> bool:
        """See :meth:`BillingSession.can_continue`."""
        if self.state == "ended":
            return False
        ok, resumed = self._on_gate(await self.transport.can_continue(self.wallet_id))
        if resumed:
            await self.transport.resumed(**self._resume_kwargs())
        return ok

    async def record(self, turn: TurnIn) -> Decision:
        """See :meth:`BillingSession.record`."""
        decision = await self.transport.record(turn)
        error, newly = self._after(turn, decision)
        if newly:
            await self.transport.pause(**self._pause_kwargs())
        if error is not None:
            raise error
        return decision

    async def record_turn(self, **turn: Unpack[LlmTurnArgs]) -> Decision:
        """See :meth:`BillingSession.record_turn`."""
        return await self.record(self._llm_turn(**turn))

    async def record_response(self, response: Any, **turn: Unpack[ResponseTurnArgs]) -> Decision:
        """See :meth:`BillingSession.record_response`."""
        return await self.record(self._response_turn(response, **turn))

    async def record_meter(self, meter: str, **record: Unpack[MeterArgs]) -> Decision:
        """See :meth:`BillingSession.record_meter`."""
        return await self.record(self._meter_turn(meter, **record))

    async def wait_for_resume(self, timeout: float) -> Resumed:
        """See :meth:`BillingSession.wait_for_resume`."""
        t, w = self.transport, self.wallet_id
        return await self._wait_for_resume(
            timeout, lambda: t.can_continue(w), lambda: t.balance(w), lambda: t.resumed(**self._resume_kwargs())
        )

    async def finalize(self) -> SessionSummary:
        """See :meth:`BillingSession.finalize`."""
        return self._summary(await self.transport.finish(**self._finish_kwargs()))
