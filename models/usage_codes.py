"""The one-byte codes of ``usage_row``'s closed-set columns (migration 0019) and the SQL that
writes and reads them.

``usage_event`` (a view since migration 0019) shows ``mode``, ``action``, ``level`` and ``meter`` as
their values (``'production'``, ``'continue'`` …); the table under it, ``usage_row``, stores each
as a PostgreSQL ``"char"`` (one byte instead of a 4–17-byte text).  :data:`CODES` is the mapping:
the migration's view and trigger hold a frozen copy of it, and ``tests/integration/test_usage_row.py``
checks that both agree with this module (a member added to an enum needs a migration that
replaces the view, the trigger function and this table together).
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
