"""api_stub.strict_json: the key a JSON body names twice, and which bodies FastAPI reads as JSON."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from api_stub.strict_json import duplicate_key, reads_json


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"a": 1, "b": 2}', None),
        (b'{"a": 1, "a": 1}', "a"),  # even with the same value
        (b'{"a": {"b": [1, {"c": 1, "d": 2, "c": 3}]}}', "c"),  # at any depth
        (b'[{"x": 1}, {"x": 2}]', None),  # the same name in two objects is fine
        (b'{"a\\u0062": 1, "ab": 2}', "ab"),  # one name once its escapes are decoded
        (b'{"b": 1, "a": 2, "b": 3, "a": 4}', "b"),  # the first repeated
        (b'{"a": 1, "a"', None),  # not JSON: FastAPI's own 422
        (b"\xff\xfe", None),
        (b"[" * 100_000 + b"]" * 100_000, None),  # too deep for json: FastAPI's own answer
        (b'"a"', None),
        ('{"a": 1, "a": 2}'.encode("utf-16"), "a"),  # FastAPI's json.loads reads UTF-16 too
        ('{"a": 1, "a": 2}'.encode("utf-32-le"), "a"),
    ],
)
def test_the_first_key_an_object_names_twice(body, key):
    assert duplicate_key(body) == key


def _request(content_type: bytes | None) -> Request:
    headers = [] if content_type is None else [(b"content-type", content_type)]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        (None, True),
        (b"application/json", True),
        (b"Application/JSON; charset=utf-8", True),
        (b"application/merge-patch+json", True),
        (b"application/x-www-form-urlencoded", False),
        (b"text/plain", False),
        (b"multipart/form-data; boundary=x", False),
        (b"text/json", False),
    ],
)
def test_the_bodies_fastapi_reads_as_json_are_checked(content_type, json):
    assert reads_json(_request(content_type)) is json
