"""The outbox entry codec and the drain kick.

:func:`turn_payload` writes an accepted turn's payload (version :data:`PAYLOAD_VERSION`);
:func:`parse_entry` reads an outbox entry (payload versions 1 to 5 and the fields the scripts add)
back into a ``usage_event`` row; :func:`entry_figures` reads only the nanos and trial tokens the
gate took.  :func:`celery_kicker` asks a Celery worker to drain a shard.

An entry has two fields (since payload version 5): ``t``, the payload (a JSON list written here),
and ``g``, the gate's decision written by the script (``record_turn.lua``'s header):
``billed|balance|<action><mode><level><billable>|share_bps|trial_tokens|debt``.  Entries queued
by older gates carry ``t`` (versions 1 to 4) and one field per figure (``b``, ``a``, ``m``,
``bal``, ``lv``, ``sb``, ``tt``, ``bl``, ``d``); both read into the same row.  A version-5 entry
costs less Redis memory than the layout before (``benchmarks.bench_pipeline``,
``outbox_bytes_per_entry``): one field for the decision instead of nine, one-letter codes instead of
'continue' / 'production' / 'app_usage', the five rates in one short string, and the turn's
meter fields left out when they are an LLM turn's defaults.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Callable

import orjson

from models.turn import TurnIn
from worker.celery_app import DRAIN_OUTBOX_TASK, app
from worker.errors import InputError
from worker.pricing.prices import TurnPrice

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BadEntry(InputError, ValueError):
    """An outbox entry that cannot be parsed (unknown payload version, missing field)."""


#: version of the outbox payload (first element of the JSON list); parse_entry reads 1 to 5
#: (2 appends the meter and its quantity, 3 the cache-write tokens and their rate, 4 the 1-hour
#: cache-write tokens, their rate and the service tier; 5 is the compact form of :func:`turn_payload`,
#: with the decision in the entry's ``g`` field)
PAYLOAD_VERSION = 5

#: the one-letter codes of the ``g`` field: action, mode, level (record_turn.lua's tables)
ACTIONS = {"c": "continue", "p": "pause"}
MODES = {"P": "production", "D": "development", "T": "trial", "K": "track_only"}
LEVELS = {"a": "app_usage", "p": "platform"}

#: an LLM turn's meter fields (meter, quantity, cache-write tokens, 1-hour cache-write tokens,
#: service tier) when it reports none of them: left out of a version-5 payload
_LLM_DEFAULTS = ("llm", 0, 0, 0, None)


def _short_int(v: int) -> str:
    """An integer >= 0 as text, its trailing zeros (two or more) as an exponent: 2500000000 → '25e8'."""
    text = str(v)
    digits = text.rstrip("0")
    zeros = len(text) - len(digits)
    return f"{digits}e{zeros}" if zeros >= 2 and digits else text


def _long_int(text: str) -> int:
    """:func:`_short_int`'s text back to the integer (exact: no float).  Raises ValueError."""
    digits, _, zeros = text.partition("e")
    # ASCII: str.isdigit and int also take other scripts' digits ('١' read as 1)
    if not text.isascii() or not digits.isdigit() or not (zeros.isdigit() or zeros == "") or len(zeros) > 2:
        raise ValueError(f"not a rate: {text!r}")
    return int(digits) * 10 ** int(zeros or 0)


#: rates strings already written (five integers → ``'25e8,125e7,1e10,3125e6,5e9'``): a handful of
#: price-list entries repeat in every batch, so each turn's payload looks its string up instead of
#: formatting five integers; bounded, so odd prices cannot grow it without end
_RATES_TEXT: dict[tuple[int, int, int, int, int], str] = {}
_RATES_TEXT_MAX = 4096


def _rates_text(rates: tuple[int, int, int, int, int]) -> str:
    """The five rates (nano-USD per million tokens) as a version-5 payload writes them, comma-separated
    :func:`_short_int` s."""
    text = _RATES_TEXT.get(rates)
    if text is None:
        text = ",".join(map(_short_int, rates))
        if len(_RATES_TEXT) < _RATES_TEXT_MAX:
            _RATES_TEXT[rates] = text
    return text


