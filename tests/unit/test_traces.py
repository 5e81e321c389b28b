"""worker.devtools.traces: Azure LLM inference trace CSV and Mooncake JSONL → turns' token counts and times."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from worker.devtools.traces import TraceError, TraceRow, read_trace

DATA = Path(__file__).resolve().parents[2] / "worker" / "devtools" / "data"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def _azure(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(("".join(f"{line}\r\n" for line in (header, *rows))).encode())
    return p


def _mooncake(tmp_path: Path, *objs: object, name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return p


def _mc(ts: int, inp: int, out: int, hashes: list[int]) -> dict:
    return {"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": hashes}


# --- Azure ------------------------------------------------------------------------------------


def test_azure_parses_exact_values(tmp_path):
    p = _azure(
        tmp_path,
        "2023-11-16 18:15:46.6805900,374,44",
        "2023-11-16 18:15:50.9951690,396,109",
        "2023-11-16 18:17:03.9799609,4808,10",  # 7th digit truncated, not rounded
        "2023-11-16 23:59:59.0000001,0,0",
    )
    rows = read_trace(p, "azure")
    assert rows == [
        TraceRow(1, datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC), 374, 44, 0),
        TraceRow(2, datetime(2023, 11, 16, 18, 15, 50, 995169, tzinfo=UTC), 396, 109, 0),
        TraceRow(3, datetime(2023, 11, 16, 18, 17, 3, 979960, tzinfo=UTC), 4808, 10, 0),
        TraceRow(4, datetime(2023, 11, 16, 23, 59, 59, 0, tzinfo=UTC), 0, 0, 0),
    ]
    assert all(type(r.prompt_tokens) is int and type(r.completion_tokens) is int for r in rows)
    assert rows[0].occurred_at.utcoffset() == timedelta(0)


def test_azure_lf_line_endings_also_parse(tmp_path):
    p = tmp_path / "lf.csv"
    p.write_text(f"{HEADER}\n2023-11-16 18:15:46.6805900,374,44\n")
    assert read_trace(p, "azure") == [TraceRow(1, datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC), 374, 44, 0)]


def _raises(path: Path, fmt: str, **kw) -> TraceError:
    with pytest.raises(TraceError) as info:
        read_trace(path, fmt, **kw)
    assert isinstance(info.value, ValueError)
    return info.value


@pytest.mark.parametrize(
    ("bad_row", "field"),
    [
        ("2023-11-16 18:15:50.9951690,-5,109", "ContextTokens"),
        ("2023-11-16 18:15:50.9951690,396,-1", "GeneratedTokens"),
        ("2023-11-16 18:15:50.9951690,12.5,109", "ContextTokens"),
        ("2023-11-16 18:15:50.9951690,396,abc", "GeneratedTokens"),
        ("2023-11-16 18:15:50.9951690,,109", "ContextTokens"),
        ("2023-11-16 18:15:50.9951690,396, 7", "GeneratedTokens"),
        ("2023-11-16 18:15:50.9951690,1e3,109", "ContextTokens"),
        ("2023-11-16 18:15:50.9951690,396,1000000000001", "GeneratedTokens"),
        ("2023-11-16 18:15:50.9951690," + "9" * 5000 + ",109", "ContextTokens"),  # past int()'s 4,300 digits
        ("2023-13-16 18:15:50.9951690,396,109", "TIMESTAMP"),
        ("2023-02-30 18:15:50.9951690,396,109", "TIMESTAMP"),
        ("16/11/2023 18:15:50,396,109", "TIMESTAMP"),
        ("2023-11-16T18:15:50.9951690,396,109", "TIMESTAMP"),
        (",396,109", "TIMESTAMP"),
    ],
)
def test_azure_bad_row_names_row_and_field(tmp_path, bad_row, field):
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,374,44", bad_row, "2023-11-16 18:15:51.0000000,1,1")
    err = _raises(p, "azure")
    assert (err.row, err.line, err.field) == (2, 3, field)
    msg = str(err)
    assert "row 2" in msg
    assert field in msg
    assert str(p) in msg


def test_azure_negative_message_says_negative(tmp_path):
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,-5,44")
    assert "negative" in str(_raises(p, "azure"))


def test_azure_missing_field_names_row_and_field(tmp_path):
    missing = "GeneratedTokens"
    p = _azure(tmp_path, "2023-11-16 18:15:40.0000000,1,1", "2023-11-16 18:15:46.6805900,374")
    err = _raises(p, "azure")
    msg = str(err)
    assert err.row == 2
    assert "row 2" in msg
    assert missing in msg


def test_azure_extra_column_names_row(tmp_path):
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,374,44,9")
    err = _raises(p, "azure")
    assert err.row == 1 and "row 1" in str(err) and "4" in str(err)


def test_mooncake_file_given_as_azure(tmp_path):
    p = _mooncake(tmp_path, _mc(0, 100, 10, [0]), name="mooncake.jsonl")
    err = _raises(p, "azure")
    msg = str(err)
    assert "header" in msg
    assert "TIMESTAMP,ContextTokens,GeneratedTokens" in msg
    assert "azure" in msg
    assert err.row == 0 and err.line == 1


def test_azure_wrong_header(tmp_path):
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,374,44", header="TIMESTAMP,GeneratedTokens,ContextTokens")
    assert "header" in str(_raises(p, "azure"))


def test_azure_empty_file(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_bytes(b"")
    msg = str(_raises(p, "azure"))
    assert "empty" in msg and str(p) in msg


def test_azure_header_only(tmp_path):
    p = _azure(tmp_path)
    assert "no data rows" in str(_raises(p, "azure"))


def test_azure_not_utf8(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(HEADER.encode() + b"\r\n\xff\xfe,1,2\r\n")
    _raises(p, "azure")


# --- Mooncake ---------------------------------------------------------------------------------


def test_mooncake_cached_tokens_from_leading_seen_hash_ids(tmp_path):
    p = _mooncake(
        tmp_path,
        _mc(0, 2000, 10, [0, 1, 2, 3]),  # nothing seen yet → 0
        _mc(1500, 3000, 20, [0, 1, 9]),  # 0 and 1 seen, 9 new → 2 × 512
        _mc(3000, 700, 5, [0, 1, 2]),  # 3 × 512 = 1536, capped at input_length 700
        _mc(3001, 5000, 7, [7, 0, 1]),  # 7 new: the later seen ids are not leading → 0
        _mc(4000, 6000, 8, [9, 7, 1, 42, 0]),  # 9 (row 2), 7 (row 4), 1 seen; 42 new → 3 × 512
        _mc(4000, 100, 1, []),  # no blocks → 0
        _mc(5000, 512, 1, [42]),  # exactly one block: 512, cap not binding
    )
    rows = read_trace(p, "mooncake", epoch=EPOCH)
    assert [(r.row, r.prompt_tokens, r.completion_tokens, r.cached_prompt_tokens) for r in rows] == [
        (1, 2000, 10, 0),
        (2, 3000, 20, 1024),
        (3, 700, 5, 700),
        (4, 5000, 7, 0),
        (5, 6000, 8, 1536),
        (6, 100, 1, 0),
        (7, 512, 1, 512),
    ]
    assert [r.occurred_at for r in rows] == [
        EPOCH,
        EPOCH + timedelta(milliseconds=1500),
        EPOCH + timedelta(seconds=3),
        EPOCH + timedelta(milliseconds=3001),
        EPOCH + timedelta(seconds=4),
        EPOCH + timedelta(seconds=4),
        EPOCH + timedelta(seconds=5),
    ]


def test_mooncake_ids_repeated_within_one_row_are_not_seen_before(tmp_path):
    p = _mooncake(tmp_path, _mc(0, 5000, 1, [5, 5, 5]), _mc(1, 5000, 1, [5, 5, 6]))
    assert [r.cached_prompt_tokens for r in read_trace(p, "mooncake", epoch=EPOCH)] == [0, 1024]


def test_mooncake_blank_lines_skipped_row_numbers_count_data_rows(tmp_path):
    p = _mooncake(tmp_path, _mc(0, 10, 1, [0]), "", _mc(1, 20, 2, [0]), "   ", _mc(2, -3, 2, [0]))
    err = _raises(p, "mooncake", epoch=EPOCH)
    assert (err.row, err.line, err.field) == (3, 5, "input_length")
    assert "row 3 (line 5)" in str(err)


def test_mooncake_default_epoch_is_now(tmp_path):
    p = _mooncake(tmp_path, _mc(60_000, 10, 1, [0]))
    before = datetime.now(UTC)
    (row,) = read_trace(p, "mooncake")
    after = datetime.now(UTC)
    assert before + timedelta(minutes=1) <= row.occurred_at <= after + timedelta(minutes=1)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (_mc(10, -1, 5, [0]), "input_length"),
        (_mc(10, 100, -5, [0]), "output_length"),
        (_mc(10, 100.5, 5, [0]), "input_length"),
        (_mc(10, 100, 5.0, [0]), "output_length"),
        (_mc(10, 100, True, [0]), "output_length"),
        (_mc(10, None, 5, [0]), "input_length"),
        (_mc(10, "abc", 5, [0]), "input_length"),
        (_mc(10, 100, 5, [0, "1"]), "hash_ids"),
        (_mc(10, 100, 5, [0, 1.0]), "hash_ids"),
        (_mc(10, 100, 5, "0,1"), "hash_ids"),
        (_mc(-1, 100, 5, [0]), "timestamp"),
        (_mc(1.5, 100, 5, [0]), "timestamp"),
        (_mc("2023-11-16", 100, 5, [0]), "timestamp"),
        ({"input_length": 100, "output_length": 5, "hash_ids": [0]}, "timestamp"),
        ({"timestamp": 0, "output_length": 5, "hash_ids": [0]}, "input_length"),
        ({"timestamp": 0, "input_length": 5, "hash_ids": [0]}, "output_length"),
        ({"timestamp": 0, "input_length": 5, "output_length": 5}, "hash_ids"),
    ],
)
def test_mooncake_bad_row_names_row_and_field(tmp_path, bad, field):
    p = _mooncake(tmp_path, _mc(0, 10, 1, [0]), bad, _mc(20, 10, 1, [0]))
    err = _raises(p, "mooncake", epoch=EPOCH)
    assert (err.row, err.line, err.field) == (2, 2, field)
    msg = str(err)
    assert "row 2" in msg and field in msg and str(p) in msg


def test_mooncake_negative_message_says_negative(tmp_path):
    p = _mooncake(tmp_path, _mc(0, -10, 1, [0]))
    assert "negative" in str(_raises(p, "mooncake", epoch=EPOCH))


def test_mooncake_row_not_an_object(tmp_path):
    p = _mooncake(tmp_path, _mc(0, 10, 1, [0]), "[1, 2, 3]")
    err = _raises(p, "mooncake", epoch=EPOCH)
    assert err.row == 2 and "row 2" in str(err)


def test_mooncake_truncated_json(tmp_path):
    p = _mooncake(tmp_path, _mc(0, 10, 1, [0]), '{"timestamp": 0, "input_length": 1')
    err = _raises(p, "mooncake", epoch=EPOCH)
    assert err.row == 2 and "row 2" in str(err)


def test_azure_file_given_as_mooncake(tmp_path):
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,374,44", name="azure.csv")
    err = _raises(p, "mooncake", epoch=EPOCH)
    assert err.row == 1 and "row 1" in str(err)
    assert "mooncake" in str(err)


def test_mooncake_empty_file(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    assert "no data rows" in str(_raises(p, "mooncake", epoch=EPOCH))
    p.write_text("\n\n")
    assert "no data rows" in str(_raises(p, "mooncake", epoch=EPOCH))


def test_missing_file_and_unknown_format(tmp_path):
    assert "no such file" in str(_raises(tmp_path / "nope.csv", "azure"))
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,374,44")
    assert "burstgpt" in str(_raises(p, "burstgpt"))


def test_a_path_that_is_not_a_readable_regular_file_is_named_as_what_it_is(tmp_path, monkeypatch):
    """A directory, a FIFO, a device (reading /dev/zero would never end), a symlink loop and an
    unreadable file are each a TraceError that says what the path is, never a hang or a traceback."""
    import os

    assert "is a directory" in str(_raises(tmp_path, "azure"))
    fifo = tmp_path / "trace.fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in str(_raises(fifo, "mooncake", epoch=EPOCH))
    assert "not a regular file" in str(_raises(Path("/dev/zero"), "azure"))
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    assert "cannot be read" in str(_raises(loop, "azure"))
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,374,44")
    real_open = Path.open

    def refused(self, *args, **kwargs):  # as for a file the process may not read (root reads any mode)
        if self == p:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refused)
    assert "cannot be read: Permission denied" in str(_raises(p, "azure"))


# --- bundled samples --------------------------------------------------------------------------


def _plain_azure(path: Path) -> list[tuple[str, int, int]]:
    lines = path.read_bytes().decode().split("\r\n")
    assert lines[0] == HEADER and lines[-1] == ""
    return [(ts, int(a), int(b)) for ts, a, b in (line.split(",") for line in lines[1:-1])]


@pytest.mark.parametrize(
    ("name", "count"), [("azure_llm_2023_conv_sample.csv", 2000), ("azure_llm_2023_code_sample.csv", 2000)]
)
def test_bundled_azure_samples(name, count):
    path = DATA / name
    rows = read_trace(path, "azure")
    plain = _plain_azure(path)
    assert len(rows) == len(plain) == count
    assert [r.row for r in rows] == list(range(1, count + 1))
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [(a, b) for _, a, b in plain]
    assert all(r.cached_prompt_tokens == 0 for r in rows)
    assert [r.occurred_at for r in rows] == [
        datetime.strptime(ts[:26], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC) for ts, _, _ in plain
    ]


def test_bundled_conv_sample_first_row():
    first = read_trace(DATA / "azure_llm_2023_conv_sample.csv", "azure")[0]
    assert first == TraceRow(1, datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC), 374, 44, 0)


def _independent_mooncake_cached(path: Path) -> list[int]:
    """Cached prompt tokens per row, computed independently of worker.devtools.traces."""
    out: list[int] = []
    known: dict[int, bool] = {}
    for text in path.read_text().splitlines():
        if not text.strip():
            continue
        rec = json.loads(text)
        ids = rec["hash_ids"]
        k = 0
        while k < len(ids) and known.get(ids[k], False):
            k += 1
        out.append(min(rec["input_length"], k * 512))
        for h in ids:
            known[h] = True
    return out


def test_bundled_mooncake_sample():
    path = DATA / "mooncake_fast25_conversation_sample.jsonl"
    rows = read_trace(path, "mooncake", epoch=EPOCH)
    assert len(rows) == 1000
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r.prompt_tokens, r.completion_tokens) for r in rows] == [
        (o["input_length"], o["output_length"]) for o in recs
    ]
    assert [r.occurred_at for r in rows] == [EPOCH + timedelta(milliseconds=o["timestamp"]) for o in recs]
    assert [r.cached_prompt_tokens for r in rows] == _independent_mooncake_cached(path)
    # the first three rows: [0..13], then [0, 14, ...] and [0, 28, ...] share only block 0
    assert [r.cached_prompt_tokens for r in rows[:3]] == [0, 512, 512]
    assert sum(r.cached_prompt_tokens for r in rows) > 0


# --- the full shared slices -------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="/work/shared/data is not present")


@needs_shared
def test_shared_azure_conv_totals():
    rows = read_trace(SHARED / "azure_llm_2023_conv_shared.csv", "azure")
    assert len(rows) == 13_927
    assert sum(r.prompt_tokens for r in rows) == 16_726_570
    assert sum(r.completion_tokens for r in rows) == 2_802_253
    assert rows[-1].occurred_at == datetime(2023, 11, 16, 18, 54, 59, 924603, tzinfo=UTC)


@needs_shared
def test_shared_azure_code_totals():
    rows = read_trace(SHARED / "azure_llm_2023_code_shared.csv", "azure")
    assert len(rows) == 7_000
    assert sum(r.prompt_tokens for r in rows) == 14_232_820
    assert sum(r.completion_tokens for r in rows) == 193_114


@needs_shared
def test_shared_samples_are_prefixes_of_shared_slices():
    conv = read_trace(SHARED / "azure_llm_2023_conv_shared.csv", "azure")
    assert read_trace(DATA / "azure_llm_2023_conv_sample.csv", "azure") == conv[:2000]


@needs_shared
def test_shared_mooncake_cached_tokens():
    path = SHARED / "mooncake_fast25_conversation_shared.jsonl"
    rows = read_trace(path, "mooncake", epoch=EPOCH)
    assert len(rows) == 7_851
    assert sum(r.prompt_tokens for r in rows) == 97_571_920
    assert sum(r.completion_tokens for r in rows) == 2_724_903
    expected = _independent_mooncake_cached(path)
    assert [r.cached_prompt_tokens for r in rows] == expected
    total_cached = sum(r.cached_prompt_tokens for r in rows)
    assert total_cached == sum(expected)
    # the slice's README: mean 4,444.9 prefix-reusable tokens per request, 35.8 % of input tokens
    assert round(total_cached / 7_851, 1) == 4444.9
    assert round(100 * total_cached / 97_571_920, 1) == 35.8
    assert rows[-1].occurred_at == EPOCH + timedelta(milliseconds=2_397_000)


@pytest.mark.parametrize(
    "line",
    [
        '{"timestamp": 1, "input_length": 10, "output_length": 2, "hash_ids": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"timestamp": 1, "input_length": ' + "9" * 5000 + ', "output_length": 2, "hash_ids": [1]}',
    ],
    ids=["nested 100,000 deep", "a 5,000-digit integer"],
)
def test_mooncake_a_row_json_cannot_read_is_a_trace_error_naming_its_row(tmp_path, line):
    """json.loads raises RecursionError and a plain ValueError (int()'s digit limit) for these, not
    JSONDecodeError: they escaped as those before."""
    p = _mooncake(tmp_path, _mc(0, 10, 2, [1]), line)
    err = _raises(p, "mooncake", epoch=EPOCH)
    assert (err.row, err.line) == (2, 2)
    assert "row 2" in str(err)


def test_azure_leading_zeros_past_int_s_digit_limit_read_as_the_number(tmp_path):
    p = _azure(tmp_path, "2023-11-16 18:15:46.6805900,374," + "0" * 4999 + "7")
    assert [r.completion_tokens for r in read_trace(p, "azure")] == [7]


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_a_leading_byte_order_mark_is_not_data(tmp_path, newline):
    """A spreadsheet's "CSV UTF-8" export and some editors start the file with U+FEFF: the header
    read '\\ufeffTIMESTAMP' and was refused as a wrong header, a JSONL's first row as not JSON.
    A BOM anywhere else is still data (and refused where data may not hold it)."""
    azure = tmp_path / "bom.csv"
    azure.write_bytes(f"\ufeff{HEADER}{newline}2023-11-16 18:15:46.6805900,374,44{newline}".encode())
    assert read_trace(azure, "azure") == [
        TraceRow(1, datetime(2023, 11, 16, 18, 15, 46, 680590, tzinfo=UTC), 374, 44, 0)
    ]
    mooncake = tmp_path / "bom.jsonl"
    rows_text = newline.join(json.dumps(o) for o in (_mc(0, 2000, 10, [0]), _mc(5, 30, 1, [0])))
    mooncake.write_bytes(f"\ufeff{rows_text}{newline}".encode())
    rows = read_trace(mooncake, "mooncake", epoch=EPOCH)
    assert [(r.row, r.prompt_tokens, r.completion_tokens, r.cached_prompt_tokens) for r in rows] == [
        (1, 2000, 10, 0),
        (2, 30, 1, 30),
    ]
    second = tmp_path / "bom2.csv"
    second.write_bytes(f"{HEADER}{newline}\ufeff2023-11-16 18:15:46.6805900,374,44{newline}".encode())
    with pytest.raises(TraceError, match="TIMESTAMP"):
        read_trace(second, "azure")
