"""The attention section's rules that need no database: what resumes a paused chat (issue 18 item 3),
top-up amounts rounded up to the cent, reason labels, and which Checkout session ids the page reads."""

from __future__ import annotations

import pytest

from worker.billing.attention import ceil_cents, reason_label, remedy_for
from worker.billing.topup import valid_session_id


@pytest.mark.parametrize(
    ("nanos", "cents"),
    [(-5, 0), (0, 0), (1, 1), (9_999_999, 1), (10_000_000, 1), (10_000_001, 2), (1_234_567_891, 124)],
)
def test_a_top_up_is_rounded_up_to_the_cent(nanos, cents):
    assert ceil_cents(nanos) == cents


def test_what_resumes_a_paused_chat():
    assert remedy_for("wallet_exhausted", 1_234_567_891, False, None, "c1").text == "Top up at least $1.24"
    top = remedy_for("trial_exhausted", 1, False, None, "c1")
    assert (top.kind, top.amount_nanos, top.text) == ("top_up", 1, "Top up at least $0.01")
    assert remedy_for("trial_exhausted", 0, False, None, "c1").kind == "production"
    assert remedy_for("wallet_exhausted", 0, False, None, "c1").text == "Top up the wallet"
    budget = remedy_for("budget_exceeded", 0, False, ("support", 20_000_000_000, 20_300_000_001), "c1")
    assert (budget.kind, budget.target, budget.amount_nanos, budget.spent_nanos) == (
        "raise_budget",
        "support",
        20_000_000_000,
        20_300_000_001,
    )
    assert budget.text == "Raise the support budget above $20.31 (now $20.00), or wait for next month"
    assert remedy_for("payment_failed", 0, False, None, "c1").kind == "pay"
    assert remedy_for("paused_by_orchestrator", 0, False, None, "c1").text == (
        "Resume by the orchestrator (POST /v1/chats/c1/resume)"
    )
    assert remedy_for("wallet_exhausted", 5, True, None, "c1").kind == "resumable"


def test_reason_labels():
    assert reason_label("wallet_exhausted") == "Wallet exhausted"
    assert reason_label("unknown") == "No reason recorded"
    assert reason_label("my_custom_reason") == "My custom reason"


@pytest.mark.parametrize(
    ("value", "ok"),
    [("cs_test_1", True), ("cs_live_a1B2", True), ("cs_", False), ("in_1", False), ("cs_1;drop", False), (None, False)],
)
def test_only_checkout_session_ids_are_looked_up(value, ok):
    assert valid_session_id(value) == (value if ok else None)
