"""Streamed exports are handed to the server in pieces of at least 64 KiB, the same text in order."""

from __future__ import annotations

import pytest

from api_stub.billing_exports import STREAM_CHUNK, batched


def test_pieces_join_to_the_same_text_and_are_at_least_the_size():
    chunks = [f"row {i},{'x' * (i % 37)}\n" for i in range(20_000)]
    pieces = list(batched(chunks))
    assert "".join(pieces) == "".join(chunks)
    assert all(len(p) >= STREAM_CHUNK for p in pieces[:-1])
    assert 0 < len(pieces[-1])
    assert len(pieces) < len(chunks) / 100


def test_small_and_empty_inputs():
    assert list(batched([])) == []
    assert list(batched(["", ""])) == []
    assert list(batched(["ab", "c"], size=2)) == ["ab", "c"]
    assert list(batched(["a", "b", "c"], size=1)) == ["a", "b", "c"]


def test_a_bad_size_is_refused_naming_it():
    with pytest.raises(ValueError, match="size"):
        list(batched(["a"], size=0))
