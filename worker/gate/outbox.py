"""The outbox entry codec and the drain kick.

:func:`turn_payload` writes an accepted turn's payload (version :data:`PAYLOAD_VERSION`);
:func:`parse_entry` reads an outbox entry (payload versions 1 to 4 and the fields the scripts add)
back into a ``usage_event`` row.  :func:`celery_kicker` asks a Celery worker to drain a shard.
"""

from __future__ import annotations

import json
import logging
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


#: version of the outbox payload (first element of the JSON list); parse_entry reads 1 to 4
#: (2 appends the meter and its quantity, 3 the cache-write tokens and their rate, 4 the 1-hour
#: cache-write tokens, their rate and the service tier)
PAYLOAD_VERSION = 4


def turn_payload(turn: TurnIn, price: TurnPrice) -> str:
    """The outbox form of an accepted turn: compact JSON, read back by :func:`worker.ledger.drain.parse_entry`.

    ``ts`` is ``occurred_at`` in integer microseconds since the Unix epoch (UTC).
    """
    occurred = turn.occurred_at
    ts = (occurred.toordinal() - 719163) * 86_400_000_000 + (
        (occurred.hour * 3600 + occurred.minute * 60 + occurred.second) * 1_000_000 + occurred.microsecond
    )
    return orjson.dumps(
        [
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
            price.input_nanos_per_mtok,
            price.cached_input_nanos_per_mtok,
            price.output_nanos_per_mtok,
            price.cost_nanos,
            ts,
            turn.meter,
            turn.quantity,
            turn.cache_write_tokens,
            price.cache_write_nanos_per_mtok,
            turn.cache_write_1h_tokens,
            price.cache_write_1h_nanos_per_mtok,
            turn.service_tier,
        ],
    ).decode()


def parse_entry(fields: dict[str, str], outbox_id: str = "") -> dict[str, Any]:
    """An outbox entry (fields ``t`` payload, ``b`` billed, ``a`` action, ``m`` mode, ``bal``) → a
    ``usage_event`` row (keys of :data:`worker.ledger.turns.USAGE_COLUMNS`).  ``outbox_id`` is
    ``<shard>:<stream id>``.  Raises :class:`BadEntry`."""
    try:
        payload = json.loads(fields["t"])
        if payload[0] == 1:  # queued before meters existed: an LLM turn
            payload = [*payload, "llm", 0, 0, 0, 0, 0, None]
        elif payload[0] == 2:  # queued before cache writes were priced
            payload = [*payload, 0, 0, 0, 0, None]
        elif payload[0] == 3:  # queued before 1-hour cache writes and service tiers were priced
            payload = [*payload, 0, 0, None]
        elif payload[0] != PAYLOAD_VERSION:
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
        bal = fields.get("bal", "")
        billed = int(fields["b"])
        level = fields.get("lv", "app_usage")
        if level == "platform":  # level 1: the platform bills the app creator; all of it is the platform's
            target, creator_share = "platform", 0
        else:  # level 2: the app bills its end user; the creator's share in whole nanos, rounded down
            target, creator_share = enterprise_id, billed * int(fields.get("sb", "0")) // 10_000
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
            "occurred_at": _EPOCH + timedelta(microseconds=ts),
            "billed_nanos": billed,
            "action": fields["a"],
            "mode": fields["m"],
            "balance_after_nanos": int(bal) if bal else None,
            "level": level,
            "billing_target": target,
            "billable": fields.get("bl", "1" if billed else "0") == "1",
            "creator_share_nanos": creator_share,
            "platform_fee_nanos": billed - creator_share,
            "trial_tokens": int(fields.get("tt", "0")),
            "meter": meter,
            "quantity": quantity,
            "cache_write_tokens": cache_write,
            "cache_write_nanos_per_mtok": cache_write_rate,
            "cache_write_1h_tokens": cache_write_1h,
            "cache_write_1h_nanos_per_mtok": cache_write_1h_rate,
            "service_tier": service_tier,
            "debt_nanos": int(fields.get("d", "0")),  # entries queued before debts carry none
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
