"""The drain's staged rows straight from outbox entries: no ``usage_event`` dict per row.

:func:`stage_entries` turns a batch of outbox entries into the tuples
:func:`worker.ledger.turns.persist_staged` COPies (the values in ``_STAGE_COLUMNS`` order), in one
pass per entry: the payload's JSON list and the ``g`` decision are read into the tuple directly, the
types checked by one look at the payload's element types, the figures' domains and the texts'
rules by a few C-level calls per group, all table-driven per column (:data:`_INT4_AT`,
:data:`_INT8_AT`, :data:`_TEXT_AT` and their limits, computed once from ``usage_event``'s columns).

The fast path only ever *accepts*: an entry it cannot prove well-formed (another payload version, an
older entry layout, a value of another type or outside its column's domain, a text breaking its
rules, anything unusual) goes through the general path, :func:`worker.gate.outbox.parse_entry` then
``_stage_values`` (with :func:`worker.ledger.turns.check_domains`), which gives the same tuple or
raises the same error naming the field or column as before.  So every check of the general path
still runs for every entry, and the staged tuples equal the general path's
(``tests/unit/test_staging.py`` compares both on generated and hostile entries).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson

from worker.gate.outbox import _CODES, _EPOCH, _LLM_DEFAULTS, DECISION_TEXT, _rates_of, _split, parse_entry
from worker.ledger import turns

_MICRO = timedelta(microseconds=1)

#: a version-5 payload's element types the fast path takes (16 elements: an LLM turn's meter fields
#: left out; 21: with them, the service tier a text or null); anything else takes the general path
_KINDS = frozenset(
    {
        (int, *(str,) * 8, int, int, int, int, str, int, int),
        (int, *(str,) * 8, int, int, int, int, str, int, int, str, int, int, int, str),
        (int, *(str,) * 8, int, int, int, int, str, int, int, str, int, int, int, type(None)),
    }
)


_LENGTH = dict(turns._TEXT_LENGTHS)
_INT4_MAX = turns._INT4_MAX
_INT8_MAX = turns._INT8_MAX

#: the order :func:`_fast` writes a staged tuple in: checked against ``_STAGE_COLUMNS`` below, so a
#: change of the staging table's columns fails at import, not in a batch
_FAST_ORDER = (
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "duration_ms",
    "input_nanos_per_mtok",
    "cached_input_nanos_per_mtok",
    "output_nanos_per_mtok",
    "cost_nanos",
    "occurred_at",
    "billed_nanos",
    "billable",
    "creator_share_nanos",
    "platform_fee_nanos",
    "trial_tokens",
    "quantity",
    "cache_write_tokens",
    "cache_write_nanos_per_mtok",
    "cache_write_1h_tokens",
    "cache_write_1h_nanos_per_mtok",
    "debt_nanos",
    "balance_after_nanos",
    "turn_id",
    "outbox_id",
    "wallet_id",
    "enterprise_id",
    "chat_id",
    "workflow",
    "agent",
    "model",
    "provider",
    "action",
    "mode",
    "level",
    "billing_target",
    "meter",
    "service_tier",
)
#: the integer columns :func:`_fast` bounds by ``x >> 31`` and the bigint ones by ``x >> 63`` (one
#: OR of each group: zero iff every member is in ``0..2^31-1`` / ``0..2^63-1``); the one signed
#: column, ``balance_after_nanos``, on its own; the closed-set texts (action, mode, level) come from
#: fixed tables that fit their columns
_FAST_INT4 = frozenset(
    {
        "prompt_tokens",
        "completion_tokens",
        "cached_prompt_tokens",
        "duration_ms",
        "trial_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
    }
)
_FAST_INT8 = frozenset(
    {
        "input_nanos_per_mtok",
        "cached_input_nanos_per_mtok",
        "output_nanos_per_mtok",
        "cost_nanos",
        "billed_nanos",
        "creator_share_nanos",
        "platform_fee_nanos",
        "quantity",
        "cache_write_nanos_per_mtok",
        "cache_write_1h_nanos_per_mtok",
        "debt_nanos",
    }
)
if (
    _FAST_ORDER != turns._STAGE_COLUMNS
    or _FAST_INT4 != set(turns._UNSIGNED_INT4)
    or _FAST_INT8 != set(turns._UNSIGNED_INT8)
    or turns._ID_TEXTS != ("turn_id", "wallet_id", "enterprise_id", "chat_id", "workflow", "agent")
    or turns._LABEL_TEXTS != ("model", "provider", "meter")
    or _INT4_MAX != 2**31 - 1
    or _INT8_MAX != 2**63 - 1
    or any(
        len(a) > _LENGTH["action"] or len(m) > _LENGTH["mode"] or len(lv) > _LENGTH["level"]
        for a, m, lv, _b in _CODES.values()
    )
    or _LENGTH["billing_target"] < max(_LENGTH["enterprise_id"], len("platform"))
):  # pragma: no cover - a schema change this module was not updated for
    raise RuntimeError("worker.ledger.staging does not match the staging table's columns")

#: the varchar lengths of the payload's texts (the outbox id's too)
(
    _L_TURN,
    _L_OUTBOX,
    _L_WALLET,
    _L_ENTERPRISE,
    _L_CHAT,
    _L_WORKFLOW,
    _L_AGENT,
    _L_MODEL,
    _L_PROVIDER,
    _L_METER,
    _L_TIER,
) = (
    _LENGTH[c]
    for c in (
        "turn_id",
        "outbox_id",
        "wallet_id",
        "enterprise_id",
        "chat_id",
        "workflow",
        "agent",
        "model",
        "provider",
        "meter",
        "service_tier",
    )
)
_BIGINT_MIN = -_INT8_MAX - 1


def window_micros(window: tuple[datetime, datetime]) -> tuple[int, int]:
    """A drain window (:func:`worker.ledger.turns.drain_window`, aware datetimes) as integer
    microseconds since the Unix epoch (exact), the form of a payload's ``ts``."""
    return (window[0] - _EPOCH) // _MICRO, (window[1] - _EPOCH) // _MICRO


