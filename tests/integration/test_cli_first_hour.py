"""The command line as a new user first tries it (issue 17): a wallet created without --mode follows
its app's mode, now and later; a level-1 (platform) wallet can be created from the CLI; an end_user
key needs only its wallet; the prefix `apikey revoke` takes is printed by `create`, and revoke takes
the whole key too.  In-process (typer's CliRunner) against real PostgreSQL and Redis."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from worker.cli import app

pytestmark = pytest.mark.integration


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def _wallet(db, wallet_id: str) -> tuple:
    with db.connect() as conn:
        return conn.execute(
            text("SELECT enterprise_id, level, mode, mode_override FROM wallet WHERE id = :w"), {"w": wallet_id}
        ).one()


def test_a_wallet_created_without_mode_follows_its_app_now_and_later(db, gate):
    assert run("app", "configure", "app-1").exit_code == 0
    assert run("app", "mode", "app-1", "development").exit_code == 0
    created = run("wallet", "create", "u-1", "--enterprise", "app-1", "--json")
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout) == {
        "wallet_id": "u-1",
        "enterprise_id": "app-1",
        "owner_id": "u-1",
        "level": "app_usage",
        "mode": "development",
        "mode_override": False,
        "limited": True,
    }
    assert run("app", "mode", "app-1", "trial").exit_code == 0
    assert _wallet(db, "u-1") == ("app-1", "app_usage", "trial", False)
    pinned = run("wallet", "create", "u-2", "--enterprise", "app-1", "--mode", "production")
    assert pinned.exit_code == 0 and "production: its own mode" in pinned.stdout
    assert run("app", "mode", "app-1", "development").exit_code == 0
    assert _wallet(db, "u-2") == ("app-1", "app_usage", "production", True)


def test_a_platform_wallet_from_the_cli_and_an_owner_key_for_it(db, gate):
    created = run("wallet", "create", "plat:maker-1", "--level", "platform", "--owner", "maker-1")
    assert created.exit_code == 0, created.output
    assert _wallet(db, "plat:maker-1") == (None, "platform", "production", False)
    assert run("app", "configure", "app-7").exit_code == 0
    key = run("apikey", "create", "--role", "owner", "--enterprise", "app-7", "--wallet", "plat:maker-1")
    assert key.exit_code == 0, key.output
    refused = run("wallet", "create", "plat:maker-2", "--level", "platform", "--enterprise", "app-7")
    assert refused.exit_code == 2 and "--enterprise: a platform (level 1) wallet belongs to no app" in refused.output
    missing = run("wallet", "create", "u-9")
    assert missing.exit_code == 2 and "--enterprise: an app_usage wallet needs its app" in missing.output
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM wallet WHERE id IN ('plat:maker-2', 'u-9')")).scalar() == 0


def test_an_end_user_key_needs_only_its_wallet_and_revoke_takes_the_printed_prefix(db, gate):
    assert run("wallet", "create", "u-1", "--enterprise", "app-1").exit_code == 0
    created = run("apikey", "create", "--role", "end_user", "--wallet", "u-1")
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()
    prefix = key.split("_")[1]
    assert key.startswith(f"tg_{prefix}_") and f"tollgate apikey revoke {prefix}" in created.stderr
    with db.connect() as conn:
        assert conn.execute(text("SELECT role, enterprise_id, wallet_id FROM api_key WHERE prefix = :p"), {"p": prefix}).one() == (
            "end_user",
            "app-1",
            "u-1",
        )  # fmt: skip
    revoked = run("apikey", "revoke", prefix)
    assert revoked.exit_code == 0 and f"key {prefix} revoked" in revoked.stdout
    second = json.loads(run("apikey", "create", "--role", "owner", "--enterprise", "app-1", "--json").stdout)
    assert run("apikey", "revoke", second["key"]).exit_code == 0  # the whole key works too
    with db.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM api_key WHERE revoked_at IS NULL")).scalar() == 0
    unknown = run("apikey", "create", "--role", "end_user", "--wallet", "nope")
    assert unknown.exit_code == 2 and "--wallet: no app wallet 'nope'" in unknown.output


def test_commands_print_json_with_json_and_lists_show_what_exists(db, gate):
    """--json prints one JSON document on stdout (drain printed a Python dict before issue 17), and
    `list` shows apps, wallets and keys."""

    def js(*args: str):
        done = run(*args, "--json")
        assert done.exit_code == 0, (args, done.output)
        return json.loads(done.stdout)

    assert js("db", "upgrade") == {"migrated_to": "head"}
    assert js("app", "configure", "app-1", "--share-bps", "8000")["creator_share_bps"] == 8000
    assert js("app", "mode", "app-1", "trial") == {"enterprise_id": "app-1", "mode": "trial", "wallets_changed": 0}
    assert js("wallet", "create", "u-1", "--enterprise", "app-1")["mode"] == "trial"
    assert js("wallet", "credit", "u-1", "--usd", "1.5", "--key", "k-1") == {
        "wallet_id": "u-1",
        "credited_nanos": 1_500_000_000,
        "key": "k-1",
        "balance_nanos": 1_500_000_000,
    }
    assert js("wallet", "mode", "u-1", "development") == {
        "wallet_id": "u-1",
        "mode": "development",
        "follows_app": False,
    }
    assert js("wallet", "reservations", "u-1", "required")["reservations_required"] is True
    assert js("allowance", "set", "u-1", "--usd", "2") == {"wallet_id": "u-1", "monthly_allowance_nanos": 2_000_000_000}
    drained = js("drain")
    assert isinstance(drained, dict) and all(isinstance(v, int) for v in drained.values())
    key = js("apikey", "create", "--role", "owner", "--enterprise", "app-1")
    assert [k["prefix"] for k in js("apikey", "list")] == [key["prefix"]]
    assert js("apikey", "revoke", key["prefix"]) == {"prefix": key["prefix"], "revoked": True}
    assert js("apikey", "list") == [] and len(js("apikey", "list", "--revoked")) == 1
    [app_row] = js("app", "list")
    assert (app_row["enterprise_id"], app_row["mode"], app_row["creator_share_bps"], app_row["wallets"]) == (
        "app-1",
        "trial",
        8000,
        1,
    )
    [wallet_row] = js("wallet", "list", "--enterprise", "app-1")
    assert (wallet_row["wallet_id"], wallet_row["mode"], wallet_row["credits_nanos"]) == (
        "u-1",
        "development",
        1_500_000_000,
    )
    table = run("wallet", "list")
    assert table.exit_code == 0 and "u-1" in table.stdout and "1500000000" in table.stdout  # not cut when piped
