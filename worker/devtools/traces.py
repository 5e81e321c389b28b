"""Parsers for public LLM request traces, each row → one turn's token counts and time.

Formats:
    ``azure``: Azure LLM inference trace 2023 (CSV, CRLF): ``TIMESTAMP,ContextTokens,GeneratedTokens``;
        ``TIMESTAMP`` is ``YYYY-MM-DD HH:MM:SS.fffffff`` (read as UTC, truncated to microseconds);
        prompt = ContextTokens, completion = GeneratedTokens, no cached tokens.
    ``mooncake``: Mooncake FAST'25 trace (JSON Lines): ``timestamp`` (ms from the trace start),
        ``input_length``, ``output_length``, ``hash_ids`` (prefix KV-cache blocks of 512 tokens);
        prompt = input_length, completion = output_length, cached prompt tokens = 512 × the number
        of leading ``hash_ids`` already seen in earlier rows of the file, capped at input_length.

A malformed row raises :class:`TraceError` naming the file, the row (1-based data row; the line of
the file too) and the field; so does a row whose time lies outside the ``occurred_at`` window of
``models.validation`` (default 2000-01-01 to now + 1 day), since its turn would be refused.  The whole file is read before anything is recorded.
"""

from __future__ import annotations

import csv
import json
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from worker.errors import InputError
from worker.validation import InvalidInput, check_occurred_at

TraceFormat = Literal["azure", "mooncake"]
AZURE_HEADER = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
MOONCAKE_BLOCK_TOKENS = 512
# ASCII digits only, to the end of the string: ``\d`` alone also matches other scripts' digits
# ('١٢' → 12) and ``$`` matches before a trailing newline
_TS = re.compile(r"^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?\Z", re.ASCII)
_INT = re.compile(r"^\d+\Z", re.ASCII)
MAX_TOKENS = 10**9  # as models.turn.Tokens
MAX_TIMESTAMP_MS = 10**13  # about 317 years past the trace start


class TraceError(InputError, ValueError):
    """A trace file or row is malformed; the message names the file, row, line and field."""

    def __init__(
        self, path: Path, message: str, *, row: int | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        where = f"{path}"
        if row is not None:
            where += f": row {row}" + (f" (line {line})" if line is not None else "")
        if field is not None:
            where += f", field {field}"
        super().__init__(f"{where}: {message}", field=field)
        self.path, self.row, self.line = path, row, line


@dataclass(frozen=True, slots=True)
class TraceRow:
    """One request of a trace: 1-based data ``row``, its time, and its tokens (integers ≥ 0)."""

    row: int
    occurred_at: datetime
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int


def _tokens(path: Path, value: object, *, row: int, line: int, field: str) -> int:
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _INT.match(value))):
        if isinstance(value, int | str) and str(value).lstrip().startswith("-"):
            raise TraceError(path, f"{value!r} is negative; tokens are integers >= 0", row=row, line=line, field=field)
        raise TraceError(path, f"{value!r} is not a non-negative integer", row=row, line=line, field=field)
    if isinstance(value, str):  # int() refuses more than 4,300 digits (leading zeros too): read the digits that count
        value = value.lstrip("0") or "0"
        if len(value) > len(str(MAX_TOKENS)):
            raise TraceError(
                path, f"{value[:20]}… ({len(value)} digits) exceeds {MAX_TOKENS}", row=row, line=line, field=field
            )
    n = int(value)
    if n < 0:
        raise TraceError(path, f"{n} is negative; tokens are integers >= 0", row=row, line=line, field=field)
    if n > MAX_TOKENS:
        raise TraceError(path, f"{n} exceeds {MAX_TOKENS}", row=row, line=line, field=field)
    return n


def _azure_time(path: Path, value: str, *, row: int, line: int) -> datetime:
    m = _TS.match(value)
    if not m:
        raise TraceError(path, f"{value!r} is not 'YYYY-MM-DD HH:MM:SS.fffffff'", row=row, line=line, field="TIMESTAMP")
    frac = (m.group(7) or "").ljust(6, "0")[:6]
    try:
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        when = datetime(year, month, day, hour, minute, second, int(frac), tzinfo=UTC)
    except ValueError as exc:
        raise TraceError(path, f"{value!r}: {exc}", row=row, line=line, field="TIMESTAMP") from exc
    return _in_window(path, when, row=row, line=line, field="TIMESTAMP")


def _in_window(path: Path, when: datetime, *, row: int, line: int, field: str) -> datetime:
    """``when`` if it lies inside the ``occurred_at`` window of ``models.validation`` (a row's turn
    would be refused otherwise, after earlier rows were recorded); else TraceError naming the row."""
    try:
        return check_occurred_at(when, field)
    except InvalidInput as exc:
        raise TraceError(path, f"occurred_at {exc.message}", row=row, line=line, field=field) from None


