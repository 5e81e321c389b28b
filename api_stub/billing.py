"""The ``/billing`` page (server-rendered, Jinja2 + a vendored Chart.js) and its exports.

Routes (all under ``/billing``):

- ``GET /billing?period=YYYY-MM&enterprise_id=…``: the page; ``period`` defaults to the current UTC
  month, ``enterprise_id`` to the key's app (admins must name one).  ``?key=tg_…`` signs a browser
  in: it sets the HttpOnly cookie and redirects to the same page without the key.
- ``GET|POST /billing/login``, ``POST /billing/logout``: a form that sets / clears the cookie.
- ``GET /billing/export.csv|json|pdf?period=…&enterprise_id=…``: the period's exports
  (:mod:`api_stub.billing_exports`).
- ``GET /billing/static/…``: the page's CSS, JS and vendored Chart.js.

Who sees what: an API key as ``Authorization: Bearer tg_…`` or the cookie.  ``owner`` keys see their
app; ``end_user`` keys only their own wallet's usage and budget; ``admin`` keys any app's aggregates
without end-user detail (no chats, no wallet budgets, no per-event export).  A key of another app gets
403 on the page and every export; a missing or bad key 401 (the page shows the login form).  A bad
``period`` is 422 naming the field.  Exports are ``application/problem+json`` on errors; the page
answers errors in HTML with the same status.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlmodel import Session

from api_stub.billing_exports import csv_rows, json_chunks, pdf_statement
from models.tables import ApiRole, Enterprise
from worker.apikeys import Principal, authenticate
from worker.billing_report import (
    METERS,
    BillingReport,
    ReportError,
    billing_report,
    format_bp,
    format_quantity,
    format_usd,
    iter_events,
    provider_name,
    validate_period,
)
from worker.db import get_engine, session_scope
from worker.periods import current_period, previous_period

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
#: the browser's credential: the API key itself, HttpOnly, sent only to /billing
COOKIE = "tollgate_key"
COOKIE_MAX_AGE_S = 8 * 3600
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

router = APIRouter(prefix="/billing", tags=["billing"])
templates = Jinja2Templates(directory=str(HERE / "templates"))


# Jinja filters: money and numbers are formatted here, from integers, never floats ------------------
def _month(period: str) -> str:
    start, _ = validate_period(period)
    return f"{start:%b %Y}"


templates.env.filters.update(
    provider_name=provider_name,
    usd=format_usd,
    usd4=lambda n: format_usd(n, 4),
    num=lambda n: f"{int(n):,}",
    qty=format_quantity,
    pct_bp=format_bp,
    month=_month,
    month_long=lambda p: f"{validate_period(p)[0]:%B %Y}",
)


# who is asking -----------------------------------------------------------------------------------
class Refusal(Exception):
    """A request the billing routes refuse: HTTP status, title, detail and the field at fault."""

    def __init__(self, status: int, title: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field = status, title, detail, field


@dataclass(frozen=True)
class Viewer:
    """A caller allowed to see one app's billing: the app, the wallet it is narrowed to (end users)
    and whether end-user detail (chats, wallet budgets, events) is shown."""

    principal: Principal
    enterprise_id: str
    wallet_id: str | None
    detail: bool


def _key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
    return request.cookies.get(COOKIE)


def _principal(key: str | None) -> Principal:
    if not key:
        raise Refusal(401, "Unauthorized", "an API key is required: Authorization: Bearer tg_… or sign in")
    with session_scope() as session:
        who = authenticate(session, key)
    if who is None:
        raise Refusal(401, "Unauthorized", "the API key is unknown or revoked")
    return who


def viewer(request: Request, enterprise_id: str | None) -> Viewer:
    """The caller of ``request`` and what it may see of ``enterprise_id`` (default: the key's app).

    Raises Refusal: 401 (no, unknown or revoked key), 403 (an app or wallet key of another app),
    422 (an admin key without ``enterprise_id``), 404 (an admin asking for an unknown app).
    """
    who = _principal(_key(request))
    if who.role is ApiRole.admin:
        if not enterprise_id:
            raise Refusal(422, "Invalid request", "enterprise_id: an admin key must name the app", "enterprise_id")
        with session_scope() as session:
            if session.get(Enterprise, enterprise_id) is None:
                raise Refusal(404, "Unknown app", f"enterprise_id: unknown enterprise {enterprise_id!r}",
                              "enterprise_id")
        return Viewer(who, enterprise_id, None, detail=False)
    if enterprise_id and enterprise_id != who.enterprise_id:
        raise Refusal(403, "Forbidden", f"this key may not see the billing of enterprise {enterprise_id!r}",
                      "enterprise_id")
    wallet = who.wallet_id if who.role is ApiRole.end_user else None
    return Viewer(who, who.enterprise_id, wallet, detail=True)


def _period(period: str | None) -> str:
    if period is None or period == "":
        return current_period()
    try:
        validate_period(period)
    except ReportError as exc:
        raise Refusal(422, "Invalid request", str(exc), "period") from None
    return period


@contextmanager
def _snapshot() -> Iterator[Session]:
    """A read-only REPEATABLE READ session: a report and its events come from one snapshot."""
    engine = get_engine().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    with Session(engine) as session:
        yield session


def _report(v: Viewer, period: str, session: Session | None = None) -> BillingReport:
    try:
        if session is not None:
            return billing_report(session, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id,
                                  detail=v.detail)
        with _snapshot() as s:
            return billing_report(s, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id,
                                  detail=v.detail)
    except ReportError as exc:
        field = str(exc).split(":", 1)[0]
        raise Refusal(404 if field == "enterprise_id" else 422, "Invalid request", str(exc), field) from None


def _problem(exc: Refusal) -> JSONResponse:
    body = {"type": "about:blank", "title": exc.title, "status": exc.status, "detail": exc.detail}
    if exc.field:
        body["errors"] = [{"field": exc.field, "message": exc.detail}]
    headers = {"WWW-Authenticate": 'Bearer realm="tollgate"'} if exc.status == 401 else None
    return JSONResponse(body, status_code=exc.status, media_type="application/problem+json", headers=headers)


def _html(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(_SECURITY_HEADERS)
    return response


def _set_cookie(response: Response, request: Request, key: str) -> None:
    response.set_cookie(COOKIE, key, max_age=COOKIE_MAX_AGE_S, path="/billing", httponly=True, samesite="lax",
                        secure=request.url.scheme == "https")


def _page_url(period: str | None, enterprise_id: str | None) -> str:
    query = {k: v for k, v in (("period", period), ("enterprise_id", enterprise_id)) if v}
    return "/billing" + (f"?{urlencode(query)}" if query else "")


# the page ----------------------------------------------------------------------------------------
@router.get("", response_class=HTMLResponse, include_in_schema=False)
def page(request: Request, period: str | None = None, enterprise_id: str | None = None,
         key: str | None = None) -> Response:
    """The billing page of one period (HTML)."""
    if key is not None:  # sign in from a link: check the key, keep it in the cookie, drop it from the URL
        try:
            _principal(key)
        except Refusal as exc:
            return _html(request, "login.html", exc.status, error=exc.detail, next_url=_page_url(period, enterprise_id))
        response = RedirectResponse(_page_url(period, enterprise_id), status_code=303)
        _set_cookie(response, request, key)
        response.headers.update(_SECURITY_HEADERS)
        return response
    try:
        v = viewer(request, enterprise_id)
        chosen = _period(period)
        report = _report(v, chosen)
    except Refusal as exc:
        if exc.status == 401:
            return _html(request, "login.html", 401, error=None if _key(request) is None else exc.detail,
                         next_url=_page_url(period, enterprise_id))
        return _html(request, "error.html", exc.status, error=exc)
    now = current_period()
    choices = [now]
    while len(choices) < 12:
        choices.append(previous_period(choices[-1]))
    if chosen not in choices:
        choices = sorted({*choices, chosen}, reverse=True)
    query = urlencode({"period": chosen, **({"enterprise_id": enterprise_id} if enterprise_id else {})})
    history = {"periods": report.history.periods, "labels": [_month(p) for p in report.history.periods],
               "providers": [{"name": name, "label": provider_name(name), "cost_nanos": values}
                             for name, values in report.history.by_provider.items()]}
    return _html(request, "billing.html", report=report, viewer=v, role=v.principal.role.value,
                 periods=choices, query=query, history=history, meters=METERS,
                 enterprise_param=enterprise_id or "")


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: str = "/billing") -> Response:
    """The sign-in form (paste an API key)."""
    return _html(request, "login.html", error=None, next_url=_safe_next(next))


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
async def login(request: Request) -> Response:
    """Check the pasted key (form field ``key``); on success set the cookie and go to ``next``."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    key = (form.get("key") or [""])[0].strip()
    next_url = _safe_next((form.get("next") or ["/billing"])[0])
    try:
        _principal(key)
    except Refusal as exc:
        return _html(request, "login.html", exc.status, error=exc.detail if key else "key: paste an API key",
                     next_url=next_url)
    response = RedirectResponse(next_url, status_code=303)
    _set_cookie(response, request, key)
    return response


@router.post("/logout", include_in_schema=False)
def logout() -> Response:
    """Clear the cookie and go back to the sign-in form."""
    response = RedirectResponse("/billing/login", status_code=303)
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
    return {"Content-Disposition": f'attachment; filename="{_filename(v, period, ext)}"', "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff"}


def _streamed(v: Viewer, period: str, render) -> Iterator[str]:
    """Report and events from one snapshot, rendered while the rows stream from PostgreSQL."""
    with _snapshot() as session:
        report = _report(v, period, session)
        events = (iter_events(session, enterprise_id=v.enterprise_id, period=period, wallet_id=v.wallet_id)
                  if v.detail else None)
        yield from render(report, events)


@router.get("/export.csv", responses={401: {}, 403: {}, 404: {}, 422: {}})
def export_csv(request: Request, period: str | None = None, enterprise_id: str | None = None) -> Response:
    """The period's usage events as CSV (exact integer nanos); aggregate lines for admins."""
    try:
        v, chosen = viewer(request, enterprise_id), _period(period)
    except Refusal as exc:
        return _problem(exc)
    return StreamingResponse(_streamed(v, chosen, csv_rows), media_type="text/csv; charset=utf-8",
                             headers=_download(v, chosen, "csv"))


@router.get("/export.json", responses={401: {}, 403: {}, 404: {}, 422: {}})
def export_json(request: Request, period: str | None = None, enterprise_id: str | None = None) -> Response:
    """``{"report": …, "events": […]}`` of the period (exact integer nanos; no events for admins)."""
    try:
        v, chosen = viewer(request, enterprise_id), _period(period)
    except Refusal as exc:
        return _problem(exc)
    return StreamingResponse(_streamed(v, chosen, json_chunks), media_type="application/json",
                             headers=_download(v, chosen, "json"))


@router.get("/export.pdf", responses={401: {}, 403: {}, 404: {}, 422: {}})
def export_pdf(request: Request, period: str | None = None, enterprise_id: str | None = None) -> Response:
    """The period's statement as a PDF."""
    try:
        v, chosen = viewer(request, enterprise_id), _period(period)
        report = _report(v, chosen)
    except Refusal as exc:
        return _problem(exc)
    return Response(pdf_statement(report), media_type="application/pdf", headers=_download(v, chosen, "pdf"))


# static files ------------------------------------------------------------------------------------
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".md": "text/plain; charset=utf-8", ".svg": "image/svg+xml"}


@router.get("/static/{name:path}", include_in_schema=False)
def static(name: str) -> Response:
    """The page's static files (package data under ``api_stub/static``); nothing outside it."""
    path = (STATIC / name).resolve()
    if not path.is_file() or STATIC not in path.parents or path.suffix not in _STATIC_TYPES:
        return Response(status_code=404)
    return FileResponse(path, media_type=_STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


__all__ = ["COOKIE", "Refusal", "Viewer", "router", "viewer"]
