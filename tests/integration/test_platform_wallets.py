"""Level-1 (platform) wallets over the API: the app creator's wallet has no owning app, so the API
lets only the creator's own apps (``enterprise.creator_id``) or the key issued for that wallet
charge it; any other app's key gets the answer of an unknown wallet.  And the CLI that sets an
app's creator, modes and settings."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from models.enums import PayerLevel
from tests.committed import credit_wallet, open_wallet
from tests.conftest import create_keys
from worker.billing.modes import configure_app
from worker.db import session_scope
from worker.ledger.accounts import ensure_enterprise

pytestmark = pytest.mark.integration
TURN = {
    "turn_id": "p-1",
    "wallet_id": "plat:maker-1",
    "enterprise_id": "acme",
    "chat_id": "build-1",
    "workflow": "app_generation",
    "model": "gpt-4o",
    "provider": "openai",
    "prompt_tokens": 1000,
    "completion_tokens": 100,
    "occurred_at": "2026-11-01T12:00:00Z",
}
COST = 1000 * 2_500 + 100 * 10_000


def test_only_the_creator_s_apps_charge_a_platform_wallet(db, redis_client, gate, http_api):
    from api_stub import deps

    deps._CREATORS.clear()
    with session_scope() as s:
        for app in ("acme", "rival"):
            ensure_enterprise(s, app)
    keys = create_keys({app: ("owner", app) for app in ("acme", "rival")})
    open_wallet(gate, wallet_id="plat:maker-1", enterprise_id=None, owner_id="maker-1", level=PayerLevel.platform)
    credit_wallet(gate, wallet_id="plat:maker-1", amount_nanos=10**10, idempotency_key="grant")
    with session_scope() as s:  # the entry point's transaction
        configure_app(s, gate, "acme", creator_id="maker-1")
    api = http_api(keys)
    rival = api.post("/v1/turns", json={**TURN, "enterprise_id": "rival", "turn_id": "r-1"}, headers=api.h["rival"])
    assert rival.status_code == 404 and rival.json()["errors"][0]["field"] == "wallet_id"
    assert "balance_nanos" not in rival.text
    mine = api.post("/v1/turns", json=TURN, headers=api.h["acme"])
    assert mine.status_code == 200, mine.text
    assert (mine.json()["billed_nanos"], mine.json()["balance_nanos"]) == (COST, 10**10 - COST)
    assert gate.balance("plat:maker-1") == 10**10 - COST


def test_cli_configures_an_app_and_sets_modes(cli, db):
    assert cli("wallet", "create", "u-1", "--enterprise", "acme").returncode == 0
    done = cli(
        "app",
        "configure",
        "acme",
        "--creator",
        "maker-1",
        "--share-bps",
        "8000",
        "--trial-tokens",
        "5000",
        "--trial-then",
        "bill",
        "--flat-fee-usd",
        "0.49",
    )
    assert done.returncode == 0, done.stderr
    assert "share 8000 bps" in done.stdout and "flat fee 490000000 nanos" in done.stdout
    bad = cli("app", "configure", "acme", "--share-bps", "12000")
    assert bad.returncode == 2 and "--share-bps" in bad.stderr
    assert cli("app", "mode", "acme", "trial").returncode == 0
    assert cli("wallet", "mode", "u-1", "development").returncode == 0
    assert cli("wallet", "mode", "u-1", "inherit").returncode == 0
    wrong = cli("app", "mode", "acme", "free")
    assert wrong.returncode == 2 and "MODE" in wrong.stderr
    with db.connect() as conn:
        app = conn.execute(
            text(
                "SELECT creator_id, creator_share_bps, trial_token_allowance, trial_then, "
                "flat_fee_nanos, default_mode FROM enterprise WHERE id = 'acme'"
            )
        ).one()
        wallet = conn.execute(text("SELECT mode, mode_override FROM wallet WHERE id = 'u-1'")).one()
        actions = conn.execute(text("SELECT action FROM audit_log ORDER BY id")).scalars().all()
    assert tuple(app) == ("maker-1", 8000, 5000, "bill", 490_000_000, "trial")
    assert tuple(wallet) == ("trial", False)
    assert actions == ["app_config", "mode_change", "mode_change", "mode_change"]
