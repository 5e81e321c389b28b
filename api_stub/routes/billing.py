"""The ``/billing`` page (server-rendered, Jinja2 + a vendored Chart.js) and its exports.

Routes (all under ``/billing``):

- ``GET /billing?period=YYYY-MM&enterprise_id=…&ledger_page=N``: the page; ``period`` defaults to the
  current UTC month (any month may be asked for; the picker offers every month back to the app's
  first month with usage: :func:`month_choices`), ``enterprise_id`` to the key's app (an admin
  without one gets the app picker, with sign-out; the exports still answer 422); beside the picker a
  date-range form, and links to the conversation and workflow pages
  (:mod:`api_stub.routes.billing_drill`, with the month's workflows); it lists the wallets in view (balance, reserved,
  mode, state; the period's opening, credits by source, debits, closing:
  :mod:`worker.billing.statement`) and page ``ledger_page`` (default 1) of their ledger.  A key in
  the URL (``?key=``) never signs in (it would land in access logs and browser history): 400
  naming ``key``.  Its attention (paused chats, alerts) and top-up sections are
  :mod:`api_stub.billing_sections`; the top-up form posts to :mod:`api_stub.routes.billing_topup`.
- ``GET|POST /billing/login``, ``POST /billing/logout``: sign in with an API key pasted in a form,
  sign out.  Both POSTs must come from this site: ``Origin`` (or, without it, ``Referer``) equal to
  the server's own origin (``settings.web_origin`` or the request's scheme and Host) and a CSRF
  token (sign-in: double-submit, the form's ``csrf_token`` equal to the ``tollgate_csrf`` cookie;
  sign-out: the session's own token); else 403.  Sign-in attempts are limited per client IP
  (``settings.billing_login_rate_limit``, 429 with ``Retry-After``).  A sign-in opens a server-side
  session (:mod:`worker.access.web_sessions`): the HttpOnly cookie ``tollgate_session`` (SameSite=Lax,
  Secure over https, path ``/billing``) holds its random id, never the key; it ends after
  ``settings.billing_session_ttl_s``, at sign-out, or when the key is revoked.
- ``GET /billing/export.csv|json|pdf?period=…&enterprise_id=…``: the period's exports
  (:mod:`api_stub.billing_exports`).
- ``GET /billing/static/…``: the page's CSS, JS and vendored Chart.js.

Who sees what: an API key as ``Authorization: Bearer tg_…`` or the session cookie, each request
counted against the key's rate limit (``settings.rate_limit``; 429 with ``Retry-After``).  ``owner`` keys see their
app; ``end_user`` keys only their own wallet's usage, budget, balance and ledger; ``admin`` keys any
app's aggregates without end-user detail (no chats, no wallet budgets, no per-event export, no
per-wallet balances or ledger: one aggregate wallet row).  A key of another app gets
403 on the page and every export; a missing or bad key 401 (the page shows the login form).  A bad
``period`` is 422 naming the field.  Exports are ``application/problem+json`` on errors; the page
answers errors in HTML with the same status.
"""

from __future__ import annotations

import hmac
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlmodel import Session, col
from starlette.concurrency import run_in_threadpool

from api_stub.api_docs import described
from api_stub.billing_exports import batched, csv_rows, json_chunks, pdf_statement
from api_stub.billing_sections import page_sections
from api_stub.deps import Problem, check_client_rate_limit, check_rate_limit, get_gate, problem_response
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole
from models.wallet import Enterprise
from worker.access.apikeys import Principal, authenticate
from worker.access.web_sessions import WebSession, close_session, open_session, principal_for_prefix, read_session
from worker.billing.report import (
    METERS,
    BillingReport,
    ReportError,
    billing_report,
    format_bp,
    format_cents,
    format_money,
    format_quantity,
    format_usd,
    iter_events,
    provider_color,
    provider_name,
    usd_exact,
    validate_period,
)
from worker.billing.statement import (
    SOURCE_LABELS,
    LedgerPage,
    WalletStatement,
    ledger_page,
    wallet_statements,
    wallet_totals,
)
from worker.chats.drill import first_period, workflow_rollups
from worker.db import get_engine, session_scope
from worker.errors import InputError
from worker.periods import current_period, periods_between
from worker.settings import get_settings
from worker.validation import storable_id

