"""CSV cells a spreadsheet will not run: the one place every CSV writer of the API escapes formula
injection (OWASP "CSV Injection").

A text cell whose first character is ``=``, ``+``, ``-`` or ``@`` or a compatibility form of one
(NFKC: full-width ``＝ ＋ － ＠``, small ``﹦ ﹢ ﹣ ﹫``, super- and subscript ``⁼ ⁺ ₌ ₊``, ``⩵``, Hebrew
``﬩``), also after leading whitespace or invisible format characters (a zero-width space, a BOM),
or whose first character is a tab, carriage return or line feed, is written with a leading ``'``: Excel, LibreOffice and Google Sheets then show it as
text instead of evaluating it (``=HYPERLINK(…)``, ``@SUM(…)``, ``-2+3+cmd|…``).  A plain signed
number (``-12``, ``+3.5``) is not a formula and stays as it is, so money and counts parse back
exactly.  Non-text values are left alone (integers stay integers), datetimes become ISO 8601.

Rows end with CRLF (RFC 4180) through :func:`csv_writer`: Python's ``csv`` quotes a field only for
the characters of its line terminator, so with ``"\n"`` a bare carriage return inside a cell would be
written unquoted and split the row for a spreadsheet; with ``"\r\n"`` every CR or LF in a cell is
quoted.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from typing import Any, Iterable, TextIO

#: characters that start a formula in a spreadsheet (after optional whitespace), and every
#: character whose compatibility form (NFKC) starts with one (the test suite scans Unicode for them)
FORMULA_CHARS = frozenset(
    "=+-@\u207a\u207c\u208a\u208c\u2a75\u2a76\ufb29\ufe62\ufe63\ufe66\ufe6b\uff0b\uff0d\uff1d\uff20"
)
#: characters that, first in a cell, make some spreadsheets split or evaluate it
CONTROL_CHARS = frozenset("\t\r\n")
#: a signed number in ASCII digits, which stays as it is (``\d`` alone would take other scripts' digits)
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")


def _first_shown(value: str) -> str:
    """The first character of ``value`` that is neither whitespace nor an invisible format
    character (Unicode Cf: zero-width spaces and joiners, the BOM, bidi controls), or ``""``."""
    for ch in value:
        if not ch.isspace() and unicodedata.category(ch) != "Cf":
            return ch
    return ""


def safe_cell(value: Any) -> Any:
    """``value`` as a CSV cell: datetimes/dates ISO 8601; a text that a spreadsheet would evaluate
    gets a leading ``'`` (see the module docstring); anything else unchanged."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, str) and value:
        if value[0] in CONTROL_CHARS:
            return "'" + value
        first = _first_shown(value)
        if first in FORMULA_CHARS and not _PLAIN_NUMBER.fullmatch(value):
            return "'" + value
    return value


def csv_writer(stream: TextIO):
    """The CSV writer every export uses: RFC 4180 (comma, ``"`` quoting, CRLF rows), so any CR or
    LF inside a cell is quoted; write rows through :func:`safe_row`."""
    return csv.writer(stream, lineterminator="\r\n")


def safe_row(values: Iterable[Any]) -> list[Any]:
    """A CSV row with every cell passed through :func:`safe_cell`."""
    return [safe_cell(v) for v in values]


__all__ = ["CONTROL_CHARS", "FORMULA_CHARS", "csv_writer", "safe_cell", "safe_row"]
