"""`tollgate replay` end to end: real Redis, a real Celery worker (started by the replay) and a real
PostgreSQL, driven through the CLI as a user runs it."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from sqlalchemy import text

from tests.conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.integration

CONV_SHARED = SHARED_DATA / "azure_llm_2023_conv_shared.csv"
CONV_SAMPLE = REPO / "worker" / "devtools" / "data" / "azure_llm_2023_conv_sample.csv"
MOONCAKE_SAMPLE = REPO / "worker" / "devtools" / "data" / "mooncake_fast25_conversation_sample.jsonl"


def _report(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _nanos(usd: Decimal) -> int:
    return int((usd * 10**9).to_integral_value(rounding=ROUND_HALF_UP))


def _azure_expected(path: Path) -> dict[str, int]:
    """Totals computed independently of tollgate: csv + genai-prices' own calc_price per row."""
    totals = {"turns": 0, "prompt": 0, "completion": 0, "cost_nanos": 0, "max_cost": 0}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            prompt, completion = int(row["ContextTokens"]), int(row["GeneratedTokens"])
            when = datetime.strptime(row["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            price = calc_price(
                Usage(input_tokens=prompt, output_tokens=completion),
                "gpt-4o",
                provider_id="openai",
                genai_request_timestamp=when,
            )
            cost = _nanos(price.total_price)
            totals["turns"] += 1
            totals["prompt"] += prompt
            totals["completion"] += completion
            totals["cost_nanos"] += cost
            totals["max_cost"] = max(totals["max_cost"], cost)
    return totals


def _db_totals(db, wallet_id: str) -> dict[str, int]:
    with db.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT turn_id), coalesce(sum(prompt_tokens),0), "
                "coalesce(sum(completion_tokens),0), coalesce(sum(cost_nanos),0), coalesce(sum(billed_nanos),0) "
                "FROM usage_event WHERE wallet_id = :w"
            ),
            {"w": wallet_id},
        ).one()
        debits = conn.execute(
            text(
                "SELECT coalesce(sum(amount_nanos),0), coalesce(sum(turns),0) FROM wallet_transaction "
                "WHERE wallet_id = :w AND kind = 'debit'"
            ),
            {"w": wallet_id},
        ).one()
        chat = conn.execute(
            text(
                "SELECT turns, prompt_tokens, completion_tokens, cost_nanos, status FROM chat_session "
                "WHERE wallet_id = :w"
            ),
            {"w": wallet_id},
        ).one()
    return {
        "rows": row[0],
        "distinct": row[1],
        "prompt": int(row[2]),
        "completion": int(row[3]),
        "cost_nanos": int(row[4]),
        "billed_nanos": int(row[5]),
        "debit_nanos": int(debits[0]),
        "debit_turns": int(debits[1]),
        "chat_turns": chat[0],
        "chat_prompt": int(chat[1]),
        "chat_completion": int(chat[2]),
        "chat_cost": int(chat[3]),
        "chat_status": chat[4],
    }


@pytest.mark.skipif(not CONV_SHARED.exists(), reason="needs ../shared/data beside the repo")
def test_replay_conv_shared_trace_exact_totals_and_rerun_records_nothing(cli, db):
    expected = _azure_expected(CONV_SHARED)
    assert expected["turns"] == 13_927

    first = _report(
        cli(
            "replay",
            str(CONV_SHARED),
            "--format",
            "azure",
            "--model",
            "gpt-4o",
            "--provider",
            "openai",
            "--run-id",
            "conv-a",
            "--json",
        )
    )
    assert first["turns_read"] == 13_927
    assert first["turns_accepted"] == 13_927
    assert first["turns_denied"] == 0
    assert first["turns_persisted"] == 13_927
    assert first["prompt_tokens"] == 16_726_570
    assert first["completion_tokens"] == 2_802_253
    assert first["cached_prompt_tokens"] == 0
    assert first["cost_nanos"] == expected["cost_nanos"]
    assert first["cost_usd"] == f"{Decimal(expected['cost_nanos']) / 10**9:.9f}"
    assert first["final_balance_nanos"] is None

    db_first = _db_totals(db, "replay-conv-a")
    assert db_first["rows"] == db_first["distinct"] == 13_927
    assert (db_first["prompt"], db_first["completion"]) == (16_726_570, 2_802_253)
    assert db_first["cost_nanos"] == db_first["billed_nanos"] == db_first["debit_nanos"] == expected["cost_nanos"]
    assert db_first["debit_turns"] == db_first["chat_turns"] == 13_927
    assert (db_first["chat_prompt"], db_first["chat_completion"], db_first["chat_cost"]) == (
        16_726_570,
        2_802_253,
        expected["cost_nanos"],
    )

    again = _report(cli("replay", str(CONV_SHARED), "--format", "azure", "--run-id", "conv-a", "--json"))
    assert again["turns_duplicate"] == 13_927
    assert again["turns_persisted"] == 13_927
    assert again["cost_nanos"] == expected["cost_nanos"]
    assert _db_totals(db, "replay-conv-a") == db_first


