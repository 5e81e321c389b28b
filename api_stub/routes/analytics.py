"""Read-only figures: usage analytics (``worker.chats.analytics``), rollups (``workflow_rollup``) and
per-workflow averages, and the usage export (persisted turns of one month, JSON or CSV, paged).

Scopes: an owner reads its own app; an admin reads any app's aggregates (``enterprise_id``
required) but no rollup document (it names chats) and no per-turn usage; an end user reads only its
own wallet's usage.
"""

from __future__ import annotations

import io
from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlmodel import col

from api_stub.api_docs import described
from api_stub.csv_cells import csv_writer, safe_row
from api_stub.deps import ERROR_RESPONSES, Caller, enterprise_in_scope, field_problem, forbid_unless
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole
from models.rollup import (
    UsageBucketPublic,
    UsageBucketsPublic,
    WorkflowAveragesPublic,
    WorkflowRollup,
    WorkflowRollupPublic,
    WorkflowRollupsPublic,
)
from models.turn import UsageEvent, UsageEventPublic, UsageEventsPublic
from models.validation import SAFE_ID, QueryInt
from worker.chats.analytics import usage_analytics
from worker.chats.rollups import workflow_averages
from worker.db import session_scope
from worker.periods import period_bounds

router = APIRouter(tags=["analytics"], route_class=StrictJsonRoute)
Period = Annotated[str, Query(pattern=r"^[0-9]{4}-[0-9]{2}$", description="A calendar month, UTC: `YYYY-MM`.")]
EnterpriseQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="The app. Owner keys: their own app, may be omitted. Admin keys: required.",
    ),
    SAFE_ID,
]
USAGE_FIELDS = tuple(UsageEventPublic.model_fields)


def _period(period: str) -> tuple:
    try:
        return period_bounds(period)
    except ValueError as exc:
        raise field_problem(422, "Invalid request", "period", str(exc)) from None


@router.get(
    "/v1/analytics/usage",
    response_model=UsageBucketsPublic,
    summary="Usage and cost over time",
    description=(
        "An app's turns, tokens (prompt, completion, cached) and money (`cost_nanos`: at the prices "
        "charged; `billed_nanos`: what was debited; integer nano-USD) per day, ISO week or month over "
        "`[start, end)` (UTC dates, at most 3 years), optionally split by workflow, agent, model "
        "and/or provider. Buckets without turns are left out. Includes turns recorded up to a few "
        "seconds ago.\n\n"
        "**Key:** an **owner** key (its own app; `enterprise_id` may be omitted) or an **admin** key (any app; `enterprise_id` required). **End-user** keys: 403."
    ),
    response_description="One row per bucket (and group), oldest first.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "End-user keys see no app-wide figures. Nothing was done.",
            404: "`enterprise_id` is another app than your owner key's. Nothing was done.",
            422: "Invalid query (`errors[].field` names it), or an admin key without `enterprise_id`.",
        },
    ),
)
def analytics_usage(
    who: Caller,
    start: Annotated[date, Query(description="The first day, UTC (included), `YYYY-MM-DD`.")],
    end: Annotated[date, Query(description="The day after the last one, UTC (excluded), `YYYY-MM-DD`.")],
    granularity: Annotated[
        Literal["day", "week", "month"], Query(description="The bucket: a UTC day, an ISO week or a calendar month.")
    ] = "day",
    group_by: Annotated[
        list[Literal["workflow", "agent", "model", "provider"]] | None,
        Query(
            description="Split each bucket by these keys; repeat the parameter for several (`group_by=workflow&group_by=agent`)."
        ),
    ] = None,
    enterprise_id: EnterpriseQuery = None,
) -> UsageBucketsPublic:
    """Turns, tokens and nano-USD of one app per day, ISO week or month over ``[start, end)``,
    optionally grouped by workflow, agent, model and/or provider (computed from ``usage_event``)."""
    enterprise = enterprise_in_scope(who, enterprise_id)
    keys = list(dict.fromkeys(group_by or ()))
    if end <= start:
        raise field_problem(422, "Invalid request", "end", f"{end.isoformat()} must be after start {start.isoformat()}")
    if (end - start).days > 3 * 366:
        raise field_problem(422, "Invalid request", "end", "the range may span at most 3 years")
    with session_scope() as session:
        rows = usage_analytics(
            session, enterprise_id=enterprise, granularity=granularity, group_by=keys, start=start, end=end
        )
    data = [UsageBucketPublic(**row) for row in rows]
    return UsageBucketsPublic(
        enterprise_id=enterprise,
        granularity=granularity,
        group_by=keys,
        start=start,
        end=end,
        data=data,
        count=len(data),
    )


