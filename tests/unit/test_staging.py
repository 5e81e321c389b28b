"""The drain's staged rows straight from outbox entries (``worker.ledger.staging.stage_entries``) equal
the general path's (``parse_entry`` then ``stage_rows``: ``_stage_values`` and ``check_domains``), value
for value and type for type, and an entry the general path refuses is refused with the same error
(class and message naming the field or column): on generated entries with every optional field present
or absent, and on hostile values in every position of the payload and the decision."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from worker.gate.outbox import parse_entry
from worker.ledger.staging import _fast, stage_entries, window_micros
from worker.ledger.turns import _STAGE_COLUMNS, stage_rows

NOW = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
WINDOW = (datetime(2020, 1, 1, tzinfo=UTC), NOW + timedelta(minutes=10))
TS = (NOW - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
IDS = ["w1", "ent-7", "chat-9", "wf", "planner", "a.b_c-d", "x" * 200]
LABELS = ["gpt-4o", "openai", "claude 3 opus", "llm", "emails"]
RATES = ["25e8,125e7,1e10,3125e6,5e9", "0,0,0,0,0", "1,2,3,4,5", "9223372036854775807,1,1,1,1"]


def general(shard: int, entries: list[tuple[str, dict[str, str]]]) -> Any:
    """The general path's staged tuples, or its error as (class, message)."""
    try:
        return stage_rows([parse_entry(f, f"{shard}:{i}") for i, f in entries], WINDOW)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def fast(shard: int, entries: list[tuple[str, dict[str, str]]]) -> Any:
    try:
        return stage_entries(shard, entries, WINDOW)
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def same(shard: int, entries: list[tuple[str, dict[str, str]]]) -> Any:
    want, got = general(shard, entries), fast(shard, entries)
    assert got == want
    if isinstance(want, list):  # equal values of the same types (1 == True == 1.0 would pass ==)
        assert [tuple(map(type, v)) for v in got] == [tuple(map(type, v)) for v in want]
    return got


def payload(rng: random.Random, n: int) -> list[Any]:
    p: list[Any] = [
        5,
        f"turn-{n}",
        rng.choice(IDS),
        rng.choice(IDS),
        rng.choice(IDS),
        rng.choice(IDS),
        rng.choice(IDS),
        rng.choice(LABELS),
        rng.choice(LABELS),
        rng.randrange(10**9),
        rng.randrange(10**6),
        rng.randrange(10**6),
        rng.randrange(10**5),
        rng.choice(RATES),
        rng.randrange(2**62),
        TS - rng.randrange(10**12),
    ]
    if rng.random() < 0.5:
        p += [rng.choice(["llm", "emails", "image"]), rng.randrange(10**12), rng.randrange(10**6)]
        p += [rng.randrange(10**6), rng.choice([None, "priority", "flex", "x" * 32])]
    return p


def decision(rng: random.Random) -> str:
    billed = rng.choice([0, 1, rng.randrange(10**15)])
    bal = rng.choice(["", "0", "-17", str(rng.randrange(-(10**15), 10**15)), str(-(2**63))])
    codes = rng.choice("cp") + rng.choice("PDTK") + rng.choice("ap") + rng.choice("01")
    return f"{billed}|{bal}|{codes}|{rng.choice([0, 7000, 10000])}|{rng.randrange(10**6)}|{rng.randrange(10**9)}"


def entry(p: list[Any], g: str | None) -> dict[str, str]:
    return {"t": json.dumps(p)} | ({} if g is None else {"g": g})


def test_generated_entries_stage_the_same_tuples_in_one_batch():
    rng = random.Random(16)
    entries = [(f"{1_700_000_000_000 + n}-{n % 3}", entry(payload(rng, n), decision(rng))) for n in range(3000)]
    got = same(3, entries)
    assert len(got) == 3000 and all(len(v) == len(_STAGE_COLUMNS) for v in got)
    # every entry took the fast path (none fell back to parse_entry)
    lo, hi = window_micros(WINDOW)
    assert all(_fast(f, f"3:{i}", lo, hi) is not None for i, f in entries)


def test_older_layouts_and_duplicates_stage_the_same_tuples():
    rng = random.Random(7)
    base = payload(rng, 1)[:16]
    v4 = [4, *base[1:13], 1, 2, 3, base[14], base[15], "llm", 0, 0, 0, 0, 0, None]
    older = {"b": "5", "a": "continue", "m": "production", "bal": "-3", "lv": "app_usage", "sb": "0", "tt": "0"}
    entries = [
        ("1-0", entry(base, "5|7|cPa1|0|0|0")),
        ("1-1", {"t": json.dumps(v4), **older}),  # version 4, the figures as their own fields
        ("1-2", {"t": json.dumps(base), **older}),  # version 5 without g
        ("1-3", entry(base, "5|7|cPa1|0|0|0")),  # the same turn again (a re-delivery in the batch)
        ("1-4", entry([*base[:9], -1, *base[10:]], "5|7|cPa1|0|0|0")),  # a bad later copy: not checked
        ("1-5", {"t": json.dumps([1, *base[1:13], 1, 2, 3, base[14], base[15]]), "b": "0", "a": "pause", "m": "trial"}),
    ]
    got = same(0, entries)
    assert got[3][:22] == got[0][:22] and got[3][22] == "0:1-3" and got[4][0] == -1


BAD_PAYLOAD_VALUES = [
    -1,
    2**31,
    2**63,
    2**64 + 1,
    1.5,
    True,
    None,
    "12",
    "",
    " ",
    "a b",
    "x" * 301,
    "é",
    "a\x00b",
    "a\u200bb",
    ["a"],
    {"a": 1},
]


