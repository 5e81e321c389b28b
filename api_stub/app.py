"""The HTTP API's app factory: one FastAPI app with the body-size middleware, the problem+json error
handlers and every router of :mod:`api_stub.routes`.

Errors are RFC 9457 problem documents naming the field (:func:`api_stub.deps.install_error_handlers`,
the one place they are mapped); every ``/v1`` endpoint and ``/metrics`` need an API key
(``Authorization: Bearer tg_…``, :func:`api_stub.deps.principal`).
"""

from __future__ import annotations

from fastapi import FastAPI

from api_stub.body_limit import BodySizeLimit
from api_stub.deps import install_error_handlers
from api_stub.routes import (
    analytics,
    billing,
    chats,
    enterprises,
    metrics,
    stripe,
    turns,
    wallets,
)
from worker.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new API app: middleware, error handlers, routers (paths, methods and OpenAPI operation ids
    as listed in the README's HTTP API section).

    Args:
        settings: pins the request-body cap to ``settings.max_body_bytes`` (413 above it); None
            (the server's ``api_stub.main:app``) reads ``worker.settings.get_settings()`` on each
            request.  The routes use the process's settings and gate
            (:func:`worker.gate.gate.process_gate`) either way.

    Returns: the FastAPI app (ASGI).
    """
    app = FastAPI(
        title="tollgate", version="0.1.0", description="Real-time token metering and billing: the orchestrator API."
    )
    install_error_handlers(app)
    if settings is None:
        app.add_middleware(BodySizeLimit)
    else:
        app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # turns first: the busiest routes are matched first (a request is matched against each route in order)
    for module in (turns, wallets, enterprises, chats, analytics, metrics, stripe, billing):
        app.include_router(module.router)
    return app
