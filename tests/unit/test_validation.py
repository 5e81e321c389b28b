"""models.validation, the edge rules every entry point shares (fast, no services): which code points
each text class refuses, lengths, the occurred_at window without OverflowError, and the trace
parsers naming the row of a time outside the window."""

from __future__ import annotations

import sys
import unicodedata
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from models.validation import FreeText, Id, Label, text_problem
from worker.devtools.traces import TraceError, read_trace
from worker.validation import InvalidInput, check_occurred_at, check_text


@pytest.fixture()
def day_window(monkeypatch):
    from worker.settings import get_settings

    monkeypatch.setattr(get_settings(), "occurred_at_max_ahead_s", 86_400)


#: Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15/16) that are not Cf
_IGNORABLE_NOT_CF = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x2065, 0x3164, 0xFFA0}
_IGNORABLE_NOT_CF |= set(range(0xFE00, 0xFE10)) | set(range(0xFFF0, 0xFFF9)) | set(range(0xE0000, 0xE1000))


def _noncharacter(ch: str) -> bool:
    return (ord(ch) & 0xFFFE) == 0xFFFE or 0xFDD0 <= ord(ch) <= 0xFDEF


def _category(ch: str) -> str:
    return "Cs" if 0xD800 <= ord(ch) <= 0xDFFF else unicodedata.category(ch)


@hsettings(max_examples=400, deadline=None)
@given(st.characters(exclude_categories=()))
def test_every_code_point_is_classified_by_its_unicode_category(ch):
    """An id refuses exactly whitespace, Cc, Cs, Cf, Zl, Zp and the other default-ignorable code
    points; free text refuses Cc but tab and newline, Cs, the bidi controls and Zl/Zp; the fast path
    (str.isprintable) and the regex agree."""
    cat = _category(ch)
    id_refused = (
        ch.isspace() or cat in ("Cc", "Cs", "Cf", "Zl", "Zp", "Co") or ord(ch) in _IGNORABLE_NOT_CF or _noncharacter(ch)
    )
    assert (text_problem(f"a{ch}b") is not None) is id_refused
    assert (text_problem(f"a{ch}b", "label") is not None) is (id_refused and ch != " ")
    text_refused = (
        (cat == "Cc" and ch not in "\t\n")
        or cat in ("Cs", "Zl", "Zp")
        or 0x202A <= ord(ch) <= 0x202E
        or 0x2066 <= ord(ch) <= 0x2069
    )
    assert (text_problem(f"a{ch}b", "text") is not None) is text_refused


def test_every_format_character_of_this_python_is_refused_in_ids():
    cf = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    assert "\u202e" in cf and "\u200d" in cf and "\ufeff" in cf
    assert [c for c in cf if text_problem(c) is None] == []


@pytest.mark.parametrize("cp", sorted(_IGNORABLE_NOT_CF)[:40] + [0xE0100, 0xE01EF, 0xE0FFF])
def test_invisible_letters_and_marks_are_refused_in_ids_and_labels_not_in_text(cp):
    """Default-ignorable code points that are not Cf render as nothing (Hangul fillers are letters,
    the grapheme joiner and variation selectors marks), so ``w1`` and ``w1\u3164`` would be two
    wallets that read the same: refused in ids and labels wherever they stand, named by code point;
    free text keeps them (an emoji's variation selector)."""
    ch = chr(cp)
    for value in (f"w{ch}", f"{ch}w", f"w{ch}1", f"wäl{ch}", ch):
        problem = text_problem(value)
        assert problem is not None and f"U+{cp:04X}" in problem, (value, problem)
        assert text_problem(value, "label") is not None
        assert text_problem(value, "text") is None or 0xFFF0 <= cp <= 0xFFF8  # Cn: nothing to render
    with pytest.raises(ValidationError) as refused:
        _IdModel(id=f"chat{ch}")
    assert refused.value.errors()[0]["loc"] == ("id",)


