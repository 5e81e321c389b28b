"""A cap on the size of every request body of the app (``settings.max_body_bytes``, default 1 MiB).

A pure ASGI middleware, so it sees the body as it streams in: a declared ``Content-Length`` over the
cap is refused before anything is read, and a body without one (``Transfer-Encoding: chunked``) or
with a false one is counted chunk by chunk and refused as soon as the count passes the cap, whatever
the route does with the error its read raises.  The answer is ``413`` ``application/problem+json``:
``{"title": "Content Too Large", "detail": "body: … exceeds the limit of N bytes (TOLLGATE_MAX_BODY_BYTES)",
"errors": [{"field": "body", …}]}``; nothing of the request is acted on, since no handler runs
before its body has been read in full.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.settings import get_settings


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a request body passes ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body exceeds the limit of {limit} bytes")
        self.limit = limit


def too_large_body(limit: int) -> bytes:
    """The problem document of a body over ``limit`` bytes (JSON bytes)."""
    message = f"the request body exceeds the limit of {limit} bytes (TOLLGATE_MAX_BODY_BYTES)"
    return json.dumps(
        {
            "type": "about:blank",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"body: {message}",
            "errors": [{"field": "body", "message": message}],
        }
    ).encode()


class BodySizeLimit:
    """ASGI middleware: refuse HTTP request bodies over ``max_bytes`` (default: read
    ``settings.max_body_bytes`` on each request) with 413 problem+json.  Other scopes pass through."""

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes or get_settings().max_body_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break  # the server refuses a malformed length; else the count below holds
                if declared > limit:
                    await _answer_413(send, limit)
                    return
                break
        received = 0
        state = {"exceeded": False, "started": False}

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    state["exceeded"] = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"] and not state["started"]:
                return  # the route's own answer to the failed read (e.g. 400): ours is 413
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if state["started"]:
                raise
        if state["exceeded"] and not state["started"]:
            await _answer_413(send, limit)


async def _answer_413(send: Send, limit: int) -> None:
    body = too_large_body(limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["BodySizeLimit", "BodyTooLarge", "too_large_body"]
