"""The HTTP API's app factory: one FastAPI app with the body-size middleware, the problem+json error
handlers and every router of :mod:`api_stub.routes`.

Errors are RFC 9457 problem documents naming the field (:func:`api_stub.deps.install_error_handlers`,
the one place they are mapped); every ``/v1`` endpoint and ``/metrics`` need an API key
(``Authorization: Bearer tg_…``, :func:`api_stub.deps.principal`).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api_stub.api_docs import install_problem_schema
from api_stub.body_limit import BodySizeLimit
from api_stub.deps import install_error_handlers
from api_stub.routes import (
    analytics,
    billing,
    billing_drill,
    billing_topup,
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
        title="tollgate",
        version="0.1.0",
        description=API_DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    install_problem_schema(app)
    install_error_handlers(app)
    if settings is None:
        app.add_middleware(BodySizeLimit)
    else:
        app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # turns first: the busiest routes are matched first (a request is matched against each route in order)
    for module in (
        turns,
        wallets,
        enterprises,
        chats,
        analytics,
        metrics,
        stripe,
        billing,
        billing_topup,
        billing_drill,
    ):
        app.include_router(module.router)
    return app


#: what /docs and /redoc say first: written for the API's users (OpenAPI ``info.description``, Markdown)
API_DESCRIPTION = """\
Meter and bill the tokens your LLM agents spend, one turn at a time.

**Authentication.** Every endpoint but Stripe's webhook needs an API key in `Authorization: Bearer tg_…` (the
*Authorize* button above). An operator creates keys with `tollgate apikey create`: an **owner** key
acts for one app, an **end_user** key for one wallet of an app, an **admin** key sees totals across
apps. A missing, unknown or revoked key answers 401; each key is rate limited (429 with
`Retry-After`).

**Money** is integer nano-USD (`*_nanos`; 1 USD = 1,000,000,000 nanos); token counts are integers.

**Errors** are `application/problem+json` (RFC 9457): `errors[].field` names the input at fault
(`turns.3.prompt_tokens` in a batch), and a refused request changes nothing. A denied turn is not
an error: `POST /v1/turns` answers 200 with `accepted: false` and `action: pause`.

**Retries are safe.** A `turn_id` is recorded once per wallet of an app: sending the same turn again
returns the first answer (`duplicate: true`) and charges nothing. Credits are applied once per
`idempotency_key`.
"""

#: one line per tag, in the order /docs lists them: every route of the schema has one of them
TAGS = [
    {
        "name": "turns",
        "description": "Record each LLM call (a turn) as it happens and get the decision: continue, or pause the chat.",
    },
    {
        "name": "reservations",
        "description": "Hold funds before an LLM call so concurrent calls cannot overspend a wallet; release them after.",
    },
    {"name": "wallets", "description": "Balances, the ledger of credits and debits, and credits (top-ups)."},
    {
        "name": "modes",
        "description": "Billing modes of an app and of one wallet: production, development, trial, track_only.",
    },
    {"name": "chats", "description": "A chat's state and totals; start, pause, resume and end it."},
    {
        "name": "analytics",
        "description": "Usage and cost by period, workflow, agent and model; monthly totals; per-turn export.",
    },
    {"name": "stripe", "description": "Buy token packages with Stripe Checkout; Stripe's webhook."},
    {"name": "billing", "description": "Monthly exports of the /billing page: CSV, JSON and PDF."},
]

#: Swagger UI and ReDoc, served from the installed ``fastapi-offline`` package (swagger-ui-bundle.js,
#: swagger-ui.css: Swagger UI, Apache-2.0; redoc.standalone.js: ReDoc, MIT), never a CDN
DOCS_ASSETS = files("fastapi_offline") / "static"
DOCS_ASSETS_URL = "/docs-assets"


#: the docs pages load nothing from other hosts (ReDoc's bundle would fetch its logo from a CDN)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def install_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI, the key kept across reloads) and ``/redoc`` on ``app``, with their
    JavaScript and CSS under :data:`DOCS_ASSETS_URL`, so the pages work without a network; their
    Content-Security-Policy (:data:`DOCS_CSP`) keeps them from reaching any other host."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    async def redoc(request: Request) -> HTMLResponse:
        page = get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    # plain Starlette routes, as FastAPI's own /docs and /openapi.json: public, outside the API's routes
    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
