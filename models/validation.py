"""Edge validation, defined once: what text, sizes and times tollgate accepts from outside.

Every entry point uses these: the turn and the other input models (the ``XCreate`` shapes of
the record families in ``models``, the API's path parameters), the Celery task ``tollgate.usage.record_turn``
(through ``TurnIn``), the Python services that take ids and keys directly (``worker.ledger.accounts``,
``WalletGate.reserve``), the CLI and the trace parsers.

Text classes (code points refused, with an error naming the field):

- **Id** (wallet, enterprise, chat, turn, reservation, workflow, agent, idempotency keys): any
  whitespace, control characters (Unicode Cc: NUL, C0, DEL, C1), surrogates (Cs: PostgreSQL cannot
  store a lone one), and every format character (Cf: U+202E and the other bidi overrides and
  isolates, zero-width spaces and joiners, U+FEFF, soft hyphen …).  Cf is refused in ids on purpose:
  an id must look like what it is in a log, a CSV or the /billing page, and two ids that render the
  same must not be different ids.  Also U+2028/U+2029 (line and paragraph separators) and the other
  default-ignorable code points, which render as nothing though they are letters or marks (the
  combining grapheme joiner U+034F, Hangul fillers U+3164 …, variation selectors U+FE00–U+FE0F …),
  private-use characters (Co) and the 66 noncharacters (U+FDD0–U+FDEF, U+xFFFE/U+xFFFF), which have
  no agreed glyph.
- **Label** (model, provider, a pause reason): as an id, but a plain space (U+0020) is allowed inside.

A caller's credit key that reads as a system key (``stripe:``, ``tollgate:``) once compatibility
forms, case and Unicode's look-alikes are folded is refused by :func:`reads_as_prefix`.
- **FreeText** (a credit's description): control characters other than tab and newline,
  surrogates, bidi overrides and isolates (U+202A–U+202E, U+2066–U+2069) and U+2028/U+2029;
  other format characters (emoji joiners) are allowed.

Lengths (code points, as PostgreSQL's ``varchar(n)`` counts them): ids 1..200 (``MAX_ID``), a
``turn_id`` 1..300 (``MAX_TURN_ID``), model 1..200, provider 1..100, a pause reason 1..200, a
description 0..500.

Times: ``occurred_at`` (and a chat's start and end) must carry a time zone; it is converted to UTC
without ever raising ``OverflowError`` (an offset at year 1 or 9999 is refused as out of range) and
must lie inside ``[earliest, now + max_ahead_s]``, a window the worker passes in from its settings
(``configure_occurred_at_window``; default 2000-01-01T00:00Z to one day ahead).

Python callers get ``worker.errors.InvalidInput`` (a ``ValueError`` with ``.field``) from the
raising checks in ``worker.validation`` (models import nothing of ours), or a ``pydantic.ValidationError`` whose error ``loc`` is the field from the annotated
types; the HTTP API answers 422 ``application/problem+json`` naming the field.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Annotated

from confusable_homoglyphs.confusables import confusables_data  # type: ignore[import-untyped]
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

MAX_ID = 200
MAX_TURN_ID = 300
MAX_MODEL = 200
MAX_PROVIDER = 100
MAX_LABEL = 200
MAX_DESCRIPTION = 500


def _format_chars() -> str:
    """Every code point of Unicode category Cf in this Python's Unicode database, as a regex class
    body.  Cf lives in planes 0, 1 and 14 only (planes 2..13 are ideographs or unassigned, 15..16
    private use), so only those are scanned (an import costs ~50 ms, not ~500)."""
    planes = (range(0x20000), range(0xE0000, 0xE1000))
    return "".join(re.escape(chr(c)) for r in planes for c in r if unicodedata.category(chr(c)) == "Cf")


_CONTROL = "\\x00-\\x1f\\x7f-\\x9f"
_SURROGATE = "\\ud800-\\udfff"
_SEPARATORS = "\\u2028\\u2029"
_BIDI = "\\u202a-\\u202e\\u2066-\\u2069"
_CF = _format_chars()
#: Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt) that are not Cf: invisible
#: when rendered, yet letters (Hangul fillers U+115F, U+1160, U+3164, U+FFA0), marks (the combining
#: grapheme joiner U+034F, Khmer U+17B4/U+17B5, Mongolian and other variation selectors) or
#: reserved (U+2065, U+FFF0..U+FFF8, tags' plane 14); Python's unicodedata does not expose the
#: property, so the ranges are written out (they are stable by Unicode's policy)
_IGNORABLE = (
    "\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2065\u3164\ufe00-\ufe0f\uffa0\ufff0-\ufff8\U000e0000-\U000e0fff"
)
#: code points with no agreed glyph: private use (Co: each font draws its own, or nothing) and the 66
#: noncharacters (U+FDD0..U+FDEF, U+xFFFE/U+xFFFF of every plane), both fixed by Unicode's stability
#: policy (unassigned code points are not listed: that set changes with each Unicode version)
_NO_GLYPH = "\\ue000-\\uf8ff\\U000f0000-\\U0010ffff\\ufdd0-\\ufdef" + "".join(
    f"\\U{p:04x}fffe\\U{p:04x}ffff" for p in range(0x10)
)
#: code points an id may not hold: whitespace, Cc, Cs, Cf, line/paragraph separators, the other
#: default-ignorable code points, private use and noncharacters
_ID_BAD = re.compile(f"[\\s{_CONTROL}{_SURROGATE}{_CF}{_SEPARATORS}{_IGNORABLE}{_NO_GLYPH}]")
#: a label: as an id but U+0020 is allowed (other whitespace is not)
_LABEL_BAD = re.compile(f"[^\\S ]|[{_CONTROL}{_SURROGATE}{_CF}{_SEPARATORS}{_IGNORABLE}{_NO_GLYPH}]")
#: free text: Cc other than tab and newline, Cs, bidi controls, separators
_TEXT_BAD = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_SURROGATE}{_BIDI}{_SEPARATORS}]")
_KINDS = {"id": _ID_BAD, "label": _LABEL_BAD, "text": _TEXT_BAD}


def _describe(ch: str) -> str:
    cp = ord(ch)
    if 0xD800 <= cp <= 0xDFFF:
        what = "a lone surrogate"
    else:
        category = unicodedata.category(ch)
        what = {
            "Cc": "a control character",
            "Cf": "a format character",
            "Zl": "a line separator",
            "Zp": "a paragraph separator",
            "Co": "a private-use character",
            "Cn": "a noncharacter",
        }.get(category, "an invisible (default-ignorable) character" if not ch.isspace() else "whitespace")
    return f"{what} (U+{cp:04X})"


def text_problem(value: str, kind: str = "id") -> str | None:
    """Why ``value`` is not acceptable text of ``kind`` (``id``, ``label`` or ``text``), or None.
    Lengths are not checked here (see ``worker.validation.check_text``)."""
    # fast path (C speed): no Cc, Cf, Cs, Zl, Zp nor whitespace but U+0020, and no invisible letter
    # or mark (ASCII, or free text, where variation selectors belong to emoji)
    if value.isprintable() and (kind == "text" or value.isascii()):
        if kind == "id":
            if " " not in value:
                return None
        elif kind == "text" or value[:1] != " " and value[-1:] != " ":
            return None
    m = _KINDS[kind].search(value)
    if m is None:
        if kind == "label" and value != value.strip(" "):
            return "has a leading or trailing space"
        return None
    return f"contains {_describe(m.group())} at index {m.start()}"


def _checker(kind: str):
    def check(value: str | None) -> str | None:
        if value is None:  # an optional field left out (the annotation may wrap ``str | None``)
            return None
        problem = text_problem(value, kind)
        if problem:
            raise PydanticCustomError("unsafe_text", "{problem}", {"problem": problem})
        return value

    check.__name__ = f"check_{kind}"
    return check


_check_id, _check_label, _check_text = _checker("id"), _checker("label"), _checker("text")
#: the id check alone, for annotations that carry their own length (e.g. FastAPI ``Path``)
SAFE_ID = AfterValidator(_check_id)

#: an id (wallet, enterprise, chat, reservation, workflow, agent, idempotency key): 1..200 code points
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID), AfterValidator(_check_id)]
#: a turn's idempotency key: an id of 1..300 code points
TurnId = Annotated[str, Field(min_length=1, max_length=MAX_TURN_ID), AfterValidator(_check_id)]
#: a model name as the provider reports it: 1..200, spaces allowed inside
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL), AfterValidator(_check_label)]
#: a provider id: 1..100, spaces allowed inside
ProviderName = Annotated[str, Field(min_length=1, max_length=MAX_PROVIDER), AfterValidator(_check_label)]
#: a short human label (a pause reason): 1..200, spaces allowed inside
Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL), AfterValidator(_check_label)]
#: free text (a credit's description): 0..500, tab and newline allowed
FreeText = Annotated[str, Field(max_length=MAX_DESCRIPTION), AfterValidator(_check_text)]


# look-alikes -----------------------------------------------------------------------------------------
@cache
def _prototypes() -> dict[str, str]:
    """Each code point that Unicode's confusables data (UTS #39 ``confusables.txt``, as shipped by
    ``confusable-homoglyphs``) lists as a look-alike of another, mapped to one member of its group:
    the ASCII lower-case letter if the group has one, else an ASCII letter, else an ASCII character,
    else the smallest.
    Only one-to-one entries are used (``rn`` → ``m`` is not); the LRM marks the data wraps
    right-to-left characters in are dropped.  Built once (~10 ms), on first use."""
    parent: dict[str, str] = {}

    def root(c: str) -> str:
        while parent.get(c, c) != c:
            c = parent[c]
        return c

    def bare(c: str) -> str:
        return c.replace("\u200e", "").replace("\u200f", "")

    for key, alikes in confusables_data.items():
        a = bare(key)
        if len(a) != 1:
            continue
        for alike in alikes:
            b = bare(alike["c"])
            if len(b) == 1 and root(a) != root(b):
                parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for c in parent:
        groups.setdefault(root(c), []).append(c)
    for r in list(groups):
        groups[r].append(r)

    def rank(c: str) -> tuple[bool, bool, bool, str]:
        return (not ("a" <= c <= "z"), not ("A" <= c <= "Z"), not c.isascii(), c)

    return {c: min(members, key=rank) for members in groups.values() for c in members}


def _readings(c: str) -> set[str]:
    """How one code point (after NFKC) may read once look-alikes and case are folded: its case fold
    mapped to prototypes (``I`` → ``i``), and its prototype case folded and mapped again (``I`` →
    ``l``, Cyrillic ``Т`` → ``T`` → ``t``).  A capital ``I`` reads as either, by its neighbours."""
    proto = _prototypes()
    return {
        "".join(proto.get(f, f) for f in c.casefold()),
        "".join(proto.get(f, f) for f in proto.get(c, c).casefold()),
    }


def reads_as_prefix(value: str, prefixes: Iterable[str]) -> str | None:
    """The first of ``prefixes`` that ``value`` starts with, or only looks like it starts with, or
    None.  Looks like: after Unicode compatibility normalisation (NFKC: fullwidth, mathematical and
    ligature forms), some reading of each code point (:func:`_readings`: case folded, and mapped to
    its group in Unicode's confusables data, UTS #39 ``confusables.txt``) spells the prefix.  So
    ``STRIPE:x``, ``ｓｔｒｉｐｅ:x``, ``ѕtripe:x`` (Cyrillic dze), ``ЅТRIРЕ:x`` (Cyrillic capitals),
    ``tοllgate:x`` (Greek omicron), ``to1lgate:x``, ``toIIgate:x`` and ``T0LLGATE:x`` read as
    ``stripe:`` / ``tollgate:``.  Many-to-one look-alikes (``rn`` for ``m``) are not folded; a
    letter with a visible accent (``í``) is another letter.  Never raises."""
    proto = _prototypes()
    chars = unicodedata.normalize("NFKC", value)

    def spells(i: int, want: str) -> bool:
        if not want:
            return True
        if i == len(chars):
            return False
        return any(
            r[: len(want)] == want if len(r) >= len(want) else want.startswith(r) and spells(i + 1, want[len(r) :])
            for r in _readings(chars[i])
            if r
        )

    for prefix in prefixes:
        if value.startswith(prefix) or spells(0, "".join(proto.get(c, c) for c in prefix.casefold())):
            return prefix
    return None


# times --------------------------------------------------------------------------------------------
#: the occurred_at window's defaults: the earliest instant accepted and how far past now, seconds
DEFAULT_OCCURRED_AT_MIN = datetime(2000, 1, 1, tzinfo=UTC)
DEFAULT_OCCURRED_AT_MAX_AHEAD_S = 86_400


def _default_window() -> tuple[datetime, int]:
    return DEFAULT_OCCURRED_AT_MIN, DEFAULT_OCCURRED_AT_MAX_AHEAD_S


_window_source: Callable[[], tuple[datetime, int]] = _default_window


def configure_occurred_at_window(source: Callable[[], tuple[datetime, int]] | None) -> None:
    """Where the ``occurred_at`` window comes from: ``source()`` returns ``(earliest, max_ahead_s)``
    (an aware datetime, seconds) and is called each time a time is checked, so it may read live
    configuration.  ``worker.settings`` installs one reading ``Settings.occurred_at_min`` and
    ``Settings.occurred_at_max_ahead_s`` when it is imported; ``None`` restores the defaults
    (``DEFAULT_OCCURRED_AT_MIN``, ``DEFAULT_OCCURRED_AT_MAX_AHEAD_S``).  Models import nothing of
    ours: the window is passed in, not read from the worker."""
    global _window_source
    _window_source = source or _default_window


def occurred_at_window() -> tuple[datetime, datetime]:
    """``(earliest, latest)`` an ``occurred_at`` may be, aware UTC: the configured earliest instant
    and now + the configured seconds ahead (:func:`configure_occurred_at_window`)."""
    earliest, ahead_s = _window_source()
    return earliest, datetime.now(UTC) + timedelta(seconds=ahead_s)


def utc_problem(value: datetime) -> tuple[datetime | None, str | None]:
    """``(value in UTC, None)`` if ``value`` is aware and inside :func:`occurred_at_window`, else
    ``(None, why)``.  Never raises OverflowError: the conversion is done on the offset's own
    arithmetic and an offset that would leave years 1..9999 is refused."""
    offset = value.utcoffset()
    if offset is None:
        return None, "must carry a time zone (e.g. 2026-12-01T10:00:00Z)"
    try:
        utc = value.replace(tzinfo=UTC) if not offset else (value.replace(tzinfo=None) - offset).replace(tzinfo=UTC)
    except OverflowError:
        return None, f"{value.isoformat()} is out of range once converted to UTC"
    earliest, latest = occurred_at_window()
    if utc < earliest:
        return None, f"{utc.isoformat()} is before {earliest.isoformat()}"
    if utc > latest:
        return None, f"{utc.isoformat()} is after {latest.isoformat()} (now + the allowed clock skew)"
    return utc, None


def _check_utc(value: datetime) -> datetime:
    utc, problem = utc_problem(value)
    if problem:
        raise PydanticCustomError("time_out_of_range", "{problem}", {"problem": problem})
    return utc  # type: ignore[return-value]


#: an aware datetime inside the configured window, converted to UTC
UtcInWindow = Annotated[datetime, AfterValidator(_check_utc)]


# whole numbers in a query string ---------------------------------------------------------------------
#: the one form of a whole number >= 0 a query parameter takes: ASCII digits, no leading zero
_PLAIN_DIGITS = re.compile(r"0|[1-9][0-9]*")


def _plain_decimal(value: object) -> object:
    """A query string's whole number only as plain decimal digits (``'50'``, ``'0'``).  Raises
    PydanticCustomError ``int_parsing`` (422 naming the parameter) for any other text: ``int`` and
    pydantic's lax mode also read ``'+50'``, ``' 50'``, ``'5_0'``, ``'050'``, ``'50.0'`` and other
    scripts' digits as 50, so two spellings of one page would be two different requests to a cache
    or a log, and a hostile client's odd form would pass for a gate's."""
    if isinstance(value, str) and not _PLAIN_DIGITS.fullmatch(value):
        raise PydanticCustomError(
            "int_parsing",
            "'{value}' is not a whole number in plain decimal digits (such as 50: no sign, space, "
            "'_', leading zero, decimal point or other script's digit)",
            {"value": value[:40]},
        )
    return value


#: a query parameter's whole number (>= 0; add ``ge`` / ``le`` with ``Query``) in its one plain
#: form (:func:`_plain_decimal`)
QueryInt = Annotated[int, BeforeValidator(_plain_decimal)]


# money and input models -----------------------------------------------------------------------------
#: nano-USD of one credit or reservation: an integer, strictly typed (no floats, no strings)
Nanos = Annotated[int, Field(strict=True, ge=0, le=2**62)]
PositiveNanos = Annotated[int, Field(strict=True, gt=0, le=2**62)]


class InputModel(BaseModel):
    """Base of the request bodies (``XCreate`` and the other inputs): unknown fields are refused
    (422 naming them) and an instance is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