@pytest.mark.parametrize("cp", [0xE000, 0xF8FF, 0xF0000, 0x10FFFD, 0xFDD0, 0xFDEF, 0xFFFE, 0xFFFF, 0x1FFFE, 0x10FFFF])
def test_code_points_without_an_agreed_glyph_are_refused_in_ids_and_labels_not_in_text(cp):
    """Private use (each font draws its own, or nothing) and noncharacters: ``w\ue000`` and
    ``w\ue001`` may render alike, or as nothing, in a log, a CSV or /billing."""
    ch = chr(cp)
    for value in (f"w{ch}", f"{ch}w", ch):
        problem = text_problem(value)
        assert problem is not None and f"U+{cp:04X}" in problem, (value, problem)
        assert ("private-use" in problem) is (unicodedata.category(ch) == "Co")
        assert text_problem(value, "label") is not None
        assert text_problem(value, "text") is None


class _IdModel(BaseModel):
    id: Id


@pytest.mark.parametrize(
    "key",
    [
        "stripe:x",
        "STRIPE:x",
        "\u0455tripe:cs_1",  # Cyrillic dze
        "\u0405\u0422RI\u0420\u0415:cs_1",  # Cyrillic capitals S T P E
        "str\u0456pe:cs_1",  # Cyrillic i
        "strip\u0435:cs_1",  # Cyrillic ie
        "t\u03bfllgate:usage:1",  # Greek omicron
        "t\u043ellgate:usage:1",  # Cyrillic o
        "to1lgate:usage:1",
        "toIIgate:usage:1",
        "T0LLGATE:usage:1",
        "toll\u0261ate:x",  # Latin script g
        "tollg\u0430te:x",  # Cyrillic a
        "\ua731tripe:x",  # small capital s
        "stripe\ua789x",  # modifier letter colon
        "stripe\u2236x",  # ratio
        "\U0001d42c\U0001d42d\U0001d42b\U0001d422\U0001d429\U0001d41e:cs",  # mathematical bold
        "\uff53\uff54\uff52\uff49\uff50\uff45\uff1acs",  # fullwidth
    ],
)
def test_keys_that_read_as_a_system_prefix_are_found(key):
    from models.validation import reads_as_prefix

    assert reads_as_prefix(key, ("tollgate:", "stripe:")) in ("tollgate:", "stripe:"), key


@pytest.mark.parametrize(
    "key",
    ["my-stripe:cs", "stripe-cs_1", "tollgate-topup", "str\u00edpe:x", "stripes:x", "strip:x", "st", "", "tollgat:"],
)
def test_keys_that_only_share_letters_with_a_system_prefix_are_not(key):
    from models.validation import reads_as_prefix

    assert reads_as_prefix(key, ("tollgate:", "stripe:")) is None


_LOOK_ALIKES = {
    "s": "s\u0455\ua731\uff53S\u0405",
    "t": "t\uff54T\u0422\u03a4",
    "r": "r\u0433\uff52R",
    "i": "i\u0456\u0131\uff49I\u0406",
    "p": "p\u0440\u03c1\uff50P\u0420\u03a1",
    "e": "e\u0435\uff45E\u0415\u0395",
    "o": "o\u03bf\u043e0O\u041e\u039f",
    "l": "l1I|\u04c0\u0406",
    "g": "g\u0261\uff47G",
    "a": "a\u0430\u0251\uff41A\u0410\u0391",
    ":": ":\uff1a\u2236\ua789",
}


@hsettings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from(["stripe:", "tollgate:"]), st.text(max_size=8))
def test_any_mix_of_look_alikes_reads_as_the_prefix(data, prefix, tail):
    """Every letter of the prefix replaced by any of its look-alikes (other scripts, fullwidth,
    capitals, digits): the key still reads as the prefix, whatever follows."""
    from models.validation import reads_as_prefix

    key = "".join(data.draw(st.sampled_from(_LOOK_ALIKES[c])) for c in prefix) + tail
    assert reads_as_prefix(key, ("tollgate:", "stripe:")) == prefix, key


