"""/metrics counts every gate decision, whichever process made it (issue 17): decisions made by
another process (here a Python subprocess using the gate, as a Celery worker's record_turn task or
a replay does) are added to Redis and read at scrape time, exactly, beside the web process's own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, _env, auth
from tests.integration.test_api import TURN, api  # noqa: F401  (the fixture)
from worker.gate.keys import DECISION_METRICS_KEY
from worker.metrics import decision_counter

pytestmark = pytest.mark.integration

OTHER_PROCESS = """
from models.turn import TurnIn
from worker import WalletGate

gate = WalletGate()
turn = dict(wallet_id="w1", enterprise_id="acme", chat_id="c9", agent="a", model="gpt-4o", provider="openai",
            prompt_tokens=100, completion_tokens=10)
for i in range(7):
    gate.record_turn(TurnIn(turn_id=f"other-{i}", **turn))
gate.record_turn(TurnIn(turn_id="other-0", **turn))  # a duplicate
gate.record_turn(TurnIn(turn_id="other-x", **{**turn, "wallet_id": "w2"}))  # w2 has no money: denied
"""


def _decisions(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("tollgate_decisions_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            found[outcome] = float(line.rsplit(" ", 1)[1])
    return found


def test_decisions_of_every_process_are_counted(api, redis_client, monkeypatch):  # noqa: F811
    # counting is off in the test suite (tests/conftest.py): on here, in this process and the other
    monkeypatch.setattr(decision_counter, "enabled", True)
    redis_client.delete(DECISION_METRICS_KEY)
    done = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS],
        cwd=REPO,
        env=_env() | {"TOLLGATE_DECISION_METRICS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert api.post("/v1/turns", json=TURN, headers=auth(api.keys["owner"])).status_code == 200
    scraped = api.get("/metrics", headers=auth(api.keys["admin"]))
    assert scraped.status_code == 200
    assert _decisions(scraped.text) == {"accepted": 8.0, "denied": 1.0, "duplicate": 1.0}