def turn_payload(turn: TurnIn, price: TurnPrice) -> str:
    """The outbox form of an accepted turn (version 5): compact JSON, read back by :func:`parse_entry`::

        [5, turn_id, wallet_id, enterprise_id, chat_id, workflow, agent, model, provider,
         prompt_tokens, completion_tokens, cached_prompt_tokens, duration_ms, rates, cost_nanos, ts
         (, meter, quantity, cache_write_tokens, cache_write_1h_tokens, service_tier)]

    ``rates`` is the five prices in nano-USD per million tokens (input, cached input, output, cache
    write, 1-hour cache write), comma-separated, trailing zeros written as an exponent
    (``'25e8,125e7,1e10,3125e6,5e9'``); ``ts`` is ``occurred_at`` in integer microseconds since the
    Unix epoch (UTC); the meter fields are left out when they are ``('llm', 0, 0, 0, None)``.
    """
    occurred = turn.occurred_at
    ts = (occurred.toordinal() - 719163) * 86_400_000_000 + (
        (occurred.hour * 3600 + occurred.minute * 60 + occurred.second) * 1_000_000 + occurred.microsecond
    )
    rates = _rates_text(
        (
            price.input_nanos_per_mtok,
            price.cached_input_nanos_per_mtok,
            price.output_nanos_per_mtok,
            price.cache_write_nanos_per_mtok,
            price.cache_write_1h_nanos_per_mtok,
        )
    )
    payload = [
        PAYLOAD_VERSION,
        turn.turn_id,
        turn.wallet_id,
        turn.enterprise_id,
        turn.chat_id,
        turn.workflow,
        turn.agent,
        turn.model,
        price.provider,
        turn.prompt_tokens,
        turn.completion_tokens,
        turn.cached_prompt_tokens,
        turn.duration_ms,
        rates,
        price.cost_nanos,
        ts,
    ]
    meter = (turn.meter, turn.quantity, turn.cache_write_tokens, turn.cache_write_1h_tokens, turn.service_tier)
    if meter != _LLM_DEFAULTS:
        payload += meter
    return orjson.dumps(payload).decode()


def _v5_as_v4(payload: list) -> list:
    """A version-5 payload in the version-4 layout (parse_entry's one unpacking).  Raises BadEntry,
    ValueError, TypeError."""
    if len(payload) == 16:
        payload = [*payload, *_LLM_DEFAULTS]
    if len(payload) != 21 or not isinstance(payload[13], str):
        raise BadEntry(f"malformed version-5 payload of {len(payload)} elements")
    rates = list(map(_long_int, payload[13].split(",")))
    if len(rates) != 5:
        raise BadEntry(f"malformed rates {payload[13]!r}")
    meter, quantity, cache_write, cache_write_1h, service_tier = payload[16:21]
    return [
        4,
        *payload[1:13],  # turn_id … duration_ms
        rates[0],
        rates[1],
        rates[2],
        payload[14],  # cost_nanos
        payload[15],  # ts
        meter,
        quantity,
        cache_write,
        rates[3],
        cache_write_1h,
        rates[4],
        service_tier,
    ]


def _exact_int(text: str) -> int:
    """A decimal integer as a gate writes it (``-12``, ``0``, ``3250000``) → int, only in that one
    form: ``int`` alone also reads ``' 5'``, ``'1_000'``, ``'+5'``, ``'007'`` and other scripts'
    digits (``'١'``).  Raises ValueError."""
    value = int(text)
    if str(value) != text:
        raise ValueError(f"not an integer as a gate writes one: {text!r}")
    return value


def _split(level: str, enterprise_id: str, billed: int, share_bps: int) -> tuple[str, int]:
    """``(billing_target, creator_share_nanos)`` of a turn billed ``billed`` nano-USD at payer
    ``level``: level 1 (``platform``) bills the app creator and all of it is the platform's; level 2
    bills the app's end user and the creator's share is ``share_bps`` basis points of it, in whole
    nanos rounded down."""
    if level == "platform":
        return "platform", 0
    return enterprise_id, billed * share_bps // 10_000


def _timestamp(ts: object) -> datetime:
    """A payload's ``ts`` (integer microseconds since the Unix epoch, UTC) → aware datetime.  Raises
    BadEntry for anything but an int (a float, which ``timedelta`` would take and round, a bool),
    OverflowError out of datetime's range."""
    if type(ts) is not int:
        raise BadEntry(f"occurred_at: {type(ts).__name__} {ts!r}, expected integer microseconds")
    return _EPOCH + timedelta(microseconds=ts)


def _decision(fields: dict[str, str]) -> dict[str, str]:
    """The gate's figures of an entry under the older entries' field names (``b``, ``a``, ``m``,
    ``bal``, ``lv``, ``sb``, ``tt``, ``bl``, ``d``): from its ``g`` field, else its own fields.
    Raises BadEntry, ValueError, KeyError."""
    g = fields.get("g")
    if g is None:
        return fields
    billed, bal, codes, share_bps, trial_tokens, debt = g.split("|")
    if len(codes) != 4 or codes[3] not in ("0", "1"):
        raise BadEntry(f"malformed gate decision {g!r}")
    return {
        "b": billed,
        "bal": bal,
        "a": ACTIONS[codes[0]],
        "m": MODES[codes[1]],
        "lv": LEVELS[codes[2]],
        "bl": codes[3],
        "sb": share_bps,
        "tt": trial_tokens,
        "d": debt,
    }


