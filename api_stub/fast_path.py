"""A fast path in front of a FastAPI route, for the busiest endpoints (``POST /v1/turns``).

FastAPI spends about half of a small request's server CPU in dependency solving, the JSON body's
``json.loads`` then validation from Python objects, and the response model's round trip
(``benchmarks/RESULTS.md``, HTTP).  A route made with :class:`FastPathRoute` whose endpoint carries
a fast handler (:func:`fast_path`) answers a well-formed request with that handler alone; anything
else goes to FastAPI's own handler for the route, unchanged:

- the fast handler returns ``None`` when it cannot answer the request itself (a body it does not
  validate, a content type other than JSON, …); FastAPI's handler then answers it exactly as
  without the fast path (its 422 naming the field, its order of checks), on the same
  :class:`~starlette.requests.Request` (the body already read is kept by Starlette);
- an exception it raises (``deps.Problem``: 401, 403, 404, 429, …) is answered by the app's
  exception handlers, as one raised in a dependency or the endpoint is.

The route's declaration (path, body and response models, ``responses``, security) is FastAPI's, so
the OpenAPI document is the same with or without the fast path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from api_stub.strict_json import StrictJsonRoute

#: a fast handler: the request → its answer, or None to leave it to FastAPI's handler
FastHandler = Callable[[Request], Awaitable[Response | None]]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

#: the endpoint attribute holding its fast handler
ATTRIBUTE = "__tollgate_fast_path__"


def fast_path(handler: FastHandler) -> Callable[[Endpoint], Endpoint]:
    """Decorator giving an endpoint of a :class:`FastPathRoute` router its fast handler; it goes
    below the route's decorator (``@router.post(...)`` then ``@fast_path(handler)``).

    Args:
        handler: ``async (request) -> Response | None``; None hands the request to FastAPI's handler
            of the route, which must then answer as if the fast handler had not run (so the fast
            handler may read the body, but must change nothing before it decides to answer).

    Returns: the decorator, which returns the endpoint itself (marked).
    """

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, ATTRIBUTE, handler)
        return endpoint

    return mark


class FastPathRoute(StrictJsonRoute):
    """A :class:`~api_stub.strict_json.StrictJsonRoute` (``APIRouter(route_class=FastPathRoute)``)
    whose handler tries the endpoint's fast handler (:func:`fast_path`) first and falls back to
    FastAPI's handler when it returns None; both run after the body passed the check of a key named
    twice.  Endpoints without one are plain FastAPI routes."""

    def unchecked_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        standard = super().unchecked_handler()
        fast: FastHandler | None = getattr(self.endpoint, ATTRIBUTE, None)
        if fast is None:
            return standard

        async def handler(request: Request) -> Response:
            response = await fast(request)
            return response if response is not None else await standard(request)

        return handler


def json_content(request: Request) -> bool:
    """Is the request's (first) ``Content-Type`` ``application/json`` (any parameters, any case)?
    The fast handlers take only those; FastAPI's handler decides every other case."""
    for name, value in request.scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def header(request: Request, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes) as Starlette reads it (latin-1), or
    None; read from the ASGI scope without building Starlette's ``Headers``."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