@pytest.mark.parametrize("meter", [False, True], ids=["llm", "meter"])
@pytest.mark.parametrize("position", range(1, 21))
def test_a_hostile_payload_value_is_refused_or_staged_alike(position, meter):
    rng = random.Random(position)
    p = payload(rng, 0)[:16] + (["image", 3, 40, 50, "priority"] if meter else [])
    if position >= len(p):
        return
    for bad in BAD_PAYLOAD_VALUES:
        q = list(p)
        q[position] = bad
        same(1, [("5-0", {"t": json.dumps(q), "g": "100|5|cPa1|7000|0|0"})])


@pytest.mark.parametrize(
    "g",
    [
        "100|5|cPa1|7000|0|0",
        "+100|5|cPa1|7000|0|0",
        " 100|5|cPa1|7000|0|0",
        "1_000|5|cPa1|7000|0|0",
        "007|5|cPa1|7000|0|0",
        "-1|5|cPa1|7000|0|0",
        "100|5|cPa1|20000|0|0",  # a creator share above the charge
        "100|5|cPp1|20000|0|0",  # ... but level platform: no share
        f"{2**63}|5|cPa1|0|0|0",
        f"100|{2**63}|cPa1|0|0|0",
        f"100|{-(2**63) - 1}|cPa1|0|0|0",
        f"100|{-(2**63)}|cPa1|0|0|0",
        f"100|5|cPa1|0|{2**31}|0",
        "100|5|cPa1|0|-1|0",
        "100|5|cPa1|0|0|-1",
        "100|5|xPa1|0|0|0",
        "100|5|cPa2|0|0|0",
        "100|5|cPa1|0|0",
        "100|5|cPa1|0|0|0|0",
        "١٠٠|5|cPa1|0|0|0",
        "100||cPa1|0|0|0",
        "100|5|cPa1|0||0",
        "",
    ],
)
def test_a_hostile_decision_is_refused_or_staged_alike(g):
    rng = random.Random(3)
    same(2, [("9-9", entry(payload(rng, 0), g))])


@pytest.mark.parametrize("position", [0, 1, 3, 4, 5])
@pytest.mark.parametrize("form", ["+7", " 7", "7 ", "1_0", "07", "-0", "00", "٧", "７", "7\n"])
def test_a_decision_number_in_any_form_but_a_gates_is_a_bad_entry(position, form):
    """Every number of the decision, in every position, is read only in the one form a gate writes:
    a sign other than '-', spaces, '_', leading zeros, other scripts' or fullwidth digits and a
    trailing newline are refused (int() alone reads them all), by the general path and the fast one."""
    from worker.gate.outbox import BadEntry

    parts = ["100", "5", "cPa1", "7000", "0", "0"]
    parts[position] = form
    g = "|".join(parts)
    rng = random.Random(5)
    fields = entry(payload(rng, 0), g)
    with pytest.raises(BadEntry):
        parse_entry(fields, "9-9")
    same(2, [("9-9", fields)])


@pytest.mark.parametrize(
    "ts",
    [
        TS,
        (WINDOW[1] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
        (WINDOW[1] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) + 1,
        (WINDOW[0] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1),
        (WINDOW[0] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) - 1,
        0,
        -1,
        10**30,
    ],
)
def test_occurred_at_at_and_past_the_window_edges_alike(ts):
    rng = random.Random(4)
    p = payload(rng, 0)
    p[15] = ts
    same(0, [("1-1", entry(p, "1|5|cPa1|0|0|0"))])


@pytest.mark.parametrize(
    "rates",
    ["25e8,125e7,1e10,3125e6", "1,2,3,4,x", "1,2,3,4,99e99", "1,2,3,4,-5", "1,2,3,4,٥", "1,2,3,4,9223372036854775808"],
)
def test_hostile_rates_alike(rates):
    rng = random.Random(5)
    p = payload(rng, 0)
    p[13] = rates
    same(0, [("1-1", entry(p, "1|5|cPa1|0|0|0"))])


def test_a_bad_entry_in_a_batch_is_refused_with_its_column_named():
    rng = random.Random(6)
    entries = [(f"1-{n}", entry(payload(rng, n), decision(rng))) for n in range(50)]
    p = payload(rng, 99)
    p[10] = -5
    entries.insert(20, ("2-0", entry(p, "1|5|cPa1|0|0|0")))
    got = same(0, entries)
    assert got == ("ValueError", "usage row column 'completion_tokens': -5 is outside 0..2147483647")


def test_unparseable_entries_alike():
    same(0, [("1-1", {"t": "[5, NaN"})])
    same(0, [("1-1", {"g": "1|5|cPa1|0|0|0"})])
    same(0, [("1-1", {"t": "{}", "g": "1|5|cPa1|0|0|0"})])
    same(0, [("1-1", {"t": "[6]", "g": "1|5|cPa1|0|0|0"})])
    same(0, [("1-1", {"t": '"x"', "g": "1|5|cPa1|0|0|0"})])


def test_a_staged_batch_reads_as_the_usage_rows_it_stages():
    """What looks at a batch the drain hands persist_turns (a wrapper, a test) sees parse_entry's rows."""
    from worker.ledger.turns import StagedRows

    rng = random.Random(8)
    entries = [(f"1-{n}", entry(payload(rng, n), decision(rng))) for n in range(20)]
    rows = StagedRows(stage_entries(4, entries, WINDOW))
    assert list(rows) == [parse_entry(f, f"4:{i}") for i, f in entries]
    assert rows[3]["turn_id"] == "turn-3" and len(rows[5:9]) == 4 and rows[5:9][0] == rows[5]
