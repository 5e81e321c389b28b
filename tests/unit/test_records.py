"""Records as families (``models/``): one shape per record, shared by the gate, the ledger and the API."""

from __future__ import annotations

import pytest

from tests.unit.test_gate import client, kicked, wg  # noqa: F401  (fixtures)
from models.wallet import ReservationPublic


def test_the_gate_answers_a_reservation_with_the_api_shape(wg):
    """``WalletGate.reserve`` returns the API's ``ReservationPublic`` itself (no dataclass copied
    field by field into it), and its JSON is the body ``POST /v1/wallets/{id}/reservations`` sends."""
    wg.load_wallet("w1", mode="production", limited=True, balance_nanos=10_000_000)
    hold = wg.reserve("w1", 6_000_000, reservation_id="r1")
    assert type(hold) is ReservationPublic
    assert hold.model_dump() == {"reservation_id": "r1", "wallet_id": "w1", "granted": True, "amount_nanos": 6_000_000,
                                 "balance_nanos": 10_000_000, "held_nanos": 6_000_000, "duplicate": False}
    again = wg.reserve("w1", 6_000_000, reservation_id="r1")
    assert type(again) is ReservationPublic
    assert (again.granted, again.duplicate, again.held_nanos) == (True, True, 6_000_000)


def test_models_check_occurred_at_against_the_window_passed_in():
    """``models.validation`` imports nothing of ours: without the worker it checks against its
    defaults, and the window is whatever the process configured (``worker.settings`` passes its own)."""
    import subprocess
    import sys

    code = """
import sys
from datetime import UTC, datetime, timedelta
from models.validation import DEFAULT_OCCURRED_AT_MIN, InvalidInput, check_occurred_at, configure_occurred_at_window
from models.turn import TurnIn
assert check_occurred_at(DEFAULT_OCCURRED_AT_MIN) == datetime(2000, 1, 1, tzinfo=UTC)
try:
    check_occurred_at(datetime(1999, 12, 31, 23, 59, tzinfo=UTC))
except InvalidInput as exc:
    print(exc.field)
configure_occurred_at_window(lambda: (datetime(2026, 1, 1, tzinfo=UTC), 0))
try:
    TurnIn(turn_id="t", wallet_id="w", enterprise_id="e", chat_id="c", model="m", prompt_tokens=1,
           completion_tokens=1, occurred_at=datetime(2025, 12, 31, tzinfo=UTC))
except ValueError as exc:
    print(exc.errors()[0]["loc"])
print(sorted(m for m in sys.modules if m == "worker" or m.startswith(("worker.", "tasks", "api_stub"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["occurred_at", "('occurred_at',)", "[]"]


def test_worker_settings_give_models_their_window(monkeypatch):
    from datetime import UTC, datetime, timedelta

    from models.validation import InvalidInput, check_occurred_at, occurred_at_window
    from worker.settings import get_settings

    monkeypatch.setattr(get_settings(), "occurred_at_min", datetime(2020, 6, 1, tzinfo=UTC))
    monkeypatch.setattr(get_settings(), "occurred_at_max_ahead_s", 60)
    earliest, latest = occurred_at_window()
    assert earliest == datetime(2020, 6, 1, tzinfo=UTC)
    assert timedelta(seconds=59) < latest - datetime.now(UTC) <= timedelta(seconds=60)
    with pytest.raises(InvalidInput, match="^occurred_at: 2020-05-31T23:59:59"):
        check_occurred_at(datetime(2020, 5, 31, 23, 59, 59, tzinfo=UTC))
    assert check_occurred_at(datetime(2020, 6, 1, tzinfo=UTC)) == datetime(2020, 6, 1, tzinfo=UTC)