#: the four one-letter codes of a ``g`` field → (action, mode, level, billable), every valid combination
_CODES = {
    a + m + lv + bl: (action, mode, level, bl == "1")
    for a, action in ACTIONS.items()
    for m, mode in MODES.items()
    for lv, level in LEVELS.items()
    for bl in "01"
}

#: A version-5 entry's decision ``g`` as a gate writes it: ``billed|balance|codes|share_bps|
#: trial_tokens|debt``, each number a decimal integer in its one canonical form (ASCII digits, no
#: sign but ``-``, no leading zero, no ``_`` or space: ``int`` alone also reads ``'+5'``, ``' 5'``,
#: ``'1_000'``, ``'007'`` and other scripts' digits), the balance possibly empty
DECISION_TEXT = re.compile(r"(?:0|-?[1-9][0-9]*)\|(?:0|-?[1-9][0-9]*)?\|[^|]*(?:\|(?:0|-?[1-9][0-9]*)){3}")

#: rates strings already read (``'25e8,125e7,1e10,3125e6,5e9'`` → five integers): a handful of
#: price-list entries repeat in every batch; bounded, so odd strings cannot grow it without end
_RATES: dict[str, tuple[int, int, int, int, int]] = {}
_RATES_MAX = 4096


def _rates_of(text: str) -> tuple[int, int, int, int, int]:
    """The five rates of a version-5 payload (nano-USD per million tokens).  Raises BadEntry,
    ValueError, TypeError, AttributeError."""
    rates = _RATES.get(text)
    if rates is None:
        if not isinstance(text, str):
            raise BadEntry(f"malformed rates {text!r}")
        parts = tuple(map(_long_int, text.split(",")))
        if len(parts) != 5:
            raise BadEntry(f"malformed rates {text!r}")
        rates = parts
        if len(_RATES) < _RATES_MAX:
            _RATES[text] = rates
    return rates


