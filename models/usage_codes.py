"""The one-byte codes of ``usage_row``'s closed-set columns (migration 0019) and the SQL that
writes and reads them.

``usage_event`` (a view since migration 0019) shows ``mode``, ``action``, ``level`` and ``meter`` as
their values (``'production'``, ``'continue'`` …); the table under it, ``usage_row``, stores each
as a PostgreSQL ``"char"`` (one byte instead of a 4–17-byte text).  :data:`CODES` is the mapping:
the migration's view and trigger hold a frozen copy of it, and ``tests/integration/test_usage_row.py``
checks that both agree with this module (a member added to an enum needs a migration that
replaces the view, the trigger function and this table together).

Since migration 0021 ``usage_row`` also leaves out what a row implies (:data:`IMPLIED`): its numbers
that are 0 (:data:`ZERO_AS_NULL`) and a ``platform_fee_nanos`` of ``billed_nanos −
creator_share_nanos`` (what the gate always writes, ``worker.gate.outbox``) are stored as NULL, a
``billing_target`` its payer level implies (``worker.gate.outbox._split``: ``'platform'`` at level
platform, else the app's ``enterprise_id``) as ``''``.  A NULL in a row costs its null bitmap once
(4 bytes for 29 columns: the 23-byte header rounds up to 32 instead of 24) and saves 4 or 8 bytes
each, a ``''`` 7–200; a drained turn's fee is always implied, so a drained row never grows.
:func:`store_sql` writes a column so, :func:`read_sql` reads it back (the ``usage_event`` view);
rows stored before 0021 hold the plain values, which read back the same.
"""

from __future__ import annotations

from models.enums import BillingMode, DecisionAction, Meter, PayerLevel

#: column → {value: code}; codes are one ASCII letter, unique per column
CODES: dict[str, dict[str, str]] = {
    "mode": {
        BillingMode.production.value: "p",
        BillingMode.development.value: "d",
        BillingMode.trial.value: "t",
        BillingMode.track_only.value: "o",
    },
    "action": {DecisionAction.continue_.value: "c", DecisionAction.pause.value: "p"},
    "level": {PayerLevel.platform.value: "p", PayerLevel.app_usage.value: "a"},
    "meter": {
        Meter.llm.value: "l",
        Meter.emails.value: "e",
        Meter.storage_gb_month.value: "s",
        Meter.function_calls.value: "f",
    },
}


def encode_sql(column: str, expr: str) -> str:
    """SQL mapping the text ``expr`` (a value of ``column``) to its ``"char"`` code; NULL for a value
    without one, which the NOT NULL column then refuses (naming the column)."""
    cases = " ".join(f"WHEN '{value}' THEN '{code}'" for value, code in CODES[column].items())
    return f'CAST(CASE {expr} {cases} END AS "char")'


#: ``usage_row``'s number columns stored as NULL when 0 (the view's are never NULL)
ZERO_AS_NULL = (
    "cost_nanos",
    "billed_nanos",
    "creator_share_nanos",
    "debt_nanos",
    "quantity",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "duration_ms",
    "trial_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
)
#: every column ``usage_row`` stores in its implied form (:func:`store_sql`, :func:`read_sql`)
IMPLIED = (*ZERO_AS_NULL, "platform_fee_nanos", "billing_target")


def store_sql(column: str, src: str) -> str:
    """SQL of the value ``usage_row`` stores for ``column`` (one of :data:`IMPLIED`) of ``src``'s
    row (``src``: a relation or ``NEW`` with ``usage_event``'s columns, ``level`` as its text):

    * a number of :data:`ZERO_AS_NULL`: NULL for 0;
    * ``platform_fee_nanos``: NULL when it is ``billed_nanos − creator_share_nanos``;
    * ``billing_target``: ``''`` when it is what ``level`` implies (``'platform'`` at level
      platform, else ``enterprise_id``), NULL for a literal ``''`` it does not (only a write through
      the view can give one), the text otherwise.

    :func:`read_sql` is its inverse.  Raises KeyError for another column."""
    if column in ZERO_AS_NULL:
        return f"nullif({src}.{column}, 0)"
    if column == "platform_fee_nanos":
        return f"nullif({src}.platform_fee_nanos, {src}.billed_nanos - {src}.creator_share_nanos)"
    if column == "billing_target":
        platform = PayerLevel.platform.value
        implied = f"CASE {src}.level WHEN '{platform}' THEN '{platform}' ELSE {src}.enterprise_id END"
        return f"CASE WHEN {src}.billing_target = {implied} THEN '' ELSE nullif({src}.billing_target, '') END"
    raise KeyError(column)


def read_sql(column: str, src: str) -> str:
    """SQL reading ``column`` (one of :data:`IMPLIED`) of the ``usage_row`` row ``src`` (its
    ``level`` a code) back as :func:`store_sql` was given it: NULL numbers as 0 or the implied fee,
    a ``''`` billing target as the implied one and NULL as ``''``; a stored value as itself (every
    value of a row stored before migration 0021).  Raises KeyError for another column."""
    if column in ZERO_AS_NULL:
        return f"coalesce({src}.{column}, 0)"
    if column == "platform_fee_nanos":
        billed, share = read_sql("billed_nanos", src), read_sql("creator_share_nanos", src)
        return f"coalesce({src}.platform_fee_nanos, {billed} - {share})"
    if column == "billing_target":
        platform = PayerLevel.platform.value
        implied = f"CASE {src}.level WHEN '{CODES['level'][platform]}' THEN '{platform}' ELSE {src}.enterprise_id END"
        return f"CASE WHEN {src}.billing_target = '' THEN {implied} ELSE coalesce({src}.billing_target, '') END"
    raise KeyError(column)
