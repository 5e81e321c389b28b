"""The raising form of the edge checks of :mod:`models.validation`, for Python callers that take ids,
keys and times directly (services, the gate, the CLI, the trace parsers, the client).

``models`` imports nothing of ours, so the error type lives here: each check raises
:class:`worker.errors.InvalidInput` (an ``InputError`` and a ``ValueError``) with ``field`` set.
The pydantic annotations (``Id``, ``Label``, ``UtcInWindow`` …) and the pure checks
(``text_problem``, ``utc_problem``) stay in :mod:`models.validation`.
"""

from __future__ import annotations

from datetime import datetime

import worker.settings  # noqa: F401  (installs this process's occurred_at window: configure_occurred_at_window)
from models.validation import MAX_ID, text_problem, utc_problem
from worker.errors import InvalidInput


def check_text(value: object, field: str, *, kind: str = "id", max_length: int = MAX_ID, min_length: int = 1) -> str:
    """``value`` if it is a string of ``min_length``..``max_length`` code points acceptable as
    ``kind`` (``id``, ``label`` or ``text``, see :mod:`models.validation`); else raises
    :class:`InvalidInput` naming ``field``."""
    if not isinstance(value, str):
        raise InvalidInput(field, f"must be a string, got {type(value).__name__}")
    if not min_length <= len(value) <= max_length:
        raise InvalidInput(field, f"must be {min_length}..{max_length} characters, got {len(value)}")
    problem = text_problem(value, kind)
    if problem:
        raise InvalidInput(field, problem)
    return value


def storable_id(value: object, max_length: int = MAX_ID) -> bool:
    """Can ``value`` be the id of a row (a wallet, an app, a package) at all: a string of
    1..``max_length`` code points that the id rules of :mod:`models.validation` accept?  A lookup by
    anything else (a NUL, which PostgreSQL refuses with an error; a lone surrogate; 5,000
    characters) finds nothing without asking PostgreSQL, so the caller's "unknown id" answer (its
    404 or 422 naming the field) is given instead of a 500."""
    return isinstance(value, str) and 1 <= len(value) <= max_length and text_problem(value, "id") is None


def check_occurred_at(value: object, field: str = "occurred_at") -> datetime:
    """``value`` (an aware datetime inside the configured window: ``Settings.occurred_at_min`` to now +
    ``Settings.occurred_at_max_ahead_s``, installed by :mod:`worker.settings` through
    :func:`models.validation.configure_occurred_at_window`) converted to UTC; else raises
    :class:`InvalidInput` naming ``field``."""
    if not isinstance(value, datetime):
        raise InvalidInput(field, f"must be a datetime, got {type(value).__name__}")
    utc, problem = utc_problem(value)
    if problem:
        raise InvalidInput(field, problem)
    return utc  # type: ignore[return-value]


__all__ = ["InvalidInput", "check_occurred_at", "check_text", "storable_id"]
