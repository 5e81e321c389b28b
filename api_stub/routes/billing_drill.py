"""The ``/billing`` page's drill-down views (server-rendered HTML, same sign-in and rules as the page):

- ``GET /billing/chats/{chat_id}?enterprise_id=…&after=…&period=…``: one conversation: its figures
  over its whole life (turns, tokens, cost, billed: the chat's running totals), its agents
  (``chat_agent_usage``: turns, tokens, response time, cost) and a page of its turns, oldest first
  (time, agent, model, tokens in/out/cached, cost, duration, the gate's action), paged with the
  keyset cursor ``after`` (:mod:`worker.chats.drill`).  ``period`` only picks the month the
  "back" and workflow links go to (default: the month of the chat's last turn).
- ``GET /billing/workflows/{workflow}?period=YYYY-MM&enterprise_id=…``: one workflow's month: the
  rollup's per-session averages (sessions, turns, tokens, cost, duration), and for owners its
  agents and costliest chats (linked to their pages).
- ``GET /billing/range?from=YYYY-MM-DD&to=YYYY-MM-DD&enterprise_id=…``: the usage figures of any
  date range (both days included, UTC) up to :data:`MAX_RANGE_DAYS` days: totals, spend by provider
  and model, meters and (with detail) the top conversations.  Budgets are monthly and the history
  chart is per month: they stay on the month view.

Who sees what (the rules of :mod:`api_stub.routes.chats` and :mod:`api_stub.routes.analytics`,
through :func:`api_stub.routes.billing.viewer`): a chat page for its app's owner and for the end
user whose wallet pays for it (another wallet's chat: 404, as an unknown one); an admin sees
aggregates only, so a chat page is 403 for it.  A workflow page for owners (averages, agents,
chats) and admins (averages only); end users 403 (an app's figures).  The range view for anyone who
may see the month page, with the same narrowing (an end user's wallet, an admin's aggregates).  A
key of another app: 403; no sign-in: the sign-in form (401); bad input: 422 naming the field.

Amounts are shown as on the month page: cents by largest remainder so displayed parts sum to the
displayed total, ``<$0.01`` for a non-zero amount under half a cent, exact nanos in ``data-nanos``
and ``title``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from api_stub.routes.billing import (
    Refusal,
    Viewer,
    _has_credentials,
    _html,
    _login_page,
    _period,
    _snapshot,
    month_choices,
    templates,
    viewer,
)
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole, ChatStatus
from models.validation import text_problem
from models.wallet import Enterprise
from worker.billing.report import (
    CHAT_INACTIVE,
    METERS,
    ReportError,
    billing_report,
    largest_remainder,
    round_cents,
)
from worker.chats.drill import chat_last_turns, chat_view, parse_cursor, turn_page, workflow_view
from worker.chats.rollups import UnknownChat
from worker.errors import InputError
from worker.periods import FIRST_YEAR, LAST_YEAR, period_of

router = APIRouter(prefix="/billing", tags=["billing"], route_class=StrictJsonRoute)

#: a day as the range view takes it: YYYY-MM-DD in ASCII digits
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

#: the longest date range the range view accepts, in days (both ends included): a year, leap day too
MAX_RANGE_DAYS = 366


def _check_id(value: str, name: str) -> str:
    problem = text_problem(value, "id") if 1 <= len(value) <= 200 else "must be 1 to 200 characters"
    if problem:
        raise Refusal(422, "Invalid request", f"{name}: {problem}", name)
    return value


def _respond(request: Request, exc: Refusal, next_url: str) -> Response:
    if exc.status == 401 or exc.field == "key":
        error = exc.detail if exc.status != 401 or _has_credentials(request) else None
        return _login_page(request, exc.status, error, next_url)
    return _html(request, "error.html", exc.status, headers=exc.headers, error=exc)


def _here(request: Request) -> str:
    return request.url.path + (f"?{request.url.query}" if request.url.query else "")


def _split(total_nanos: int, parts: list[int]) -> tuple[int, list[int]]:
    """The displayed total (cents, rounded alone) and ``parts`` in cents adding up to it (none
    shown: an admin's workflow page, a chat without agent rows)."""
    total = round_cents(total_nanos)
    return total, largest_remainder(parts, total) if parts else []


def format_duration(seconds: float | int) -> str:
    """Seconds as read on the page: under a minute with milliseconds (``"12.345 s"``), under an hour
    ``"7 min 05 s"``, else ``"74 h 00 min"`` (whole seconds, minutes truncated).  Integer math after
    rounding to milliseconds; never negative."""
    ms = max(0, round(float(seconds) * 1000))
    if ms < 60_000:
        return f"{ms // 1000}.{ms % 1000:03d} s"
    whole = ms // 1000
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600:,} h {whole % 3600 // 60:02d} min"


templates.env.filters["duration"] = format_duration


def _shown_status(status: str, last_turn_at: datetime) -> tuple[str, bool]:
    idle = status == ChatStatus.active.value and datetime.now(UTC) - last_turn_at >= CHAT_INACTIVE
    return (ChatStatus.completed.value if idle else status), idle


# a conversation ----------------------------------------------------------------------------------
@router.get("/chats/{chat_id:path}", response_class=HTMLResponse, include_in_schema=False)
def chat_page(
    request: Request,
    chat_id: str,
    enterprise_id: str | None = None,
    after: str | None = None,
    period: str | None = None,
) -> Response:
    """One conversation's page (HTML): figures, agents and a page of turns; 403 for an admin, 404
    for a chat outside the caller's scope, 422 naming ``chat_id``, ``after`` or ``period``."""
    try:
        v = viewer(request, enterprise_id)
        _check_id(chat_id, "chat_id")
        back_period = _period(period) if period else None
        if v.principal.role is ApiRole.admin:
            raise Refusal(
                403, "Forbidden", "chat_id: an admin key sees aggregates only, not one conversation", "chat_id"
            )
        try:
            cursor = parse_cursor(after, "after")
        except InputError as exc:
            raise Refusal(422, "Invalid request", str(exc), "after") from None
        with _snapshot() as session:
            try:
                view = chat_view(session, v.enterprise_id, chat_id)
            except UnknownChat:
                raise Refusal(404, "Unknown chat", f"chat_id: no chat {chat_id!r} for this key", "chat_id") from None
            if v.wallet_id is not None and view.chat.wallet_id != v.wallet_id:  # as unknown: ids are not probed
                raise Refusal(404, "Unknown chat", f"chat_id: no chat {chat_id!r} for this key", "chat_id")
            page = turn_page(session, view.chat, after=cursor)
    except Refusal as exc:
        return _respond(request, exc, _here(request))
    chat = view.chat
    back_period = back_period or period_of(chat.last_turn_at)  # the month it was last active in
    total_cents, agent_cents = _split(chat.cost_nanos, [a.cost_nanos for a in view.agents])
    shown, idle = _shown_status(str(chat.status), chat.last_turn_at)
    base = {"period": back_period, **({"enterprise_id": enterprise_id} if enterprise_id else {})}
    here = f"/billing/chats/{quote(chat_id, safe='')}?"
    links = {
        "back": "/billing?" + urlencode(base) + "#top-chats",
        "first": here + urlencode(base) if cursor else None,
        "next": here + urlencode({**base, "after": page.next_cursor}) if page.next_cursor else None,
        "workflow": f"/billing/workflows/{quote(chat.workflow, safe='')}?" + urlencode(base)
        if v.wallet_id is None
        else None,
    }
    return _html(
        request,
        "chat.html",
        viewer=v,
        role=v.principal.role.value,
        app_name=_app_name(v),
        chat=chat,
        shown_status=shown,
        idle=idle,
        agents=list(zip(view.agents, agent_cents)),
        total_cents=total_cents,
        turns=page.rows,
        links=links,
        meters=METERS,
    )


def _app_name(v: Viewer) -> str:
    with _snapshot() as session:
        app = session.get(Enterprise, v.enterprise_id)
    return app.name if app is not None else v.enterprise_id


# a workflow's month ------------------------------------------------------------------------------
@router.get("/workflows/{workflow:path}", response_class=HTMLResponse, include_in_schema=False)
def workflow_page(
    request: Request, workflow: str, period: str | None = None, enterprise_id: str | None = None
) -> Response:
    """One workflow's month (HTML): the rollup's averages; agents and chats for owners.  403 for
    an end user, 422 naming ``workflow`` or ``period``."""
    try:
        v = viewer(request, enterprise_id)
        _check_id(workflow, "workflow")
        chosen = _period(period)
        if v.principal.role is ApiRole.end_user:
            raise Refusal(
                403, "Forbidden", "workflow: an end_user key may not read an app's workflow figures", "workflow"
            )
        with _snapshot() as session:
            view = workflow_view(session, v.enterprise_id, workflow, chosen, detail=v.detail)
            last_turns = chat_last_turns(session, v.enterprise_id, [c for c, _ in view.chats])
        months = month_choices(v.enterprise_id, chosen)
    except Refusal as exc:
        return _respond(request, exc, _here(request))
    avg = view.averages
    agent_names = sorted(view.agents, key=lambda a: (-int(view.agents[a]["cost_nanos"]), a))
    total_cents, agent_cents = _split(
        int(avg["total_cost_nanos"]), [int(view.agents[a]["cost_nanos"]) for a in agent_names]
    )
    base = {"period": chosen, **({"enterprise_id": enterprise_id} if enterprise_id else {})}
    return _html(
        request,
        "workflow.html",
        viewer=v,
        role=v.principal.role.value,
        app_name=_app_name(v),
        view=view,
        avg=avg,
        agents=[(a, view.agents[a], c) for a, c in zip(agent_names, agent_cents)],
        chats=[
            (chat_id, figures, *(_shown_status(*last_turns[chat_id]) if chat_id in last_turns else (None, False)))
            for chat_id, figures in view.chats
        ],
        total_cents=total_cents,
        periods=months,
        enterprise_param=enterprise_id or "",
        back="/billing?" + urlencode(base),
        chat_query=urlencode(base),
    )


# any date range ----------------------------------------------------------------------------------
def parse_range(raw_from: str | None, raw_to: str | None) -> tuple[date, date]:
    """``from`` and ``to`` ('YYYY-MM-DD', UTC days, both included) → the two dates.

    Raises Refusal 422 naming ``from`` or ``to``: missing, not a date (ASCII ``YYYY-MM-DD`` only),
    outside the years of a period (``worker.periods.FIRST_YEAR``..``LAST_YEAR``), ``to`` before
    ``from``, or a range longer than :data:`MAX_RANGE_DAYS` days."""
    out = []
    for name, raw in (("from", raw_from), ("to", raw_to)):
        if not raw:
            raise Refusal(422, "Invalid request", f"{name}: a date is required (YYYY-MM-DD)", name)
        try:
            if not _DAY.fullmatch(raw):  # fromisoformat alone also takes '2026-W45-1' and other scripts' digits
                raise ValueError(raw)
            day = date.fromisoformat(raw)
        except ValueError:
            raise Refusal(
                422,
                "Invalid request",
                f"{name}: {raw[:40]!r} is not a date written YYYY-MM-DD (e.g. 2026-11-03)",
                name,
            ) from None
        if not FIRST_YEAR <= day.year <= LAST_YEAR:  # the months the page has; 9999-12-31 + 1 day overflowed
            raise Refusal(
                422, "Invalid request", f"{name}: {raw!r} is outside the years {FIRST_YEAR}..{LAST_YEAR}", name
            )
        out.append(day)
    first, last = out
    if last < first:
        raise Refusal(422, "Invalid request", f"to: {last.isoformat()} is before from {first.isoformat()}", "to")
    days = (last - first).days + 1
    if days > MAX_RANGE_DAYS:
        raise Refusal(
            422,
            "Invalid request",
            f"to: the range covers {days} days; at most {MAX_RANGE_DAYS} days (a year) may be shown at once",
            "to",
        )
    return first, last


@router.get("/range", response_class=HTMLResponse, include_in_schema=False)
def range_page(request: Request, enterprise_id: str | None = None) -> Response:
    """The usage figures of the date range ``from``..``to`` (query parameters, both days included,
    UTC): totals, providers and models, meters, top conversations; 422 naming ``from``/``to``."""
    raw_from, raw_to = request.query_params.get("from"), request.query_params.get("to")
    try:
        v = viewer(request, enterprise_id)
        first, last = parse_range(raw_from, raw_to)
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
        period = f"{first:%Y-%m}"
        with _snapshot() as session:
            try:
                report = billing_report(
                    session,
                    enterprise_id=v.enterprise_id,
                    period=period,
                    wallet_id=v.wallet_id,
                    detail=v.detail,
                    span=(start, end),
                )
            except ReportError as exc:
                raise Refusal(422, "Invalid request", str(exc), exc.field) from None
        months = month_choices(v.enterprise_id, period)
    except Refusal as exc:
        return _respond(request, exc, _here(request))
    shown = report.displayed()
    base = {"period": period, **({"enterprise_id": enterprise_id} if enterprise_id else {})}
    return _html(
        request,
        "range.html",
        viewer=v,
        role=v.principal.role.value,
        report=report,
        shown=shown,
        first=first,
        last=last,
        days=(last - first).days + 1,
        periods=months,
        enterprise_param=enterprise_id or "",
        back="/billing?" + urlencode(base),
        chat_query=urlencode(base),
        max_days=MAX_RANGE_DAYS,
    )


__all__ = ["MAX_RANGE_DAYS", "parse_range", "router"]
