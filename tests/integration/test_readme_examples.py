"""Every README example runs as written, in order, on a fresh database (issue 17): the Python blocks
of "Using it from Python" and "Orchestrator clients" in one namespace (each ``print`` must print
what its comment says), then the bash block of "The command line" as one ``bash -e`` script, with
``tollgate`` this checkout's command.  (The Quick start's ``make demo`` runs in
``test_fresh_machine.py``; ``make test`` is the suite itself.)"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys

import pytest
from sqlalchemy import text

from tests.conftest import REPO, _env

pytestmark = pytest.mark.integration

README = REPO / "README.md"


def _section(title: str) -> str:
    body = README.read_text()
    start = body.index(f"\n## {title}\n")
    end = body.find("\n## ", start + 4)
    return body[start : end if end > 0 else None]


def python_blocks() -> list[str]:
    """The Python examples in README order."""
    return [
        block
        for title in ("Using it from Python", "Orchestrator clients (`worker.client`)")
        for block in re.findall(r"```python\n(.*?)```", _section(title), re.S)
    ]


def cli_block() -> str:
    [block] = re.findall(r"```bash\n(.*?)```", _section("The command line"), re.S)
    return block


def _expected_prints(code: str) -> list[str]:
    return [m.split(" (or ")[0].strip().split(" = ")[0] for m in re.findall(r"print\(.*\)\s*#\s*(.*)", code)]


def test_every_readme_example_runs_in_order_on_a_fresh_database(db, redis_client, tmp_path):
    blocks = python_blocks()
    assert len(blocks) == 4
    namespace: dict = {"__name__": "readme"}
    for i, code in enumerate(blocks):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        lines, wanted = out.getvalue().splitlines(), _expected_prints(code)
        assert len(lines) == len(wanted), (i, lines, wanted)
        for line, want in zip(lines, wanted):
            if "chat.resumable" in want:  # either event may win the race; the balance is exact
                assert line.split()[1] == want.split()[1] and line.split()[0] in ("chat.resumable", "wallet.credited")
            else:
                assert line == want, (i, line, want)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "tollgate"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m worker.cli "$@"\n')
    wrapper.chmod(0o755)
    env = _env() | {"PATH": f"{bin_dir}:{_env().get('PATH', '/usr/bin:/bin')}"}
    script = "set -euo pipefail\nset -x\n" + cli_block()
    done = subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]

    # what the block did, counted in PostgreSQL
    with db.connect() as conn:
        q = lambda sql: conn.execute(text(sql)).all()  # noqa: E731
        assert q("SELECT count(*), count(DISTINCT chat_id), count(DISTINCT agent) FROM usage_event WHERE wallet_id = 'replay-trace-1'") == [
            (2000, 40, 3)
        ]  # fmt: skip
        assert q("SELECT id, enterprise_id, level, mode, mode_override FROM wallet WHERE id IN ('user-43', 'plat:maker-2') ORDER BY id") == [
            ("plat:maker-2", None, "platform", "production", False),
            ("user-43", "app-7", "app_usage", "production", False),
        ]  # fmt: skip
        assert q(
            "SELECT creator_share_bps, trial_token_allowance, usage_schema FROM enterprise WHERE id = 'app-7'"
        ) == [(7000, 100_000, "tenant_7")]
        # the flat fee of the track_only app, charged by `allowance reset`: $49 from the creator's wallet
        assert q("SELECT amount_nanos FROM wallet_transaction WHERE wallet_id = 'plat:maker-2' AND kind = 'debit'") == [
            (49_000_000_000,)
        ]
        assert q("SELECT role FROM api_key WHERE revoked_at IS NOT NULL") == [("admin",)]
        assert q("SELECT role, enterprise_id, wallet_id FROM api_key WHERE revoked_at IS NULL ORDER BY id") == [
            ("owner", "app-7", None),
            ("end_user", "app-7", "user-43"),
            ("owner", "app-8", "plat:maker-2"),
        ]
    rollup = [line for line in done.stdout.splitlines() if line.startswith('{"_id": "mon_app-7_replay"')]
    assert len(rollup) == 1 and json.loads(rollup[0])["period"] == "2023-11"


def test_the_quick_start_has_exactly_two_commands_and_says_which_servers():
    """Issue 17: the Quick start keeps its two commands, says what happens when no server answers
    and how to use real servers instead."""
    section = _section("Quick start")
    [block] = re.findall(r"```bash\n(.*?)```", section, re.S)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    assert "When nothing answers at a loopback URL" in section and "**Real servers instead.**" in section