@router.get(
    "/v1/analytics/rollups",
    response_model=WorkflowRollupsPublic,
    summary="Monthly totals by workflow",
    description=(
        "An app's monthly summaries for one UTC month, one per workflow: sessions (chats), turns, "
        "tokens and cost (nano-USD). They are refreshed every minute and when a chat ends, so they "
        "may trail the latest turns by about a minute. Owner keys also get each summary's full "
        "`document` (per-chat detail); admin keys get the totals only.\n\n"
        "**Key:** an **owner** key (its own app; `enterprise_id` may be omitted) or an **admin** key (any app; `enterprise_id` required). **End-user** keys: 403."
    ),
    response_description="The month's summaries, by workflow.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "End-user keys see no app-wide figures. Nothing was done.",
            404: "`enterprise_id` is another app than your owner key's. Nothing was done.",
            422: "Invalid query (`errors[].field` names it), or an admin key without `enterprise_id`.",
        },
    ),
)
def analytics_rollups(who: Caller, period: Period, enterprise_id: EnterpriseQuery = None) -> WorkflowRollupsPublic:
    """The stored rollups of one app in one UTC month, by workflow (refreshed by beat every minute
    and when a chat ends).  Owners also get each ``mon_{enterprise}_{workflow}`` document."""
    enterprise = enterprise_in_scope(who, enterprise_id)
    _period(period)
    with session_scope() as session:
        rows = (
            session.execute(
                select(WorkflowRollup)
                .where(col(WorkflowRollup.enterprise_id) == enterprise, col(WorkflowRollup.period) == period)
                .order_by(col(WorkflowRollup.workflow))
            )
            .scalars()
            .all()
        )
    data = [
        WorkflowRollupPublic.model_validate(r, update={"document": r.document if who.role is ApiRole.owner else None})
        for r in rows
    ]
    return WorkflowRollupsPublic(data=data, count=len(data))


@router.get(
    "/v1/analytics/workflows/{workflow}",
    response_model=WorkflowAveragesPublic,
    summary="Per-chat averages of a workflow",
    description=(
        "One workflow's totals and per-session (per-chat) averages in one UTC month: cost "
        "(nano-USD and a USD string), tokens and duration (seconds). Taken from the monthly summary "
        "(`source: rollup`) or, when the month was never summarized, computed from its turns "
        "(`source: usage_event`); all zero for a workflow without turns.\n\n"
        "**Key:** an **owner** key (its own app; `enterprise_id` may be omitted) or an **admin** key (any app; `enterprise_id` required). **End-user** keys: 403."
    ),
    response_description="The workflow's totals and averages.",
    responses=described(
        ERROR_RESPONSES,
        {
            403: "End-user keys see no app-wide figures. Nothing was done.",
            404: "`enterprise_id` is another app than your owner key's. Nothing was done.",
            422: "Invalid query (`errors[].field` names it), or an admin key without `enterprise_id`.",
        },
    ),
)
def analytics_workflow(
    who: Caller,
    workflow: Annotated[
        str, Path(min_length=1, max_length=200, description="The workflow (`workflow` of its turns)."), SAFE_ID
    ],
    period: Period,
    enterprise_id: EnterpriseQuery = None,
) -> WorkflowAveragesPublic:
    """Per-session averages of one workflow in one UTC month: from its rollup, or computed from the
    turns when it was never rolled up (all zero for a workflow without turns)."""
    enterprise = enterprise_in_scope(who, enterprise_id)
    _period(period)
    with session_scope() as session:
        return WorkflowAveragesPublic(**workflow_averages(session, enterprise, workflow, period))