def _fast(fields: dict[str, str], outbox_id: str, lo: int, hi: int) -> tuple[Any, ...] | None:
    """The staged tuple (:data:`_FAST_ORDER`) of a version-5 entry with a ``g`` decision that every
    check of the general path passes, else None (the general path then decides, and names the
    field or column).  ``lo``..``hi``: the window of ``occurred_at`` (:func:`window_micros`).  Any
    exception it raises is a malformed entry's: the caller hands that entry to the general path."""
    g = fields.get("g")
    if g is None:
        return None
    p = orjson.loads(fields["t"])
    # the types: one look at the element types (an integer past 64 bits is read as a float: not here)
    if type(p) is not list or tuple(map(type, p)) not in _KINDS or p[0] != 5:
        return None
    ts = p[15]
    if not lo <= ts <= hi:
        return None
    if len(p) == 16:
        meter, quantity, cache_write, cache_write_1h, service_tier = _LLM_DEFAULTS
    else:
        meter, quantity, cache_write, cache_write_1h, service_tier = p[16:21]
        if service_tier is not None and len(service_tier) > _L_TIER:
            return None
    input_rate, cached_rate, output_rate, cache_write_rate, cache_write_1h_rate = _rates_of(p[13])
    billed_text, bal, codes, share_bps, trial_text, debt_text = g.split("|")
    decision = _CODES.get(codes)
    if decision is None or not DECISION_TEXT.fullmatch(g):
        return None
    action, mode, level, billable = decision
    billed = int(billed_text)
    trial_tokens = int(trial_text)
    debt = int(debt_text)
    balance = int(bal) if bal else None
    _v, turn_id, wallet_id, enterprise_id, chat_id, workflow, agent, model, provider = p[:9]
    prompt, completion, cached, duration_ms = p[9:13]
    cost = p[14]
    target, share = _split(level, enterprise_id, billed, int(share_bps))
    fee = billed - share
    # the domains (check_domains'): unsigned integer / bigint figures, the one signed bigint
    if (prompt | completion | cached | duration_ms | trial_tokens | cache_write | cache_write_1h) >> 31 or (
        input_rate
        | cached_rate
        | output_rate
        | cost
        | billed
        | share
        | fee
        | quantity
        | cache_write_rate
        | cache_write_1h_rate
        | debt
    ) >> 63:
        return None
    if balance is not None and not _BIGINT_MIN <= balance <= _INT8_MAX:
        return None
    # the texts: each fits its varchar; ids printable ASCII, no space, not empty; labels printable ASCII
    if (
        len(turn_id) > _L_TURN
        or len(outbox_id) > _L_OUTBOX
        or len(wallet_id) > _L_WALLET
        or len(enterprise_id) > _L_ENTERPRISE
        or len(chat_id) > _L_CHAT
        or len(workflow) > _L_WORKFLOW
        or len(agent) > _L_AGENT
        or len(model) > _L_MODEL
        or len(provider) > _L_PROVIDER
        or len(meter) > _L_METER
    ):
        return None
    ids = turn_id + wallet_id + enterprise_id + chat_id + workflow + agent
    if not (
        ids.isascii()
        and ids.isprintable()
        and " " not in ids
        and turn_id
        and wallet_id
        and enterprise_id
        and chat_id
        and workflow
        and agent
    ):
        return None
    labels = model + provider + meter
    if not (labels.isascii() and labels.isprintable()):
        return None
    return (
        prompt,
        completion,
        cached,
        duration_ms,
        input_rate,
        cached_rate,
        output_rate,
        cost,
        _EPOCH + timedelta(microseconds=ts),
        billed,
        billable,
        share,
        fee,
        trial_tokens,
        quantity,
        cache_write,
        cache_write_rate,
        cache_write_1h,
        cache_write_1h_rate,
        debt,
        balance,
        turn_id,
        outbox_id,
        wallet_id,
        enterprise_id,
        chat_id,
        workflow,
        agent,
        model,
        provider,
        action,
        mode,
        level,
        target,
        meter,
        service_tier,
    )


