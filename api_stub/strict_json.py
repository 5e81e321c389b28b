"""JSON request bodies that name a key twice in one object are refused, on every route.

RFC 8259 only says the names of an object *should* be unique and leaves a repeated one's meaning to
the parser: Python's ``json`` and orjson keep the last value, other parsers the first or refuse.
``{"amount_nanos": 1, "amount_nanos": 5000000000}`` would then mean one thing to a proxy, a log or
an audit tool in front of tollgate and another to tollgate itself.  So a body whose objects repeat a
name, at any depth, is answered 422 naming that key (``errors[0].field``), and nothing of the
request is acted on: the check runs before the route's handler (before its authentication, as
FastAPI's own check of a body that is not JSON at all).

:class:`StrictJsonRoute` is the route class of every router of the API
(``APIRouter(route_class=StrictJsonRoute)``; :class:`api_stub.fast_path.FastPathRoute` is one).  It
reads the bodies FastAPI reads as JSON: no ``Content-Type``, ``application/json`` or
``application/*+json``.  A body that is not JSON is left to FastAPI's own 422.  The cost is one more
parse of the body with a pairs hook: about 3 µs of CPU for a one-turn body, 2 µs a turn of a batch
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class DuplicateKey(Exception):
    """A JSON object names ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, Any]]) -> None:
    """The decoder's ``object_pairs_hook``: raises DuplicateKey naming the first name the object
    repeats; else None (only the names are looked at: no dict is kept)."""
    if len(dict(pairs)) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)


#: one decoder for every body (``json.loads`` with a hook builds one a call: half the cost of a
#: one-turn body)
_DECODER = json.JSONDecoder(object_pairs_hook=_object)


def duplicate_key(body: bytes) -> str | None:
    """The first name an object of the JSON text ``body`` repeats (at any depth), or None when none
    does, or when ``body`` is not JSON (FastAPI's own parse then answers it).  The text is decoded
    as ``json.loads`` (FastAPI's parser) decodes it: UTF-8, -16 or -32 by its first bytes."""
    try:
        _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except DuplicateKey as exc:
        return exc.key
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError): FastAPI's 422
        return None
    return None


def reads_json(request: Request) -> bool:
    """Whether FastAPI reads this request's body as JSON: no ``Content-Type``, or an ``application/``
    type whose subtype is ``json`` or ends in ``+json`` (any case, any parameters)."""
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            main, _, sub = media.partition(b"/")
            return main == b"application" and (sub == b"json" or sub.endswith(b"+json"))
    return True


class StrictJsonRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` that refuses a JSON body naming a key twice in one object
    (422, ``RequestValidationError`` with ``loc`` ``("body", key)``: the app's handler answers
    ``application/problem+json`` naming the key) before its handler runs.  Subclasses give the
    handler to check by :meth:`unchecked_handler`."""

    def unchecked_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """The route's handler, which runs once the body passed the check (FastAPI's by default)."""
        return super().get_route_handler()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = self.unchecked_handler()

        async def checked(request: Request) -> Response:
            if reads_json(request):
                body = await request.body()  # kept by Starlette: the handler reads it again for free
                key = duplicate_key(body) if body else None
                if key is not None:
                    raise RequestValidationError(
                        [
                            {
                                "type": "json_duplicate_key",
                                "loc": ("body", key),
                                "msg": f"the key {key!r} appears twice in one JSON object; send each key once",
                                "input": None,
                            }
                        ]
                    )
            return await handler(request)

        return checked