HERE = Path(__file__).resolve().parent.parent  # api_stub/: templates/ and static/ are package data there
STATIC = HERE / "static"
#: the browser's credential: the id of a server-side session (never the API key), HttpOnly, sent only to /billing
COOKIE = "tollgate_session"
#: the sign-in form's double-submit CSRF token (the form carries the same value)
CSRF_COOKIE = "tollgate_csrf"
_SECURITY_HEADERS = {
    # form-action: the top-up form's POST answers with a redirect to Stripe Checkout (billing_topup)
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self' https://checkout.stripe.com; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make a browser send `Origin: null` on our own forms
    "Cache-Control": "no-store",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

router = APIRouter(prefix="/billing", tags=["billing"], route_class=StrictJsonRoute)
templates = Jinja2Templates(directory=str(HERE / "templates"))


# Jinja filters: money and numbers are formatted here, from integers, never floats ------------------
def _month(period: str) -> str:
    start, _ = validate_period(period)
    return f"{start:%b %Y}"


templates.env.filters.update(
    provider_name=provider_name,
    provider_color=provider_color,
    usd=format_usd,
    cents=format_cents,
    money=format_money,
    usd_exact=lambda n: usd_exact(n) + " USD",
    usd4=lambda n: format_usd(n, 4),
    num=lambda n: f"{int(n):,}",
    qty=format_quantity,
    pct_bp=format_bp,
    month=_month,
    month_long=lambda p: f"{validate_period(p)[0]:%B %Y}",
    seg=lambda s: quote(str(s), safe=""),  # an id as one URL path segment
)


# who is asking -----------------------------------------------------------------------------------
class Refusal(Exception):
    """A request the billing routes refuse: HTTP status, title, detail and the field at fault."""

    def __init__(
        self, status: int, title: str, detail: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field, self.headers = status, title, detail, field, headers


@dataclass(frozen=True)
class Viewer:
    """A caller allowed to see one app's billing: the app, the wallet it is narrowed to (end users)
    and whether end-user detail (chats, wallet budgets, events) is shown."""

    principal: Principal
    enterprise_id: str
    wallet_id: str | None
    detail: bool
    #: the CSRF token of the browser session signed in (its page's sign-out form), "" for Bearer callers
    csrf: str = ""


def _has_credentials(request: Request) -> bool:
    return bool(request.headers.get("authorization") or request.cookies.get(COOKIE))


def _principal(key: str | None) -> Principal:
    if not key:
        raise Refusal(401, "Unauthorized", "an API key is required: Authorization: Bearer tg_… or sign in")
    with session_scope() as session:
        who = authenticate(session, key)
    if who is None:
        raise Refusal(401, "Unauthorized", "the API key is unknown or revoked")
    return who


def _caller(request: Request) -> tuple[Principal, WebSession | None]:
    """The caller from ``Authorization: Bearer`` or the session cookie, counted against its key's
    rate limit.  An API key in the query string is refused, never used.

    Raises Refusal: 400 naming ``key`` (``?key=``), 401 (no credentials, unknown or revoked key,
    an ended or expired session), 429 with ``Retry-After`` (over ``settings.rate_limit``).
    """
    if "key" in request.query_params:
        raise Refusal(
            400,
            "Invalid request",
            "key: an API key in the URL is never accepted (it would be kept in "
            "logs and browser history); sign in with the form or send Authorization: Bearer",
            "key",
        )
    auth = request.headers.get("authorization")
    web: WebSession | None = None
    if auth is not None:
        who = _principal(auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else "")
    else:
        redis = get_gate().redis
        web = read_session(redis, request.cookies.get(COOKIE))
        if web is None:
            raise Refusal(
                401,
                "Unauthorized",
                "an API key is required: Authorization: Bearer tg_… or sign in"
                if not request.cookies.get(COOKIE)
                else "your sign-in has ended; sign in again",
            )
        with session_scope() as session:
            found = principal_for_prefix(session, web.key_prefix)
        if found is None:  # the key was revoked (in SQL, or its revocation's Redis writes failed)
            close_session(redis, web.session_id)
            raise Refusal(401, "Unauthorized", "your sign-in has ended: the API key was revoked")
        who = found
    try:
        check_rate_limit(who.key_prefix)
    except Problem as exc:
        raise Refusal(exc.status, exc.title, exc.detail, headers=exc.headers) from None
    return who, web


def viewer(request: Request, enterprise_id: str | None, *, app_picker: bool = False) -> Viewer:
    """The caller of ``request`` and what it may see of ``enterprise_id`` (default: the key's app).
    With ``app_picker`` (the page), an admin without ``enterprise_id`` gets a Viewer whose
    ``enterprise_id`` is ``""``: the page then lists the apps to choose from.

    Raises Refusal: 400 (a key in the URL), 401 (no, unknown or revoked key; no live session),
    429 (over the key's rate limit), 403 (an app or wallet key of another app), 422 (an admin key
    without ``enterprise_id``, unless ``app_picker``), 404 (an admin asking for an unknown app).
    """
    who, web = _caller(request)
    csrf = web.csrf if web is not None else ""
    if who.role is ApiRole.admin:
        if not enterprise_id and app_picker:
            return Viewer(who, "", None, detail=False, csrf=csrf)
        if not enterprise_id:
            raise Refusal(422, "Invalid request", "enterprise_id: an admin key must name the app", "enterprise_id")
        with session_scope() as session:
            if not storable_id(enterprise_id) or session.get(Enterprise, enterprise_id) is None:
                raise Refusal(
                    404, "Unknown app", f"enterprise_id: unknown enterprise {enterprise_id!r}", "enterprise_id"
                )
        return Viewer(who, enterprise_id, None, detail=False, csrf=csrf)
    if enterprise_id and enterprise_id != who.enterprise_id:
        raise Refusal(
            403, "Forbidden", f"this key may not see the billing of enterprise {enterprise_id!r}", "enterprise_id"
        )
    if who.enterprise_id is None:  # create_key scopes every owner and end-user key to an app
        raise Refusal(403, "Forbidden", "this key is not scoped to an app", "enterprise_id")
    wallet = who.wallet_id if who.role is ApiRole.end_user else None
    return Viewer(who, who.enterprise_id, wallet, detail=True, csrf=csrf)


def _period(period: str | None) -> str:
    if period is None or period == "":
        return current_period()
    try:
        validate_period(period)
    except ReportError as exc:
        raise Refusal(422, "Invalid request", str(exc), "period") from None
    return period


#: months the month pickers offer when an app has no rolled-up month yet
DEFAULT_MONTHS = 12


def month_choices(enterprise_id: str, chosen: str) -> list[str]:
    """The months a picker offers, newest first: from the current month back to the app's first
    month with usage (:func:`worker.chats.drill.first_period`, from its rollups), or the last
    :data:`DEFAULT_MONTHS` months without one; ``chosen`` is added when outside."""
    now = current_period()
    with _snapshot() as session:
        first = first_period(session, enterprise_id) if enterprise_id else None
    choices = periods_between(first, now) if first else periods_between("1900-01", now, most=DEFAULT_MONTHS)
    if chosen not in choices:
        choices = sorted({*choices, chosen}, reverse=True)
    return choices


def _range_defaults(period: str) -> dict[str, str]:
    """The date-range form's initial ``from``/``to``: the shown month's first and last day."""
    start, end = validate_period(period)
    return {"from": start.date().isoformat(), "to": (end - timedelta(days=1)).date().isoformat()}


@contextmanager
def _snapshot() -> Iterator[Session]:
    """A read-only REPEATABLE READ session: a report and its events come from one snapshot."""
    engine = get_engine().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with Session(engine) as session:
        yield session


def _report(v: Viewer, period: str, session: Session | None = None) -> BillingReport:
    try:
        if session is not None:
            return billing_report(
                session, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id, detail=v.detail
            )
        with _snapshot() as s:
            return billing_report(
                s, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id, detail=v.detail
            )
    except ReportError as exc:
        raise Refusal(404 if exc.field == "enterprise_id" else 422, "Invalid request", str(exc), exc.field) from None


@dataclass(frozen=True)
class Wallets:
    """The wallets in a view: ``rows`` (one per wallet, at most ``MAX_WALLETS``; empty for an
    admin, who sees aggregates only), ``reserved`` (wallet id → nano-USD held by live reservations
    in the gate, None when the gate does not know the wallet), ``total`` (sums over every wallet in scope, uncapped: :func:`wallet_totals`),
    ``count`` wallets in scope, ``ledger`` the page of ledger entries (None for an admin)."""

    rows: list[WalletStatement]
    reserved: dict[str, int | None]
    total: WalletStatement
    count: int
    ledger: LedgerPage | None


#: the highest ledger page number the page takes (a page past the last is empty; beyond this, 422)
MAX_LEDGER_PAGE = 1_000_000


def _ledger_page_number(raw: str | None) -> int:
    """``ledger_page`` → 1..:data:`MAX_LEDGER_PAGE`: ASCII digits only (``str.isdigit`` also takes
    '²' and other scripts' digits, which ``int`` then refuses) and bounded (a 23-digit page overflowed
    PostgreSQL's OFFSET).  Raises Refusal 422 naming ``ledger_page``."""
    if raw is None or raw == "":
        return 1
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 7) or not 1 <= int(raw) <= MAX_LEDGER_PAGE:
        raise Refusal(
            422,
            "Invalid request",
            f"ledger_page: {raw[:40]!r} is not a page number (1, 2, … up to {MAX_LEDGER_PAGE:,})",
            "ledger_page",
        )
    return int(raw)


def _wallets(v: Viewer, period: str, page: int = 1) -> Wallets:
    """Balances, reserved amounts and the ledger page of the wallets ``v`` may see (an end user:
    its own; an owner: its app's; an admin: only the aggregate ``total``, no rows, no ledger)."""
    try:
        with _snapshot() as session:
            rows = (
                wallet_statements(session, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id)
                if v.detail
                else []
            )
            count, total = wallet_totals(session, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id)
            ledger = (
                ledger_page(session, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id, page=page)
                if v.detail
                else None
            )
    except InputError as exc:
        raise Refusal(422, "Invalid request", str(exc), getattr(exc, "field", None)) from None
    gate = get_gate()
    # one round trip for every wallet (WalletGate.available's fields, pipelined): held nanos, or None
    # for a wallet the gate does not hold (no balance field)
    pipe = gate.redis.pipeline(transaction=False)
    for w in rows:
        pipe.hmget(gate.wallet_key(w.wallet_id), "balance", "held")
    reserved: dict[str, int | None] = {
        w.wallet_id: (int(held or 0) if balance is not None else None)
        for w, (balance, held) in zip(rows, pipe.execute() if rows else [])
    }
    return Wallets(rows, reserved, total, count, ledger)


#: apps listed at most on the admin's app picker
MAX_APPS = 500


def _apps() -> list[tuple[str, str]]:
    """``(id, name)`` of the apps an admin may open, by name then id (at most :data:`MAX_APPS`)."""
    with session_scope() as session:
        rows = session.execute(
            select(col(Enterprise.id), col(Enterprise.name))
            .order_by(col(Enterprise.name), col(Enterprise.id))
            .limit(MAX_APPS)
        ).all()
    return [(str(i), str(n)) for i, n in rows]


def _problem(exc: Refusal) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="tollgate"'} if exc.status == 401 else {}
    headers.update(exc.headers or {})
    errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
    return problem_response(exc.status, exc.title, exc.detail, errors, headers)


def _html(
    request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None, **context
) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(_SECURITY_HEADERS)
    response.headers.update(headers or {})
    return response


def _secure(request: Request) -> bool:
    origin = get_settings().web_origin
    return (origin or request.url.scheme).lower().startswith("https")


def _set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    max_age: int,
    samesite: Literal["lax", "strict", "none"] = "lax",
) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/billing", httponly=True, samesite=samesite, secure=_secure(request)
    )