def _loads(text: str) -> Any:
    """A payload's JSON: orjson, exact for the integers a payload holds (orjson reads an integer
    past 64 bits as a float: such a payload is read again with :mod:`json`, integers exact)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # e.g. NaN, which json reads (and the row then refuses)
        return json.loads(text)
    if isinstance(value, list) and float in map(type, value):
        return json.loads(text)
    return value


def _row_v5(payload: list, g: str, outbox_id: str) -> dict[str, Any]:
    """The usage row of a version-5 entry (payload and ``g`` decision): :func:`parse_entry`'s fast
    path, the same row as its general path (``_v5_as_v4`` then :func:`_decision`).  Raises BadEntry,
    KeyError, ValueError, TypeError, IndexError, OverflowError."""
    n = len(payload)
    if n == 16:
        meter, quantity, cache_write, cache_write_1h, service_tier = _LLM_DEFAULTS
    elif n == 21:
        meter, quantity, cache_write, cache_write_1h, service_tier = payload[16:21]
    else:
        raise BadEntry(f"malformed version-5 payload of {n} elements")
    input_rate, cached_rate, output_rate, cache_write_rate, cache_write_1h_rate = _rates_of(payload[13])
    billed_text, bal, codes, share_bps, trial_tokens, debt = g.split("|")
    decision = _CODES.get(codes)
    if decision is None or not DECISION_TEXT.fullmatch(g):  # int() alone reads '+5', '1_000', '١'
        raise BadEntry(f"malformed gate decision {g!r}")
    action, mode, level, billable = decision
    billed = int(billed_text)
    enterprise_id = payload[3]
    target, creator_share = _split(level, enterprise_id, billed, int(share_bps))
    return {
        "turn_id": payload[1],
        "outbox_id": outbox_id,
        "wallet_id": payload[2],
        "enterprise_id": enterprise_id,
        "chat_id": payload[4],
        "workflow": payload[5],
        "agent": payload[6],
        "model": payload[7],
        "provider": payload[8],
        "prompt_tokens": payload[9],
        "completion_tokens": payload[10],
        "cached_prompt_tokens": payload[11],
        "duration_ms": payload[12],
        "input_nanos_per_mtok": input_rate,
        "cached_input_nanos_per_mtok": cached_rate,
        "output_nanos_per_mtok": output_rate,
        "cost_nanos": payload[14],
        "occurred_at": _timestamp(payload[15]),
        "billed_nanos": billed,
        "action": action,
        "mode": mode,
        "balance_after_nanos": int(bal) if bal else None,
        "level": level,
        "billing_target": target,
        "billable": billable,
        "creator_share_nanos": creator_share,
        "platform_fee_nanos": billed - creator_share,
        "trial_tokens": int(trial_tokens),
        "meter": meter,
        "quantity": quantity,
        "cache_write_tokens": cache_write,
        "cache_write_nanos_per_mtok": cache_write_rate,
        "cache_write_1h_tokens": cache_write_1h,
        "cache_write_1h_nanos_per_mtok": cache_write_1h_rate,
        "service_tier": service_tier,
        "debt_nanos": int(debt),
    }


def entry_figures(fields: dict[str, str]) -> tuple[int, int]:
    """``(billed_nanos, trial_tokens)`` the gate took for an outbox entry (either layout).
    Raises BadEntry, KeyError or ValueError (a field missing or not an integer)."""
    figures = _decision(fields)
    return _exact_int(figures["b"]), _exact_int(figures.get("tt", "0"))


def parse_entry(fields: dict[str, str], outbox_id: str = "") -> dict[str, Any]:
    """An outbox entry (fields ``t`` payload and ``g`` decision; or, queued by an older gate, ``t``
    and ``b`` billed, ``a`` action, ``m`` mode, ``bal``, …) → a ``usage_event`` row (keys of :data:`worker.ledger.turns.USAGE_COLUMNS`).  ``outbox_id`` is
    ``<shard>:<stream id>``.  Raises :class:`BadEntry`."""
    try:
        payload = _loads(fields["t"])
        if payload[0] == 5:
            g = fields.get("g")
            if g is not None:  # what every gate since version 5 writes
                return _row_v5(payload, g, outbox_id)
            payload = _v5_as_v4(payload)
        elif payload[0] == 1:  # queued before meters existed: an LLM turn
            payload = [*payload, "llm", 0, 0, 0, 0, 0, None]
        elif payload[0] == 2:  # queued before cache writes were priced
            payload = [*payload, 0, 0, 0, 0, None]
        elif payload[0] == 3:  # queued before 1-hour cache writes and service tiers were priced
            payload = [*payload, 0, 0, None]
        elif payload[0] != 4:
            raise BadEntry(f"outbox payload version {payload[0]!r}, expected 1..{PAYLOAD_VERSION}")
        (
            _version,
            turn_id,
            wallet_id,
            enterprise_id,
            chat_id,
            workflow,
            agent,
            model,
            provider,
            prompt,
            completion,
            cached,
            duration_ms,
            input_rate,
            cached_rate,
            output_rate,
            cost,
            ts,
            meter,
            quantity,
            cache_write,
            cache_write_rate,
            cache_write_1h,
            cache_write_1h_rate,
            service_tier,
        ) = payload
        fields = _decision(fields)
        bal = fields.get("bal", "")
        billed = _exact_int(fields["b"])
        level = fields.get("lv", "app_usage")
        target, creator_share = _split(level, enterprise_id, billed, _exact_int(fields.get("sb", "0")))
        return {
            "turn_id": turn_id,
            "outbox_id": outbox_id,
            "wallet_id": wallet_id,
            "enterprise_id": enterprise_id,
            "chat_id": chat_id,
            "workflow": workflow,
            "agent": agent,
            "model": model,
            "provider": provider,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cached_prompt_tokens": cached,
            "duration_ms": duration_ms,
            "input_nanos_per_mtok": input_rate,
            "cached_input_nanos_per_mtok": cached_rate,
            "output_nanos_per_mtok": output_rate,
            "cost_nanos": cost,
            "occurred_at": _timestamp(ts),
            "billed_nanos": billed,
            "action": fields["a"],
            "mode": fields["m"],
            "balance_after_nanos": _exact_int(bal) if bal else None,
            "level": level,
            "billing_target": target,
            "billable": fields.get("bl", "1" if billed else "0") == "1",
            "creator_share_nanos": creator_share,
            "platform_fee_nanos": billed - creator_share,
            "trial_tokens": _exact_int(fields.get("tt", "0")),
            "meter": meter,
            "quantity": quantity,
            "cache_write_tokens": cache_write,
            "cache_write_nanos_per_mtok": cache_write_rate,
            "cache_write_1h_tokens": cache_write_1h,
            "cache_write_1h_nanos_per_mtok": cache_write_1h_rate,
            "service_tier": service_tier,
            "debt_nanos": _exact_int(fields.get("d", "0")),  # entries queued before debts carry none
        }
    except BadEntry:
        raise
    except (KeyError, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise BadEntry(f"malformed outbox entry: {exc!r}") from exc


Kicker = Callable[[int], None]


def celery_kicker(shard: int) -> None:
    """Ask a Celery worker to drain one outbox shard (``tollgate.usage.drain_outbox``)."""
    try:
        app.send_task(DRAIN_OUTBOX_TASK, kwargs={"shard": shard}, ignore_result=True)
    except Exception:  # the turn is already recorded; beat's backstop drains it
        log.warning("could not send a drain kick for shard %s; beat will drain it", shard, exc_info=True)