def stage_entries(
    shard: int, entries: list[tuple[str, dict[str, str]]], window: tuple[datetime, datetime]
) -> list[tuple[Any, ...]]:
    """The staged tuples of a batch of one shard's outbox entries ``(stream id, fields)``, in order,
    for :func:`worker.ledger.turns.persist_staged` (outbox id ``<shard>:<stream id>``, occurred_at
    checked against ``window``, :func:`worker.ledger.turns.drain_window`).

    The same tuples as :func:`worker.ledger.turns.stage_rows` of :func:`worker.gate.outbox.parse_entry`'s
    rows: a later copy of a turn already in the batch (same turn_id in its scope) is, as there, only
    parsed, not checked (it is not staged: it counts as a duplicate or a second acceptance).  Raises
    :class:`worker.gate.outbox.BadEntry` for an entry that cannot be parsed, TypeError or ValueError
    naming the column for one holding a value no gate writes (the drain then persists the batch one
    entry at a time and dead-letters that entry)."""
    lo, hi = window_micros(window)
    prefix = f"{shard}:"
    out: list[tuple[Any, ...]] = []
    seen: set[tuple[str, str, str]] = set()
    add = seen.add
    for entry_id, fields in entries:
        outbox_id = prefix + entry_id
        try:
            values = _fast(fields, outbox_id, lo, hi)
        except Exception:  # the general path names it
            values = None
        if values is not None:
            key = turns._staged_key(values)
        else:
            row = parse_entry(fields, outbox_id)
            key = (row["enterprise_id"], row["wallet_id"], row["turn_id"])
            values = turns._usage_values(row) if key in seen else turns._stage_values(row, window)
        add(key)
        out.append(values)
    return out