def test_replay_with_wallet_overdraws_by_at_most_one_turn_and_ledger_matches_redis(cli, db, redis_client):
    expected = _azure_expected(CONV_SAMPLE)
    report = _report(
        cli("replay", str(CONV_SAMPLE), "--format", "azure", "--wallet-usd", "2.50", "--run-id", "small", "--json")
    )
    assert report["turns_read"] == 2_000
    assert report["turns_accepted"] + report["turns_denied"] == 2_000
    assert report["turns_denied"] > 0
    assert report["turns_persisted"] == report["turns_accepted"]
    balance = report["final_balance_nanos"]
    assert -expected["max_cost"] <= balance <= 0
    # ledger (PostgreSQL: credits − debits) == gate (Redis) == 2.50 USD − what was billed, to the nano
    assert report["ledger_balance_nanos"] == balance
    wallet_hash = redis_client.hgetall(next(redis_client.scan_iter("tollgate:*:wallet:replay-small")))
    assert int(wallet_hash["balance"]) == balance
    assert int(wallet_hash["denied_turns"]) == report["turns_denied"]
    totals = _db_totals(db, "replay-small")
    assert totals["billed_nanos"] == 2_500_000_000 - balance == totals["debit_nanos"]
    assert totals["rows"] == report["turns_accepted"]
    assert totals["chat_status"] == "paused"
    # the accepted turns are exactly the first rows of the file: the first turn that brought the
    # balance to <= 0 was accepted, every later one denied
    with db.connect() as conn:
        rows = sorted(
            int(t.rsplit(":", 1)[1])
            for (t,) in conn.execute(text("SELECT turn_id FROM usage_event WHERE wallet_id = 'replay-small'"))
        )
    assert rows == list(range(1, report["turns_accepted"] + 1))


def test_replay_mooncake_bills_cached_prompt_tokens_at_cache_read_price(cli, db):
    epoch = datetime(2025, 3, 1, tzinfo=UTC)
    seen: set[int] = set()
    prompt = completion = cached_total = cost = 0
    for line in MOONCAKE_SAMPLE.read_text().splitlines():
        obj = json.loads(line)
        lead = 0
        for h in obj["hash_ids"]:
            if h not in seen:
                break
            lead += 1
        seen.update(obj["hash_ids"])
        cached = min(obj["input_length"], 512 * lead)
        prompt += obj["input_length"]
        completion += obj["output_length"]
        cached_total += cached
        price = calc_price(
            Usage(input_tokens=obj["input_length"], cache_read_tokens=cached, output_tokens=obj["output_length"]),
            "gpt-4o",
            provider_id="openai",
            genai_request_timestamp=epoch,
        )
        cost += _nanos(price.total_price)
    assert cached_total > 0

    report = _report(
        cli(
            "replay",
            str(MOONCAKE_SAMPLE),
            "--format",
            "mooncake",
            "--run-id",
            "moon",
            "--epoch",
            "2025-03-01T00:00:00",
            "--json",
        )
    )
    assert report["turns_persisted"] == 1_000
    assert (report["prompt_tokens"], report["completion_tokens"], report["cached_prompt_tokens"]) == (
        prompt,
        completion,
        cached_total,
    )
    assert report["cost_nanos"] == cost


def _nothing_recorded(db, redis_client) -> None:
    with db.connect() as conn:
        for table in ("usage_event", "wallet", "wallet_transaction", "chat_session"):
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0, table
    assert [k for k in redis_client.scan_iter("tollgate:*") if k != "tollgate:config:outbox_shards"] == []