def _login_page(
    request: Request, status: int, error: str | None, next_url: str, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """The sign-in form, with a CSRF token in the form and the same in the ``tollgate_csrf`` cookie
    (the browser's current one is kept, so two open tabs both work)."""
    token = request.cookies.get(CSRF_COOKIE) or ""
    if not (32 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum()):
        token = secrets.token_urlsafe(32)
    response = _html(request, "login.html", status, headers=headers, error=error, next_url=next_url, csrf_token=token)
    _set_cookie(response, request, CSRF_COOKIE, token, get_settings().billing_session_ttl_s, samesite="strict")
    if status == 401 and request.cookies.get(COOKIE):  # an ended session: drop its stale cookie
        response.delete_cookie(COOKIE, path="/billing")
    return response


def own_origin(request: Request) -> str:
    """The origin browsers use for this server: ``settings.web_origin`` when set, else the
    request's scheme and ``Host`` (``http://127.0.0.1:8000``)."""
    configured = get_settings().web_origin
    if configured:
        return configured.rstrip("/").lower()
    return f"{request.url.scheme}://{request.url.netloc}".lower()


def check_origin(request: Request) -> None:
    """Refuse a state-changing request sent from another site: its ``Origin`` (or, when absent or
    ``null``, the origin of its ``Referer``) must equal :func:`own_origin`.  Neither header: refused.

    Raises Refusal 403 naming ``Origin``."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        referer = request.headers.get("referer")
        parts = urlsplit(referer) if referer else None
        origin = f"{parts.scheme}://{parts.netloc}" if parts and parts.scheme and parts.netloc else None
    if origin is None:
        raise Refusal(
            403,
            "Forbidden",
            "Origin: the request carries neither Origin nor Referer; sign in from the page of this site",
            "Origin",
        )
    if origin.rstrip("/").lower() != own_origin(request):
        raise Refusal(403, "Forbidden", f"Origin: {origin!r} is not this site ({own_origin(request)})", "Origin")


#: the most fields a /billing form may carry (its forms send 3 or 4)
MAX_FORM_FIELDS = 10


async def read_form(request: Request) -> dict[str, list[str]]:
    """The url-encoded form of a ``/billing`` POST: field → its values (bytes that are not UTF-8
    read as U+FFFD).  Raises Refusal 422 naming ``form`` when it carries more than
    :data:`MAX_FORM_FIELDS` fields (``parse_qs`` raises ValueError: it was a 500)."""
    try:
        return parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=MAX_FORM_FIELDS)
    except ValueError:
        raise Refusal(
            422, "Invalid request", f"form: more than {MAX_FORM_FIELDS} fields; send the page's form as it is", "form"
        ) from None


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _page_url(period: str | None, enterprise_id: str | None) -> str:
    query = {k: v for k, v in (("period", period), ("enterprise_id", enterprise_id)) if v}
    return "/billing" + (f"?{urlencode(query)}" if query else "")


# the page ----------------------------------------------------------------------------------------
@router.get("", response_class=HTMLResponse, include_in_schema=False)
def page(
    request: Request, period: str | None = None, enterprise_id: str | None = None, ledger_page: str | None = None
) -> Response:
    """The billing page of one period (HTML), with the wallets in view and page ``ledger_page``
    (1-based; 422 naming it when not a number ≥ 1) of their ledger; the sign-in form (401) without a
    valid credential, and (400) when the URL carries a key."""
    try:
        v = viewer(request, enterprise_id, app_picker=True)
        chosen = _period(period)
        if not v.enterprise_id:  # an admin who has not chosen an app yet: the app picker
            return _html(request, "apps.html", viewer=v, apps=_apps(), period=chosen)
        report = _report(v, chosen)
        wallets = _wallets(v, chosen, _ledger_page_number(ledger_page))
    except Refusal as exc:
        if exc.status == 401 or exc.field == "key":
            error = exc.detail if exc.status != 401 or _has_credentials(request) else None
            return _login_page(request, exc.status, error, _page_url(period, enterprise_id))
        return _html(request, "error.html", exc.status, headers=exc.headers, error=exc)
    now = current_period()
    choices = month_choices(v.enterprise_id, chosen)
    with _snapshot() as session:
        workflows = workflow_rollups(session, v.enterprise_id, chosen)
    query = urlencode({"period": chosen, **({"enterprise_id": enterprise_id} if enterprise_id else {})})
    ledger_urls = {}
    if wallets.ledger is not None:
        for name, number in (("prev", wallets.ledger.page - 1), ("next", wallets.ledger.page + 1)):
            if 1 <= number <= wallets.ledger.pages:
                ledger_urls[name] = f"/billing?{query}&ledger_page={number}#ledger"
    shown = report.displayed()
    with _snapshot() as session:  # issue 18 items 3 and 4: the attention and top-up sections
        sections = page_sections(session, request, v, chosen, [w.wallet_id for w in wallets.rows])
    history = {
        "current": now,  # the month to date (the chart marks it)
        "periods": report.history.periods,
        "labels": [_month(p) for p in report.history.periods],
        "total_cents": shown.history_totals,
        "providers": [
            {
                "name": name,
                "label": provider_name(name),
                "color": provider_color(name),
                "cost_nanos": values,
                "cents": shown.history[name],
            }
            for name, values in report.history.by_provider.items()
        ],
    }
    return _html(
        request,
        "billing.html",
        report=report,
        shown=shown,
        wallets=wallets,
        sources=SOURCE_LABELS,
        ledger_urls=ledger_urls,
        viewer=v,
        role=v.principal.role.value,
        periods=choices,
        query=query,
        history=history,
        meters=METERS,
        enterprise_param=enterprise_id or "",
        now_period=now,
        **sections,
        workflows=workflows,
        range_defaults=_range_defaults(chosen),
    )


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: str = "/billing") -> Response:
    """The sign-in form (paste an API key), with its CSRF token."""
    return _login_page(request, 200, None, _safe_next(next))


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login(request: Request) -> Response:
    """Sign in with the pasted key (form fields ``key``, ``csrf_token``, ``next``).

    In order: at most ``settings.billing_login_rate_limit`` attempts per client IP (429 with
    ``Retry-After``), the request must come from this site (403 naming ``Origin``), the form's
    ``csrf_token`` must equal the ``tollgate_csrf`` cookie (403 naming ``csrf_token``), the key must
    be valid (401).  Then a server-side session is opened, its id set in the ``tollgate_session``
    cookie, and the browser sent to ``next`` (303; same-site ``/billing`` paths only)."""
    settings = get_settings()
    try:
        check_client_rate_limit(
            settings.billing_login_rate_limit,
            "billing-login-ip",
            _client_ip(request),
            "sign-in attempts from one address",
        )
    except Problem as exc:
        return _login_page(request, 429, f"Too many sign-in attempts: {exc.detail}", "/billing", headers=exc.headers)
    try:
        form = await read_form(request)
    except Refusal as exc:
        return _login_page(request, exc.status, exc.detail, "/billing")
    key = (form.get("key") or [""])[0].strip()
    next_url = _safe_next((form.get("next") or ["/billing"])[0])
    sent_token = (form.get("csrf_token") or [""])[0]
    cookie_token = request.cookies.get(CSRF_COOKIE) or ""
    try:
        check_origin(request)
        if not sent_token or not cookie_token or not hmac.compare_digest(sent_token.encode(), cookie_token.encode()):
            raise Refusal(
                403,
                "Forbidden",
                "csrf_token: the sign-in form is stale or was not sent from this site; "
                "reload the page and sign in again",
                "csrf_token",
            )
        if not key:
            raise Refusal(401, "Unauthorized", "key: paste an API key", "key")
        who = await run_in_threadpool(_principal, key)
    except Refusal as exc:
        return _login_page(request, exc.status, exc.detail, next_url)
    redis = get_gate().redis
    await run_in_threadpool(close_session, redis, request.cookies.get(COOKIE))  # a session this browser had
    web = await run_in_threadpool(open_session, redis, who.key_prefix, settings.billing_session_ttl_s)
    response = RedirectResponse(next_url, status_code=303)
    response.headers.update(_SECURITY_HEADERS)
    _set_cookie(response, request, COOKIE, web.session_id, settings.billing_session_ttl_s)
    response.delete_cookie(CSRF_COOKIE, path="/billing")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    """Sign out: end the server-side session and clear its cookie, then go to the sign-in form (303).

    The request must come from this site (403 naming ``Origin``) and, with a live session, carry
    that session's CSRF token as the form field ``csrf_token`` (403 naming ``csrf_token``)."""
    try:
        check_origin(request)
    except Refusal as exc:
        return _html(request, "error.html", exc.status, error=exc)
    redis = get_gate().redis
    web = await run_in_threadpool(read_session, redis, request.cookies.get(COOKIE))
    if web is not None:
        try:
            form = await read_form(request)
        except Refusal as exc:
            return _html(request, "error.html", exc.status, error=exc)
        sent = (form.get("csrf_token") or [""])[0]
        if not sent or not hmac.compare_digest(sent.encode(), web.csrf.encode()):
            return _html(
                request,
                "error.html",
                403,
                error=Refusal(
                    403, "Forbidden", "csrf_token: the sign-out form was not sent from this site's page", "csrf_token"
                ),
            )
        await run_in_threadpool(close_session, redis, web.session_id)
    response = RedirectResponse("/billing/login", status_code=303)
    response.headers.update(_SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/billing")
    return response


def _safe_next(url: str) -> str:
    """Only same-site billing paths (no open redirect)."""
    return url if url.startswith("/billing") and not url.startswith("//") else "/billing"


# exports -----------------------------------------------------------------------------------------
def _filename(v: Viewer, period: str, ext: str) -> str:
    parts = ["tollgate-billing", v.enterprise_id] + ([v.wallet_id] if v.wallet_id else []) + [period]
    return _SAFE_NAME.sub("_", "-".join(parts)) + f".{ext}"


def _download(v: Viewer, period: str, ext: str) -> dict[str, str]:
    return {
        "Content-Disposition": f'attachment; filename="{_filename(v, period, ext)}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def _streamed(v: Viewer, period: str, render) -> Iterator[str]:
    """Report and events from one snapshot, rendered while the rows stream from PostgreSQL."""
    with _snapshot() as session:
        report = _report(v, period, session)
        events = (
            iter_events(session, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id)
            if v.detail
            else None
        )
        yield from batched(render(report, events))  # 64 KiB pieces, not a piece per row


#: the exports' query parameters and what /docs says about them (the parameters are the same as before)
ExportPeriod = Annotated[str | None, Query(description="A calendar month, UTC: `YYYY-MM`; default the current month.")]
ExportApp = Annotated[
    str | None,
    Query(description="The app. Owner and end-user keys: their own, may be omitted. Admin keys: required."),
]
EXPORT_WHO = (
    "**Key:** `Authorization: Bearer tg_…`, or the `/billing` page's sign-in. An **owner** key gets its "
    "app, an **end_user** key its own wallet only, an **admin** key any app's totals without end users' "
    "detail."
)
#: the exports send the bearer key (Swagger UI's Authorize), though they read it themselves
EXPORT_SECURITY: dict[str, Any] = {"security": [{"apiKey": []}]}
EXPORT_ERRORS = described(
    {401: {}, 403: {}, 404: {}, 422: {}},
    {
        401: "No API key or sign-in, or an unknown or revoked key.",
        403: "`enterprise_id` is another app than your key's.",
        404: "No app `enterprise_id`.",
        422: "`period` is not a `YYYY-MM` month, or an admin key without `enterprise_id`.",
    },
)


@router.get(
    "/export.csv",
    summary="Usage of a month as CSV",
    description=(
        "A month's usage as a CSV download: one line per recorded turn (tokens, cost and billed "
        "amount as exact integer nano-USD); admin keys get aggregate lines instead.\n\n" + EXPORT_WHO
    ),
    response_description="The CSV file (`text/csv`).",
    responses=EXPORT_ERRORS,
    openapi_extra=EXPORT_SECURITY,
)
def export_csv(request: Request, period: ExportPeriod = None, enterprise_id: ExportApp = None) -> Response:
    """The period's usage events as CSV (exact integer nanos); aggregate lines for admins."""
    try:
        v, chosen = viewer(request, enterprise_id), _period(period)
    except Refusal as exc:
        return _problem(exc)
    return StreamingResponse(
        _streamed(v, chosen, csv_rows), media_type="text/csv; charset=utf-8", headers=_download(v, chosen, "csv")
    )


@router.get(
    "/export.json",
    summary="Usage of a month as JSON",
    description=(
        "A month's billing report and its recorded turns as one JSON download: "
        '`{"report": …, "events": […]}`, money as exact integer nano-USD; admin keys get the report '
        "without events.\n\n" + EXPORT_WHO
    ),
    response_description="The JSON document.",
    responses=EXPORT_ERRORS,
    openapi_extra=EXPORT_SECURITY,
)
def export_json(request: Request, period: ExportPeriod = None, enterprise_id: ExportApp = None) -> Response:
    """``{"report": …, "events": […]}`` of the period (exact integer nanos; no events for admins)."""
    try:
        v, chosen = viewer(request, enterprise_id), _period(period)
    except Refusal as exc:
        return _problem(exc)
    return StreamingResponse(
        _streamed(v, chosen, json_chunks), media_type="application/json", headers=_download(v, chosen, "json")
    )


@router.get(
    "/export.pdf",
    summary="Statement of a month as PDF",
    description=(
        "A month's statement as a PDF download: per wallet, the opening balance, credits by source, "
        "debits and closing balance (one total line for admin keys).\n\n" + EXPORT_WHO
    ),
    response_description="The PDF file (`application/pdf`).",
    responses=EXPORT_ERRORS,
    openapi_extra=EXPORT_SECURITY,
)
def export_pdf(request: Request, period: ExportPeriod = None, enterprise_id: ExportApp = None) -> Response:
    """The period's statement as a PDF."""
    try:
        v, chosen = viewer(request, enterprise_id), _period(period)
        report = _report(v, chosen)
        wallets = _wallets(v, chosen)
    except Refusal as exc:
        return _problem(exc)
    statements = wallets.rows if v.detail else [wallets.total]
    return Response(
        pdf_statement(report, statements), media_type="application/pdf", headers=_download(v, chosen, "pdf")
    )


# static files ------------------------------------------------------------------------------------
_STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
}


@router.get("/static/{name:path}", include_in_schema=False)
def static(name: str) -> Response:
    """The page's static files (package data under ``api_stub/static``); nothing outside it."""
    path = (STATIC / name).resolve()
    if not path.is_file() or STATIC not in path.parents or path.suffix not in _STATIC_TYPES:
        return Response(status_code=404)
    return FileResponse(
        path,
        media_type=_STATIC_TYPES[path.suffix],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


__all__ = ["COOKIE", "CSRF_COOKIE", "Refusal", "Viewer", "check_origin", "own_origin", "router", "viewer"]
