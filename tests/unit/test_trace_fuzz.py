"""Fuzzing the trace parsers (``worker.devtools.traces``) with hypothesis: whatever the bytes, a parser either
returns rows of integer tokens in range or raises ``TraceError`` (the documented error type) naming
the file and, for a bad row, the row, line and field.  A single corrupted field in an otherwise
valid file is reported at exactly that row and field."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.devtools.traces import MAX_TOKENS, TraceError, TraceRow, read_trace

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(data: bytes, suffix: str) -> Path:
    fd = tempfile.NamedTemporaryFile(prefix="tollgate-fuzz-", suffix=suffix, delete=False)
    fd.write(data)
    fd.close()
    return Path(fd.name)


def _parse(data: bytes, fmt: str):
    path = _write(data, ".csv" if fmt == "azure" else ".jsonl")
    try:
        return path, read_trace(path, fmt, epoch=EPOCH)
    except TraceError as exc:
        return path, exc
    finally:
        path.unlink()


def _check_rows_or_error(path: Path, result) -> None:
    if isinstance(result, TraceError):
        assert str(result).startswith(str(path))
        if result.row is not None:
            assert f"row {result.row}" in str(result)
        if result.field is not None:
            assert f"field {result.field}" in str(result)
        return
    assert result, "a parse that succeeds has rows"
    for i, row in enumerate(result, start=1):
        assert isinstance(row, TraceRow) and row.row == i
        for n in (row.prompt_tokens, row.completion_tokens, row.cached_prompt_tokens):
            assert type(n) is int and 0 <= n <= MAX_TOKENS
        assert row.cached_prompt_tokens <= row.prompt_tokens
        assert row.occurred_at.tzinfo is not None and row.occurred_at.utcoffset().total_seconds() == 0


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(["azure", "mooncake"]))
def test_arbitrary_bytes_parse_or_raise_trace_error_only(data, fmt):
    _check_rows_or_error(*_parse(data, fmt))


@FUZZ
@given(
    st.lists(
        st.lists(st.one_of(st.text(max_size=12), st.integers(-(10**12), 10**12).map(str)), max_size=5), max_size=6
    ),
    st.booleans(),
)
def test_azure_arbitrary_cells_parse_or_raise_trace_error_only(rows, crlf):
    nl = "\r\n" if crlf else "\n"
    text_ = HEADER + nl + "".join(",".join(cells) + nl for cells in rows)
    try:
        data = text_.encode()
    except UnicodeEncodeError:  # lone surrogates: not text a file can hold
        return
    _check_rows_or_error(*_parse(data, "azure"))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**13), 10**14) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["timestamp", "input_length", "output_length", "hash_ids", "x"]), JSON_VALUES, max_size=5
        ),
        max_size=5,
    )
)
def test_mooncake_arbitrary_objects_parse_or_raise_trace_error_only(objs):
    data = "".join(json.dumps(o) + "\n" for o in objs).encode()
    _check_rows_or_error(*_parse(data, "mooncake"))


BAD_TOKENS = st.sampled_from(["-1", "1.5", "", " 7", "1e3", "0x10", str(MAX_TOKENS + 1), "NaN", "١٢"])
BAD_TIMES = st.sampled_from(
    [
        "",
        "2023-13-01 00:00:00",
        "2023-02-30 10:00:00.1",
        "2023-11-16T18:15:46",
        "yesterday",
        "2023-11-16 24:00:00",
        "2023-11-16 18:15:46.1234567890",
    ]
)


@FUZZ
@given(n=st.integers(1, 8), data=st.data())
def test_azure_one_bad_field_is_reported_at_its_row_and_field(n, data):
    rows = [[f"2023-11-16 18:15:{i:02d}.5000000", str(100 + i), str(10 + i)] for i in range(n)]
    k = data.draw(st.integers(0, n - 1))
    column = data.draw(st.integers(0, 2))
    rows[k][column] = data.draw(BAD_TIMES if column == 0 else BAD_TOKENS)
    path, result = _parse(("".join(",".join(r) + "\r\n" for r in [HEADER.split(","), *rows])).encode(), "azure")
    assert isinstance(result, TraceError), result
    assert (result.row, result.line, result.field) == (k + 1, k + 2, HEADER.split(",")[column])
    assert f"row {k + 1} (line {k + 2}), field {HEADER.split(',')[column]}" in str(result)


@FUZZ
@given(n=st.integers(1, 8), data=st.data())
def test_mooncake_one_bad_field_is_reported_at_its_row_and_field(n, data):
    objs = [
        {"timestamp": 10 * i, "input_length": 600 + i, "output_length": 5 + i, "hash_ids": [i, i + 1]} for i in range(n)
    ]
    k = data.draw(st.integers(0, n - 1))
    field = data.draw(st.sampled_from(["timestamp", "input_length", "output_length", "hash_ids"]))
    bad = data.draw(
        {
            "timestamp": st.sampled_from([-1, 1.5, "10", None, True, 10**13 + 1]),
            "input_length": st.sampled_from([-3, 2.0, "1e2", None, False, MAX_TOKENS + 1]),
            "output_length": st.sampled_from([-3, 2.5, "x", None, True, [1]]),
            "hash_ids": st.sampled_from([None, 5, "1,2", [1, "2"], [True], {"a": 1}]),
        }[field]
    )
    objs[k][field] = bad
    path, result = _parse("".join(json.dumps(o) + "\n" for o in objs).encode(), "mooncake")
    assert isinstance(result, TraceError), result
    assert (result.row, result.line, result.field) == (k + 1, k + 1, field)
    assert f"row {k + 1} (line {k + 1}), field {field}" in str(result)