def read_azure(path: Path) -> list[TraceRow]:
    """Parse an Azure LLM inference trace CSV.  Raises TraceError."""
    rows: list[TraceRow] = []
    # utf-8-sig: a leading BOM (a spreadsheet's "CSV UTF-8" export) is not part of the header
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise TraceError(path, "empty file: expected the header TIMESTAMP,ContextTokens,GeneratedTokens")
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(path, f"not a CSV file: {exc}") from exc
        if header != AZURE_HEADER:
            raise TraceError(
                path,
                f"header is {','.join(header)[:80]!r}, expected {','.join(AZURE_HEADER)!r} (is this --format azure?)",
                row=0,
                line=1,
            )
        try:
            for n, record in enumerate(reader, start=1):
                line = reader.line_num
                if not record or record == [""]:  # a blank line (e.g. a trailing one) holds no request
                    continue
                if len(record) < 3:
                    raise TraceError(
                        path,
                        f"missing (expected 3 columns, found {len(record)})",
                        row=n,
                        line=line,
                        field=AZURE_HEADER[len(record)],
                    )
                if len(record) > 3:
                    raise TraceError(path, f"expected 3 columns, found {len(record)}", row=n, line=line)
                ts, prompt, completion = record
                rows.append(
                    TraceRow(
                        row=n,
                        occurred_at=_azure_time(path, ts, row=n, line=line),
                        prompt_tokens=_tokens(path, prompt, row=n, line=line, field="ContextTokens"),
                        completion_tokens=_tokens(path, completion, row=n, line=line, field="GeneratedTokens"),
                        cached_prompt_tokens=0,
                    )
                )
        except (csv.Error, UnicodeDecodeError) as exc:
            raise TraceError(path, f"not a CSV file: {exc}", row=len(rows) + 1, line=reader.line_num) from exc
    if not rows:
        raise TraceError(path, "no data rows")
    return rows


def read_mooncake(path: Path, *, epoch: datetime) -> list[TraceRow]:
    """Parse a Mooncake JSONL trace; ``timestamp`` ms are added to ``epoch`` (aware).  Raises TraceError."""
    rows: list[TraceRow] = []
    seen: set[int] = set()
    with path.open(encoding="utf-8-sig") as fh:  # a leading BOM is not part of the first row
        try:
            for line_no, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                n = len(rows) + 1
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise TraceError(
                        path, f"not a JSON object: {exc.msg} (is this --format mooncake?)", row=n, line=line_no
                    ) from exc
                except (ValueError, RecursionError) as exc:  # an integer past 4,300 digits; nesting too deep
                    raise TraceError(path, f"not a trace row: {str(exc)[:120]}", row=n, line=line_no) from None
                if not isinstance(obj, dict):
                    raise TraceError(path, "not a JSON object", row=n, line=line_no)
                for name in ("timestamp", "input_length", "output_length", "hash_ids"):
                    if name not in obj:
                        raise TraceError(path, "missing", row=n, line=line_no, field=name)
                ts = obj["timestamp"]
                if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= MAX_TIMESTAMP_MS:
                    raise TraceError(
                        path, f"{ts!r} is not a non-negative integer of ms", row=n, line=line_no, field="timestamp"
                    )
                prompt = _tokens(path, obj["input_length"], row=n, line=line_no, field="input_length")
                completion = _tokens(path, obj["output_length"], row=n, line=line_no, field="output_length")
                hash_ids = obj["hash_ids"]
                if not isinstance(hash_ids, list) or any(
                    isinstance(h, bool) or not isinstance(h, int) for h in hash_ids
                ):
                    raise TraceError(path, "must be a list of integers", row=n, line=line_no, field="hash_ids")
                leading = 0
                for h in hash_ids:
                    if h not in seen:
                        break
                    leading += 1
                seen.update(hash_ids)
                try:
                    when = epoch + timedelta(milliseconds=ts)
                except OverflowError:
                    raise TraceError(
                        path,
                        f"{ts!r} ms after {epoch.isoformat()} is past year 9999",
                        row=n,
                        line=line_no,
                        field="timestamp",
                    ) from None
                rows.append(
                    TraceRow(
                        row=n,
                        occurred_at=_in_window(path, when, row=n, line=line_no, field="timestamp"),
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        cached_prompt_tokens=min(prompt, MOONCAKE_BLOCK_TOKENS * leading),
                    )
                )
        except UnicodeDecodeError as exc:
            raise TraceError(path, f"not UTF-8 text: {exc}", row=len(rows) + 1) from exc
    if not rows:
        raise TraceError(path, "no data rows")
    return rows


def read_trace(path: str | Path, fmt: TraceFormat, *, epoch: datetime | None = None) -> list[TraceRow]:
    """Read a whole trace of format ``fmt``; Mooncake's relative times start at ``epoch`` (default:
    now, UTC).  Raises TraceError (also for a path that is not a readable regular file, named as
    what it is, or an unknown format)."""
    path = Path(path)
    if problem := _not_a_trace_file(path):
        raise TraceError(path, problem)
    try:
        if fmt == "azure":
            return read_azure(path)
        if fmt == "mooncake":
            return read_mooncake(path, epoch=epoch or datetime.now(UTC))
    except OSError as exc:  # unreadable (permissions, an I/O error): never a traceback
        raise TraceError(path, f"cannot be read: {exc.strerror or exc}") from exc
    raise TraceError(path, f"unknown format {fmt!r}: expected azure or mooncake")


def _not_a_trace_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file a trace can be read from, or None: missing, a directory,
    or a device, FIFO or socket (reading ``/dev/zero`` or a FIFO would never end)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:  # a loop of symlinks, a name too long, a folder on the way not searchable
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a trace file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, FIFO or socket)"
    return None