@router.get(
    "/v1/usage",
    response_model=UsageEventsPublic,
    summary="Export recorded turns",
    description=(
        "Every recorded turn of one UTC month, oldest first, one page at a time, with its tokens, "
        "response time (ms), the prices it was charged at (nano-USD per million tokens), its cost and "
        "what was debited (integer nano-USD). Pass the answer's `next_cursor` as `cursor` for the next "
        "page (`null`: last page). Turns appear here a few seconds after they were charged.\n\n"
        "`format=csv` answers `text/csv` with a header row (the JSON fields, in order); the next page "
        'is in the `Link: <…>; rel="next"` and `X-Next-Cursor` headers.\n\n'
        "**Key:** an **owner** key (its whole app, or one wallet with `wallet_id`) or an **end_user** "
        "key (its own wallet). **Admin** keys: 403 (per-turn rows are end users' detail)."
    ),
    response_description="One page of turns (JSON), or the same rows as CSV.",
    responses=described(
        ERROR_RESPONSES | {200: {"content": {"text/csv": {}}}},
        {
            403: "Admin keys never see per-turn rows. Nothing was done.",
            404: "End-user keys: `wallet_id` is not your own wallet. Nothing was done.",
        },
    ),
)
def usage_export(
    request: Request,
    who: Caller,
    period: Period,
    format: Annotated[Literal["json", "csv"], Query(description="`json` (default) or `csv`.")] = "json",
    limit: Annotated[QueryInt, Query(ge=1, le=5000, description="Turns per page (1..5,000).")] = 1000,
    cursor: Annotated[
        QueryInt | None,
        Query(ge=0, le=2**63 - 1, description="The `next_cursor` of the previous page; omit for the first page."),
    ] = None,
    wallet_id: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Only this wallet's turns (end-user keys: their own wallet, the only one they may name).",
        ),
        SAFE_ID,
    ] = None,
):
    """Persisted turns of one UTC month, oldest first, one page: an owner's whole app (or one of
    its wallets), an end user's own wallet.  Admins: 403 (per-turn rows are end users' detail).

    ``format=csv`` answers ``text/csv`` with a header row and the next page in ``Link: <…>;
    rel="next"`` and ``X-Next-Cursor``.  Money is integer nano-USD.
    """
    forbid_unless(who, ApiRole.owner, ApiRole.end_user, action="export per-turn usage")
    lo, hi = _period(period)
    ue = UsageEvent
    stmt = select(*(getattr(ue, f) for f in USAGE_FIELDS)).where(col(ue.occurred_at) >= lo, col(ue.occurred_at) < hi)
    if who.role is ApiRole.end_user:
        if wallet_id is not None and wallet_id != who.wallet_id:
            raise field_problem(404, "Unknown wallet", "wallet_id", f"no wallet {wallet_id!r} for this key")
        stmt = stmt.where(col(ue.wallet_id) == who.wallet_id)
    else:
        stmt = stmt.where(col(ue.enterprise_id) == who.enterprise_id)
        if wallet_id is not None:
            stmt = stmt.where(col(ue.wallet_id) == wallet_id)
    if cursor is not None:
        stmt = stmt.where(col(ue.id) > cursor)
    with session_scope() as session:
        rows = session.execute(stmt.order_by(col(ue.id)).limit(limit + 1)).all()
    page = rows[:limit]
    next_cursor = page[-1].id if len(rows) > limit else None
    if format == "json":
        data = [UsageEventPublic(**row._mapping) for row in page]
        return UsageEventsPublic(period=period, data=data, count=len(data), next_cursor=next_cursor)
    buffer = io.StringIO()
    writer = csv_writer(buffer)
    writer.writerow(USAGE_FIELDS)
    for row in page:
        writer.writerow(safe_row(row))
    headers = {"Content-Disposition": f'attachment; filename="usage-{period}.csv"'}
    if next_cursor is not None:
        headers["X-Next-Cursor"] = str(next_cursor)
        headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)
