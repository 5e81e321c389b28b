"""Staged turns as ``usage_row`` rows (migration 0019): their price tuple as a ``usage_price`` id,
their closed-set columns as one-byte codes, what a row implies left out (migration 0021: zeros and
the implied platform fee as NULL, the implied billing target as ``''``; ``models.usage_codes``).

``usage_event`` is a view over ``usage_row`` that shows every column by name; the drain writes the
table directly, from its staging table, with the SQL of :func:`insert_usage_rows`.
"""

from __future__ import annotations

from models.turn import PRICE_COLUMNS
from models.usage_codes import CODES, IMPLIED, encode_sql, store_sql

#: ``usage_row``'s columns, in its order (``price_id``, the codes and the implied forms computed,
#: the rest copied)
ROW_COLUMNS = (
    "id",
    "occurred_at",
    "cost_nanos",
    "billed_nanos",
    "balance_after_nanos",
    "creator_share_nanos",
    "platform_fee_nanos",
    "debt_nanos",
    "quantity",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "duration_ms",
    "trial_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "price_id",
    "mode",
    "action",
    "level",
    "meter",
    "billable",
    "turn_id",
    "wallet_id",
    "enterprise_id",
    "chat_id",
    "workflow",
    "agent",
    "billing_target",
)


def _price_match(src: str) -> str:
    """``usage_price p`` matching the price tuple of ``src``'s row (a NULL tier is stored as ``''``)."""
    return " AND ".join(
        f"p.{c} = coalesce({src}.{c}, '')" if c == "service_tier" else f"p.{c} = {src}.{c}" for c in PRICE_COLUMNS
    )


def insert_usage_rows(stage: str, where: str = "fresh") -> str:
    """Two SQL statements (``;``-separated, no parameters) that write the rows of the table ``stage``
    matching ``where`` (its columns: ``ord``, the rows' order, and every ``usage_event`` column but ``id``)
    into ``usage_row``:

    1. the price tuples among them that ``usage_price`` lacks, inserted in a fixed order
       ``ON CONFLICT DO NOTHING`` (two transactions adding the same tuple: the second waits for
       the first and then adds nothing; the fixed order keeps two adding several from deadlocking);
    2. the rows, each with its tuple's ``usage_price.id`` (a new statement: under READ COMMITTED it
       sees the tuples another transaction committed meanwhile), its codes (a value without a
       code fails the NOT NULL of its column) and the columns a row implies as
       :func:`~models.usage_codes.store_sql` stores them.
    """
    tuple_cols = ", ".join("coalesce(s.service_tier, '')" if c == "service_tier" else f"s.{c}" for c in PRICE_COLUMNS)
    values = []
    for c in ROW_COLUMNS:
        if c == "id":
            continue
        if c == "price_id":
            values.append("p.id")
        elif c in CODES:
            values.append(encode_sql(c, f"s.{c}"))
        elif c in IMPLIED:
            values.append(store_sql(c, "s"))
        else:
            values.append(f"s.{c}")
    cols = ", ".join(c for c in ROW_COLUMNS if c != "id")
    return (
        f"INSERT INTO usage_price ({', '.join(PRICE_COLUMNS)}) SELECT DISTINCT {tuple_cols} FROM {stage} s "
        f"WHERE s.{where} AND NOT EXISTS (SELECT 1 FROM usage_price p WHERE {_price_match('s')}) "
        "ORDER BY 1, 2, 3, 4, 5, 6, 7, 8 ON CONFLICT DO NOTHING;\n"
        f"INSERT INTO usage_row ({cols}) SELECT {', '.join(values)} FROM {stage} s "
        f"JOIN usage_price p ON {_price_match('s')} WHERE s.{where} ORDER BY s.ord"
    )