def test_messages_name_the_code_point_and_its_position():
    assert text_problem("ab\x00") == "contains a control character (U+0000) at index 2"
    assert text_problem("\ud800") == "contains a lone surrogate (U+D800) at index 0"
    assert text_problem("a\u202eb") == "contains a format character (U+202E) at index 1"
    assert text_problem("a b") == "contains whitespace (U+0020) at index 1"
    assert text_problem(" gpt-4o", "label") == "has a leading or trailing space"
    assert text_problem("claude 3 opus", "label") is None
    assert text_problem("line 1\nline 2\t🎉", "text") is None


def test_check_text_raises_a_value_error_naming_the_field():
    assert check_text("w-1", "wallet_id") == "w-1"
    for value, message in (
        (None, "must be a string"),
        ("", "must be 1..200 characters, got 0"),
        ("x" * 201, "got 201"),
        ("a\x00", r"U\+0000"),
    ):
        with pytest.raises(InvalidInput, match=f"^wallet_id: .*{message}") as exc:
            check_text(value, "wallet_id")
        assert isinstance(exc.value, ValueError) and exc.value.field == "wallet_id"


def test_the_annotated_types_name_the_field():
    class M(BaseModel):
        a: Id
        b: Label = "x"
        c: FreeText = ""

    with pytest.raises(ValidationError) as exc:
        M(a="ok\u2066", b="bad\x7f", c="\x00")
    assert [(e["loc"], e["type"]) for e in exc.value.errors()] == [
        (("a",), "unsafe_text"),
        (("b",), "unsafe_text"),
        (("c",), "unsafe_text"),
    ]
    assert M(a="ok", b="a b", c="").a == "ok"


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 11, 1, 12),  # naive
    ],
)
def test_occurred_at_out_of_the_window_is_refused_without_overflow(value, day_window):
    with pytest.raises(InvalidInput, match="^occurred_at: "):
        check_occurred_at(value)


def test_occurred_at_inside_the_window_is_converted_to_utc(day_window):
    assert check_occurred_at(datetime(2000, 1, 1, 5, tzinfo=timezone(timedelta(hours=5)))) == datetime(
        2000, 1, 1, tzinfo=UTC
    )
    soon = datetime.now(UTC) + timedelta(hours=23)
    assert check_occurred_at(soon) == soon
    with pytest.raises(InvalidInput, match="after"):
        check_occurred_at(datetime.now(UTC) + timedelta(days=1, minutes=1))


def test_a_trace_row_outside_the_window_names_its_row(tmp_path, day_window):
    azure = tmp_path / "a.csv"
    azure.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:15:46.6805900,10,2\r\n"
        "1999-11-16 18:15:46.6805900,10,2\r\n"
    )
    with pytest.raises(TraceError, match=r"row 2 \(line 3\), field TIMESTAMP: occurred_at .* is before"):
        read_trace(azure, "azure")
    mooncake = tmp_path / "m.jsonl"
    mooncake.write_text(
        '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": []}\n'
        '{"timestamp": 172800000, "input_length": 5, "output_length": 1, "hash_ids": []}\n'
    )
    with pytest.raises(TraceError, match=r"row 2 \(line 2\), field timestamp: occurred_at .* is after"):
        read_trace(mooncake, "mooncake", epoch=datetime.now(UTC))
    mooncake.write_text('{"timestamp": 172800000, "input_length": 5, "output_length": 1, "hash_ids": []}\n')
    with pytest.raises(TraceError, match=r"row 1 \(line 1\), field timestamp: .*past year 9999"):
        read_trace(mooncake, "mooncake", epoch=datetime(9999, 12, 31, tzinfo=UTC))  # OverflowError before
