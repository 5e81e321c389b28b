"""parse_entry's version-5 fast path (``_row_v5``) reads the same row as its general path (the payload
in the version-4 layout, the decision's figures under the older field names), and refuses what the
general path refuses."""

from __future__ import annotations

import itertools
import json

import orjson
import pytest

from worker.gate import outbox
from worker.gate.outbox import BadEntry, parse_entry

BASE = [
    5,
    "turn-1",
    "w1",
    "ent-7",
    "chat-9",
    "wf",
    "planner",
    "gpt-4o",
    "openai",
    1000,
    100,
    200,
    1234,
    "25e8,125e7,1e10,3125e6,5e9",
    4_250_000,
    1_748_770_215_654_321,
]
METER = ["image", 3, 40, 50, "priority"]


def general(fields: dict[str, str], outbox_id: str) -> dict:
    """The row of the general path: no ``g`` field, its figures as an older gate wrote them."""
    return parse_entry({"t": fields["t"], **outbox._decision(fields)}, outbox_id)


@pytest.mark.parametrize("meter", [[], METER], ids=["llm-defaults", "meter"])
@pytest.mark.parametrize("codes", ["".join(c) for c in itertools.product("cp", "PDTK", "ap", "01")])
@pytest.mark.parametrize("bal", ["", "-17", "999999997865000"])
def test_fast_path_reads_the_general_path_row(meter, codes, bal):
    fields = {"t": orjson.dumps([*BASE, *meter]).decode(), "g": f"4250000|{bal}|{codes}|7000|12|3"}
    row = parse_entry(fields, "2:17-3")
    assert row == general(fields, "2:17-3")
    assert row["billed_nanos"] == 4_250_000 and type(row["billed_nanos"]) is int
    assert row["creator_share_nanos"] == (0 if codes[2] == "p" else 4_250_000 * 7000 // 10_000)
    assert row["cache_write_1h_nanos_per_mtok"] == 5_000_000_000


def test_a_payload_integer_past_64_bits_stays_an_exact_integer():
    """orjson reads such an integer as a float: the payload is read again with json (exact)."""
    big = 2**64 + 1
    fields = {"t": json.dumps([*BASE[:14], big, BASE[15]]), "g": "1|5|cPa1|0|0|0"}
    row = parse_entry(fields, "0:1-0")
    assert row["cost_nanos"] == big and type(row["cost_nanos"]) is int


@pytest.mark.parametrize(
    "t, g",
    [
        (json.dumps(BASE[:15]), "1|5|cPa1|0|0|0"),  # 15 elements
        (json.dumps([*BASE, "llm"]), "1|5|cPa1|0|0|0"),  # 17 elements
        (json.dumps([*BASE[:13], 25, *BASE[14:]]), "1|5|cPa1|0|0|0"),  # rates not a string
        (json.dumps([*BASE[:13], "25e8,1", *BASE[14:]]), "1|5|cPa1|0|0|0"),  # two rates
        (json.dumps([*BASE[:13], "25e8,x,1,1,1", *BASE[14:]]), "1|5|cPa1|0|0|0"),  # not a rate
        (json.dumps([*BASE[:13], ["a"], *BASE[14:]]), "1|5|cPa1|0|0|0"),  # unhashable rates
        (json.dumps(BASE), "1|5|cPa2|0|0|0"),  # billable code
        (json.dumps(BASE), "1|5|xPa1|0|0|0"),  # action code
        (json.dumps(BASE), "1|5|cPa1|0|0"),  # five figures
        (json.dumps(BASE), "x|5|cPa1|0|0|0"),  # billed not an integer
        (json.dumps(BASE), "1|5|cPa1|0|0|z"),  # debt not an integer
        (json.dumps([*BASE[:15], 10**30]), "1|5|cPa1|0|0|0"),  # ts past timedelta
        ("[5, NaN", "1|5|cPa1|0|0|0"),  # not JSON
    ],
)
def test_fast_path_refuses_what_the_general_path_refuses(t, g):
    with pytest.raises(BadEntry):
        parse_entry({"t": t, "g": g}, "0:1-0")


def test_rates_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(outbox, "_RATES", {})
    monkeypatch.setattr(outbox, "_RATES_MAX", 3)
    for i in range(10):
        fields = {"t": json.dumps([*BASE[:13], f"{i + 1},2,3,4,5", *BASE[14:]]), "g": "1|5|cPa1|0|0|0"}
        assert parse_entry(fields)["input_nanos_per_mtok"] == i + 1
    assert len(outbox._RATES) == 3