@pytest.mark.parametrize(
    ("content", "fmt", "needles"),
    [
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n"
            "2023-11-16 18:15:50.9951690,-396,109\r\n",
            "azure",
            ["row 2", "ContextTokens", "negative"],
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n"
            "2023-11-16 18:15:50.9951690,396,1.5\r\n",
            "azure",
            ["row 2", "GeneratedTokens"],
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\nyesterday,396,10\r\n",
            "azure",
            ["row 2", "TIMESTAMP"],
        ),
        (
            '{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}\n',
            "azure",
            ["header", "--format azure"],
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,374,44\r\n",
            "mooncake",
            ["row 1", "JSON"],
        ),
        (
            '{"timestamp": 0, "input_length": 10, "output_length": 5, "hash_ids": [1]}\n'
            '{"timestamp": 3000, "input_length": 10, "hash_ids": [1]}\n',
            "mooncake",
            ["row 2", "output_length"],
        ),
    ],
)
def test_malformed_trace_is_refused_with_row_and_field_and_records_nothing(
    cli, db, redis_client, tmp_path, content, fmt, needles
):
    path = tmp_path / "trace.txt"
    path.write_bytes(content.encode())
    proc = cli("replay", str(path), "--format", fmt, "--run-id", "bad", "--json", "--no-worker")
    assert proc.returncode == 2
    for needle in needles:
        assert needle in proc.stderr
    assert proc.stdout == ""
    _nothing_recorded(db, redis_client)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "gpt-nonexistent-9000"], "unknown model 'gpt-nonexistent-9000'"),
        (["--format", "parquet"], "--format"),
        (["--wallet-usd", "-3"], "--wallet-usd"),
        (["--wallet-usd", "ten"], "--wallet-usd"),
        (["--chats", "0"], "--chats: 0 is not between 1 and 1,000,000"),
        (["--agents", "-2"], "--agents: -2 is not between 1 and 1,000,000"),
        (["--enterprise", "my app"], "--enterprise"),
    ],
)
def test_bad_options_are_refused_and_record_nothing(cli, db, redis_client, args, needle):
    base = ["replay", str(CONV_SAMPLE), "--run-id", "bad", "--no-worker", "--json"]
    if "--format" not in args:
        base += ["--format", "azure"]
    proc = cli(*base, *args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    _nothing_recorded(db, redis_client)


def test_replay_fills_a_real_app_spread_over_chats_and_agents(cli, db):
    """`--enterprise APP --chats N --agents M` (issue 17): the sample's 2,000 rows land in APP, row i
    in chat i mod N and agent i mod M, with the same totals as computed from the file."""
    expected = _azure_expected(CONV_SAMPLE)
    report = _report(
        cli(
            "replay", str(CONV_SAMPLE), "--format", "azure", "--run-id", "spread", "--enterprise", "app-9",
            "--chats", "7", "--agents", "3", "--json",
        )
    )  # fmt: skip
    assert (report["turns_read"], report["turns_persisted"], report["cost_nanos"]) == (
        2000,
        2000,
        expected["cost_nanos"],
    )
    with db.connect() as conn:
        chats = conn.execute(
            text(
                "SELECT chat_id, turns FROM chat_session WHERE enterprise_id = 'app-9' AND wallet_id = 'replay-spread' "
                "ORDER BY chat_id"
            )
        ).all()
        agents = conn.execute(
            text(
                "SELECT agent, count(*), sum(prompt_tokens) FROM usage_event WHERE enterprise_id = 'app-9' "
                "GROUP BY agent ORDER BY agent"
            )
        ).all()
        wallet = conn.execute(text("SELECT enterprise_id FROM wallet WHERE id = 'replay-spread'")).scalar_one()
    assert wallet == "app-9"
    assert chats == [(f"replay-spread-{k}", len(range(k, 2000, 7))) for k in range(7)]
    assert [(a, n) for a, n, _ in agents] == [(f"azure-trace-{j}", len(range(j, 2000, 3))) for j in range(3)]
    assert sum(int(p) for _, _, p in agents) == expected["prompt"]
    again = cli("replay", str(CONV_SAMPLE), "--format", "azure", "--run-id", "spread", "--no-worker", "--json")
    assert again.returncode == 2 and "replayed before in app 'app-9'" in again.stderr
