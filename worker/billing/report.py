"""The billing report of one app (enterprise) for one period (UTC month): what the ``/billing`` page
shows and what its CSV, JSON and PDF exports contain, computed once from ``usage_event`` so every
view of a period agrees to the nano.

Scope is always an enterprise, optionally narrowed to one wallet (an end user's view), and may drop
end-user detail (an admin's view: aggregates only, no per-chat list, no wallet budgets, no events).

Sections of a :class:`BillingReport` (money in integer nano-USD, tokens and quantities integers):

- ``providers``: LLM turns (``meter = 'llm'``) per provider, each with its models;
- ``meters``: non-LLM meters recorded through the same ledger (``emails``, ``storage_gb_month``,
  ``function_calls``), each listed even when unused;
- ``budgets``: the app's monthly budgets with their spend in the period, the thresholds (50/80/100 %)
  that spend has reached and the alerts recorded in ``budget_alert``; spend follows
  :mod:`worker.billing.budgets`: a wallet budget counts ``billed_nanos`` of its wallet, a workflow budget
  ``cost_nanos`` of the workflow;
- ``top_chats``: the 50 chats costing most in the period (``usage_event`` grouped by ``chat_id``,
  ties by ``chat_id``), with their ``chat_session`` status;
- ``history``: ``cost_nanos`` per provider per month for the 6 months ending with the period.

Where the sums come from (issue 18, "the page stays fast"): not from scanning ``usage_event``, but
from the billing rollups (``billing_rollup``: enterprise × month × workflow × wallet × provider ×
model × meter; ``chat_rollup``: enterprise × month × workflow × wallet × chat), for every group,
dirty or not.  The drain adds each batch's sums to them in the transaction that inserts its usage
events (:data:`worker.ledger.turns._ROLLUPS`), so in any snapshot the rollup rows are exactly the sums
of the committed events, to the nano; recomputing a group whole
(:func:`worker.chats.rollups.refresh_billing_rollups`, under a lock that excludes the drains of the
group) is the repair path, never run by the beat.  Read the report in one REPEATABLE READ snapshot (the ``/billing``
routes do) for its sections to agree.  A month past ``settings.usage_retention_months`` (its events
dropped) keeps its rollup rows.  Usage events written or deleted other than by the drain must have
their groups' billing rollups recomputed (:func:`worker.chats.rollups.refresh_billing_rollups`)
before the report shows them.

Money is formatted only at the edge (:func:`format_usd`, :func:`usd_exact`), with integer arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from typing import Any, Iterator, Sequence
from zlib import crc32

from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Subquery,
    func,
    literal,
    select,
    text,
    tuple_,
    union_all,
)
from sqlmodel import Session, col

from models.budget import Budget, BudgetAlert
from models.chat import ChatSession
from models.enums import ChatStatus
from models.rollup import BillingRollup, ChatRollup
from models.turn import UsageEvent
from models.wallet import Enterprise
from worker.billing.budgets import THRESHOLDS, crossed
from worker.db import table_of
from worker.errors import InputError, InvalidInput
from worker.periods import period_bounds, previous_period
from worker.pricing.prices import nanos_to_usd

#: how many chats :attr:`BillingReport.top_chats` lists at most
TOP_CHATS = 50
#: months in :attr:`BillingReport.history`, ending with the report's period
HISTORY_MONTHS = 6
#: an ``active`` chat with no turn for this long is shown as completed (display only; the session
#: row is not changed: the chat-end job or ``finalize`` does that)
CHAT_INACTIVE = timedelta(hours=24)
#: the LLM meter; every other ``usage_event.meter`` is a non-LLM meter
LLM = "llm"
#: the ``provider`` of non-LLM meter events
METER_PROVIDER = "tollgate"


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """How a non-LLM meter is counted and priced: ``quantity`` is in ``unit`` (its base unit);
    ``nanos_per_unit`` is the list price per base unit; ``display_scale`` base units make one
    ``display_unit`` (storage: 1,000 MB-months = 1 GB-month)."""

    meter: str
    label: str
    unit: str
    nanos_per_unit: int
    rate: str
    display_unit: str
    display_scale: int


#: the non-LLM meters (DESIGN.md "Money and prices"); each usage event keeps the cost it was charged
#: at, so these list prices are for display: the report sums ``cost_nanos``, never quantity × price
METERS: dict[str, MeterInfo] = {
    m.meter: m
    for m in (
        MeterInfo("emails", "Emails", "email", 100_000, "$0.10 per 1,000 emails", "emails", 1),
        MeterInfo("storage_gb_month", "Storage", "MB-month", 23_000, "$0.023 per GB-month", "GB-months", 1000),
        MeterInfo("function_calls", "Function calls", "call", 200, "$0.20 per 1M calls", "calls", 1),
    )
}

#: columns of an exported usage event (CSV header, JSON keys), in order
EVENT_COLUMNS = (
    "id",
    "turn_id",
    "occurred_at",
    "wallet_id",
    "chat_id",
    "workflow",
    "agent",
    "provider",
    "model",
    "meter",
    "quantity",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "cost_nanos",
    "billed_nanos",
    "creator_share_nanos",
    "platform_fee_nanos",
    "billable",
    "mode",
    "level",
    "billing_target",
    "cost_usd",
)


class ReportError(InputError, ValueError):
    """A report request is invalid; the message starts with the field it names
    (``period``, ``enterprise_id``, ``wallet_id``)."""


# money at the edge --------------------------------------------------------------------------------
def usd_exact(nanos: int) -> str:
    """Integer nano-USD → exact USD decimal string, 9 places (``1500000000`` → ``"1.500000000"``)."""
    return nanos_to_usd(int(nanos))


def format_usd(nanos: int, places: int = 2) -> str:
    """Integer nano-USD → ``"$1,234.57"``, rounded half-up to ``places`` (0..9) decimals with integer
    math; negative amounts read ``"-$1.00"``.  Raises ValueError for ``places`` outside 0..9."""
    if not 0 <= places <= 9:
        raise InvalidInput("places", f"{places!r} is not in 0..9")
    nanos = int(nanos)
    step = 10 ** (9 - places)
    units = (abs(nanos) + step // 2) // step  # half-up, in units of 10^-places USD
    sign = "-" if nanos < 0 and units else ""
    whole, frac = divmod(units, 10**places)
    return f"{sign}${whole:,}" + (f".{frac:0{places}d}" if places else "")


def format_bp(bp: int) -> str:
    """Basis points → percent with one decimal, truncated (``8599`` → ``"85.9 %"``), integer math."""
    bp = int(bp)
    return f"{bp // 100}.{bp % 100 // 10} %"


#: nano-USD in one cent
CENT_NANOS = 10_000_000


def round_cents(nanos: int) -> int:
    """Integer nano-USD → integer cents, half away from zero (as :func:`format_usd` rounds:
    ``5_000_000`` → 1, ``-5_000_000`` → -1, ``4_999_999`` → 0)."""
    nanos = int(nanos)
    cents = (abs(nanos) + CENT_NANOS // 2) // CENT_NANOS
    return -cents if nanos < 0 else cents


def largest_remainder(parts: Sequence[int], total_cents: int | None = None) -> list[int]:
    """Round ``parts`` (integer nano-USD, any sign) to integer cents that sum exactly to
    ``total_cents`` (default: ``round_cents(sum(parts))``, the total as displayed on its own), by the
    largest remainder method: each part gets its floor in cents, then the cents still missing go one
    each to the parts with the largest remainders (ties: the earlier part first, so list parts in
    display order); a surplus (only with a ``total_cents`` below the floors' sum) is taken from the
    smallest remainders first.  Integer math only.

    Example: LLM $3.796 and meters $0.076 (``[3_796_000_000, 76_000_000]``, total $3.872, shown
    $3.87) → ``[380, 7]`` ($3.80 + $0.07); rounded alone they would read $3.80 + $0.08 ≠ $3.87.
    ``[3_334_000, 3_333_000, 3_333_000]`` (1 cent in all) → ``[1, 0, 0]``.
    Returns a list as long as ``parts``; ``[]`` for no parts.  Raises InvalidInput naming
    ``total_cents`` when there are no parts to give a non-zero total to."""
    n = len(parts)
    target = round_cents(sum(int(p) for p in parts)) if total_cents is None else int(total_cents)
    if n == 0:
        if target:
            raise InvalidInput("total_cents", f"{target} cents cannot be split over no parts")
        return []
    floors = [int(p) // CENT_NANOS for p in parts]  # floor, also for negatives
    rems = [int(p) - f * CENT_NANOS for p, f in zip(parts, floors)]  # each in [0, CENT_NANOS)
    order = sorted(range(n), key=lambda i: (-rems[i], i))
    out = list(floors)
    extra = target - sum(floors)
    for k in range(abs(extra)):
        if extra > 0:
            out[order[k % n]] += 1
        else:
            out[order[n - 1 - k % n]] -= 1
    return out


def format_cents(cents: int, nanos: int | None = None) -> str:
    """Integer cents as displayed (``12345`` → ``"$123.45"``, ``-100`` → ``"-$1.00"``).  A non-zero
    ``nanos`` shown as zero cents reads ``"<$0.01"`` (``"-<$0.01"`` when negative), never ``"$0.00"``:
    it counts as $0.00 in any displayed sum; the exact figure is in the exports (and the page's
    ``title``)."""
    cents = int(cents)
    if cents == 0 and nanos:
        return "-<$0.01" if int(nanos) < 0 else "<$0.01"
    whole, frac = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}${whole:,}.{frac:02d}"


def format_money(nanos: int) -> str:
    """An amount displayed on its own (not a part of a displayed total): rounded half away from
    zero to the cent, with :func:`format_cents`' rule for small amounts (``3_331_800`` → ``"<$0.01"``)."""
    return format_cents(round_cents(nanos), nanos)


#: display names of provider ids (others are shown as recorded); ``tollgate`` records the meters
PROVIDER_NAMES = {
    "openai": "OpenAI",
    "anthropic": "Anthropic",
    "google": "Google",
    "google-vertex": "Google Vertex",
    "azure": "Azure OpenAI",
    "aws": "AWS Bedrock",
    "mistral": "Mistral",
    "groq": "Groq",
    "deepseek": "DeepSeek",
    "x-ai": "xAI",
    "cohere": "Cohere",
    "tollgate": "Meters",
}


def provider_name(provider: str) -> str:
    """The display name of a provider id (``openai`` → ``OpenAI``); unknown ids unchanged."""
    return PROVIDER_NAMES.get(provider, provider)


#: colour of each provider on the page, its chart and the PDF (the same in every view); providers
#: not listed get a colour from :data:`PALETTE` picked by a CRC-32 of their id (stable across runs)
PROVIDER_COLORS = {
    "openai": "#10a37f",
    "anthropic": "#d97706",
    "google": "#4285f4",
    "google-vertex": "#1a73e8",
    "azure": "#0078d4",
    "aws": "#ff9900",
    "mistral": "#f43f5e",
    "groq": "#8b5cf6",
    "deepseek": "#4f46e5",
    "x-ai": "#111827",
    "cohere": "#39594d",
    "tollgate": "#94a3b8",
}
#: colours for providers without an entry in :data:`PROVIDER_COLORS`
PALETTE = ("#06b6d4", "#ec4899", "#84cc16", "#a855f7", "#ef4444", "#14b8a6", "#eab308", "#64748b")


def provider_color(provider: str) -> str:
    """The display colour (``"#rrggbb"``) of a provider id: :data:`PROVIDER_COLORS`, else a
    :data:`PALETTE` entry chosen by ``crc32(provider)``, so a provider keeps its colour everywhere."""
    return PROVIDER_COLORS.get(provider) or PALETTE[crc32(provider.encode()) % len(PALETTE)]


def format_quantity(meter: str, quantity: int) -> str:
    """A meter's quantity in its display unit, exact: storage MB-months as GB-months with 3 decimals
    (``1500`` → ``"1.500"``), counts with thousands separators."""
    info = METERS.get(meter)
    if info is None or info.display_scale == 1:
        return f"{int(quantity):,}"
    whole, frac = divmod(int(quantity), info.display_scale)
    width = len(str(info.display_scale)) - 1
    return f"{whole:,}.{frac:0{width}d}"


# the report ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Figures:
    """Sums over a set of usage events: ``events`` rows, tokens, meter ``quantity`` (base units) and
    money in nano-USD (``cost`` at the prices charged, ``billed`` what was debited, the level-2 split)."""

    events: int = 0
    quantity: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nanos: int = 0
    billed_nanos: int = 0
    creator_share_nanos: int = 0
    platform_fee_nanos: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt + completion tokens (cached prompt tokens are part of the prompt)."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Figures") -> "Figures":
        return Figures(*(getattr(self, f) + getattr(other, f) for f in _FIGURES))


#: the figures of :class:`Figures`, in its field order (the sums' columns, the aggregate export's)
_FIGURES = tuple(f.name for f in fields(Figures))
#: columns of an aggregate line (provider × model × meter), the export of a view without end-user detail
LINE_COLUMNS = ("provider", "model", "meter", *_FIGURES, "cost_usd")


@dataclass(frozen=True, slots=True)
class Line:
    """One aggregate line of the period: a provider × model × meter and its figures."""

    provider: str
    model: str
    meter: str
    figures: Figures


@dataclass(frozen=True, slots=True)
class ProviderSpend:
    """LLM spend of one provider: its total and its models (by cost, descending)."""

    provider: str
    figures: Figures
    models: list[Line]


@dataclass(frozen=True, slots=True)
class MeterUsage:
    """One non-LLM meter in the period: quantity in the meter's base unit, money in nano-USD."""

    info: MeterInfo
    figures: Figures


@dataclass(frozen=True, slots=True)
class BudgetAlertRecord:
    """An alert recorded in ``budget_alert`` for the period."""

    threshold_pct: int
    spent_nanos: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """A budget's standing in the period.  ``used_bp`` is spend in basis points of the amount
    (``spent × 10000 // amount``; 10000 = 100 %), ``reached`` the thresholds spend has reached,
    ``alerts`` the alerts recorded (sent) so far."""

    budget_id: int
    scope: str  # 'wallet' | 'workflow'
    target: str  # the wallet id or the workflow name
    amount_nanos: int
    spent_nanos: int
    auto_pause: bool
    used_bp: int
    reached: list[int]
    alerts: list[BudgetAlertRecord]

    @property
    def status(self) -> str:
        """``'ok'`` below 50 %, else ``'50'``, ``'80'`` or ``'100'`` (the highest threshold reached)."""
        return str(self.reached[-1]) if self.reached else "ok"


@dataclass(frozen=True, slots=True)
class ChatCost:
    """One chat's usage in the period (``usage_event`` by ``chat_id``); ``status`` from its
    ``chat_session`` (None when the chat has no session row).

    ``shown_status`` is what the page shows: ``completed`` when the session is completed (the
    chat-end job, :func:`worker.chats.rollups.end_chat`, or ``finalize``) and also when it is still
    ``active`` but its last turn (``chat_session.last_turn_at``) is :data:`CHAT_INACTIVE` or more
    before the report was generated (``ended_by_inactivity`` True); otherwise ``status``."""

    chat_id: str
    workflow: str
    wallet_id: str
    status: str | None
    first_at: datetime
    last_at: datetime
    figures: Figures
    shown_status: str | None = None
    ended_by_inactivity: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """``cost_nanos`` per provider per month: ``periods`` oldest first; ``by_provider[p][i]`` is the
    cost of provider ``p`` in ``periods[i]`` (0 when none); ``totals[i]`` the sum over providers."""

    periods: list[str]
    by_provider: dict[str, list[int]]
    totals: list[int]


@dataclass(frozen=True, slots=True)
class Displayed:
    """The report's amounts as displayed, in integer cents, rounded by :func:`largest_remainder` so
    that displayed parts sum to their displayed total at every level:

    - ``cost``/``billed``: key ``"total"`` (rounded alone) = ``"llm"`` + ``"meters"``;
      ``"llm"`` = Σ ``"provider:<p>"``; ``"provider:<p>"`` = Σ ``"model:<p>:<m>"``;
      ``"meters"`` = Σ ``"meter:<meter>"`` over :data:`METERS` (a meter the report does not know
      is a hidden part of ``"meters"``);
    - ``history``: per month (``History.periods`` order) the provider cents, ``history[p][i]``,
      summing to ``history_totals[i]`` (each month's total rounded alone).
    """

    cost: dict[str, int]
    billed: dict[str, int]
    history: dict[str, list[int]]
    history_totals: list[int]


def _split(out: dict[str, int], parent: str, children: list[tuple[str, int]]) -> None:
    for (key, _), cents in zip(children, largest_remainder([n for _, n in children], out[parent])):
        out[key] = cents


def _displayed_amounts(report: "BillingReport", attr: str) -> dict[str, int]:
    def nanos(f: Figures) -> int:
        return int(getattr(f, attr))

    out = {"total": round_cents(nanos(report.total))}
    _split(out, "total", [("llm", nanos(report.llm)), ("meters", nanos(report.meters_total))])
    _split(out, "llm", [(f"provider:{p.provider}", nanos(p.figures)) for p in report.providers])
    for p in report.providers:
        _split(out, f"provider:{p.provider}", [(f"model:{p.provider}:{m.model}", nanos(m.figures)) for m in p.models])
    known = [(f"meter:{m.info.meter}", nanos(m.figures)) for m in report.meters]
    unknown = nanos(report.meters_total) - sum(n for _, n in known)
    _split(out, "meters", known + ([("meter:*other", unknown)] if unknown else []))
    return out


@dataclass(frozen=True, slots=True)
class BillingReport:
    """Everything the ``/billing`` page and its exports show for one scope and period.

    ``detail`` False (an admin's view) leaves ``top_chats`` empty and lists workflow budgets only.
    ``total`` sums every usage event in scope and period; ``llm`` and ``meters_total`` split it.
    """

    enterprise_id: str
    enterprise_name: str
    wallet_id: str | None
    detail: bool
    period: str
    start: datetime
    end: datetime
    generated_at: datetime
    total: Figures
    llm: Figures
    meters_total: Figures
    lines: list[Line]
    providers: list[ProviderSpend]
    meters: list[MeterUsage]
    budgets: list[BudgetLine]
    chats_in_period: int
    top_chats: list[ChatCost]
    history: History = field(default_factory=lambda: History([], {}, []))

    @property
    def last_day(self) -> date:
        """The period's last calendar day (UTC)."""
        return (self.end - timedelta(days=1)).date()

    def displayed(self) -> Displayed:
        """The amounts as the page and the PDF display them (cents that add up; see :class:`Displayed`)."""
        h = self.history
        totals = [round_cents(t) for t in h.totals]
        history: dict[str, list[int]] = {p: [0] * len(h.periods) for p in h.by_provider}
        names = list(h.by_provider)
        for i, total in enumerate(totals):
            for p, cents in zip(names, largest_remainder([h.by_provider[p][i] for p in names], total)):
                history[p][i] = cents
        return Displayed(
            _displayed_amounts(self, "cost_nanos"), _displayed_amounts(self, "billed_nanos"), history, totals
        )

    def summary(self) -> dict[str, Any]:
        """The report as plain JSON-able data: money as integer nanos with ``*_usd`` exact decimal
        strings beside, datetimes as ISO 8601 UTC."""

        def figs(f: Figures) -> dict[str, Any]:
            d = {k: getattr(f, k) for k in _FIGURES}
            d["cost_usd"], d["billed_usd"] = usd_exact(f.cost_nanos), usd_exact(f.billed_nanos)
            return d

        def line(x: Line) -> dict[str, Any]:
            return {"provider": x.provider, "model": x.model, "meter": x.meter, **figs(x.figures)}

        return {
            "enterprise_id": self.enterprise_id,
            "wallet_id": self.wallet_id,
            "period": self.period,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "generated_at": _iso(self.generated_at),
            "detail": self.detail,
            "total": figs(self.total),
            "llm": figs(self.llm),
            "meters_total": figs(self.meters_total),
            "providers": [
                {"provider": p.provider, **figs(p.figures), "models": [line(m) for m in p.models]}
                for p in self.providers
            ],
            "meters": [
                {"meter": m.info.meter, "unit": m.info.unit, "nanos_per_unit": m.info.nanos_per_unit, **figs(m.figures)}
                for m in self.meters
            ],
            "budgets": [
                {
                    "budget_id": b.budget_id,
                    "scope": b.scope,
                    "target": b.target,
                    "amount_nanos": b.amount_nanos,
                    "amount_usd": usd_exact(b.amount_nanos),
                    "spent_nanos": b.spent_nanos,
                    "spent_usd": usd_exact(b.spent_nanos),
                    "used_bp": b.used_bp,
                    "auto_pause": b.auto_pause,
                    "reached": b.reached,
                    "alerts": [
                        {
                            "threshold_pct": a.threshold_pct,
                            "spent_nanos": a.spent_nanos,
                            "created_at": _iso(a.created_at),
                        }
                        for a in b.alerts
                    ],
                }
                for b in self.budgets
            ],
            "chats_in_period": self.chats_in_period,
            "top_chats": [
                {
                    "chat_id": c.chat_id,
                    "workflow": c.workflow,
                    "wallet_id": c.wallet_id,
                    "status": c.status,
                    "shown_status": c.shown_status,
                    "first_at": _iso(c.first_at),
                    "last_at": _iso(c.last_at),
                    **figs(c.figures),
                }
                for c in self.top_chats
            ],
            "history": {
                "periods": self.history.periods,
                "by_provider_cost_nanos": self.history.by_provider,
                "total_cost_nanos": self.history.totals,
            },
            "lines": [line(x) for x in self.lines],
        }


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _scope(enterprise_id: str, wallet_id: str | None, start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    ue = UsageEvent
    where = [col(ue.enterprise_id) == enterprise_id, col(ue.occurred_at) >= start, col(ue.occurred_at) < end]
    if wallet_id is not None:
        where.append(col(ue.wallet_id) == wallet_id)
    return where


def _sums(src: Subquery) -> tuple[Any, ...]:
    """The :class:`Figures` sums over the rows of a source (:func:`_usage_source`), in field order."""
    return tuple(func.sum(src.c[f]) for f in _FIGURES)


def _usage_source(
    session: Session,
    enterprise_id: str,
    wallet_id: str | None,
    periods: Sequence[str],
    keys: Sequence[str],
    *,
    chats: bool = False,
    span: tuple[datetime, datetime] | None = None,
) -> Subquery:
    """Rows ``(period, workflow, wallet_id, *keys, <the Figures sums>[, first_at, last_at])`` whose
    sums over any grouping equal the sums of the usage events of ``enterprise_id`` (``wallet_id``'s
    only, if given) in ``periods``: the billing rollup rows (``chat_rollup`` when ``chats``, with the
    first and last turn; see the module docstring).

    ``span`` (aware ``[start, end)``, the page's date range; ``periods`` then one period, the label of
    every row): the rollup rows of the UTC months wholly inside the span (:func:`whole_months`), and
    the usage events of its partial months at either edge aggregated now, all labelled ``periods[0]``.
    A range of a few days reads only its events; a range of a year reads at most two months of them."""
    columns = ("period", "workflow", "wallet_id", *keys)
    rollup = table_of(ChatRollup if chats else BillingRollup)
    extra = ("first_at", "last_at") if chats else ()
    if span is None:
        stored = select(*(rollup.c[c] for c in (*columns, *_FIGURES, *extra))).where(
            rollup.c.enterprise_id == enterprise_id, rollup.c.period.in_(list(periods))
        )
        if wallet_id is not None:
            stored = stored.where(rollup.c.wallet_id == wallet_id)
        return stored.subquery()
    label = literal(periods[0], String).label("period")
    months, (first, last) = whole_months(*span)
    parts: list[Select[Any]] = []
    if months:
        whole = select(label, *(rollup.c[c] for c in (*columns[1:], *_FIGURES, *extra))).where(
            rollup.c.enterprise_id == enterprise_id, rollup.c.period.in_(months)
        )
        parts.append(whole if wallet_id is None else whole.where(rollup.c.wallet_id == wallet_id))
    ue = table_of(UsageEvent)
    keys_ = [ue.c[c] for c in columns[1:]]
    first_last = (func.min(ue.c.occurred_at).label("first_at"), func.max(ue.c.occurred_at).label("last_at"))
    for lo, hi in ((span[0], first), (last, span[1])) if months else (span,):
        if lo < hi:  # a partial month at an edge (or the whole span): its events, grouped as the rollup rows are
            parts.append(
                select(
                    label,
                    *keys_,
                    func.count().label("events"),
                    *(func.sum(ue.c[f]).label(f) for f in _FIGURES[1:]),
                    *(first_last if chats else ()),
                )
                .where(*_scope(enterprise_id, wallet_id, lo, hi))
                .group_by(*keys_)
            )
    return (parts[0] if len(parts) == 1 else union_all(*parts)).subquery()


def whole_months(start: datetime, end: datetime) -> tuple[list[str], tuple[datetime, datetime]]:
    """The UTC months (``'YYYY-MM'``) lying wholly inside ``[start, end)`` (aware datetimes), oldest
    first, and the bounds ``(first month's start, last month's end)`` of their run; ``([], (end,
    end))`` when none does.  What is outside the run is the partial months at the span's edges."""

    def next_month(d: datetime) -> datetime:
        return d.replace(year=d.year + (d.month == 12), month=d.month % 12 + 1)

    start = start.astimezone(UTC)
    month_start = datetime(start.year, start.month, 1, tzinfo=UTC)
    if month_start < start:
        month_start = next_month(month_start)
    first, months = month_start, []
    while (month_start.year, month_start.month) < (9999, 12) and next_month(month_start) <= end:
        months.append(f"{month_start.year:04d}-{month_start.month:02d}")
        month_start = next_month(month_start)
    return months, ((first, month_start) if months else (end, end))


def _figures(values) -> Figures:
    return Figures(*(int(v or 0) for v in values))


def validate_period(period: str) -> tuple[datetime, datetime]:
    """``[start, end)`` of ``period`` ('YYYY-MM', UTC).  Raises ReportError naming ``period``."""
    try:
        return period_bounds(period)
    except ValueError:
        raise ReportError(f"period: {period!r} is not a month written YYYY-MM (e.g. 2026-11)", field="period") from None


def billing_report(
    session: Session,
    *,
    enterprise_id: str,
    period: str,
    wallet_id: str | None = None,
    detail: bool = True,
    now: datetime | None = None,
    span: tuple[datetime, datetime] | None = None,
) -> BillingReport:
    """The billing report of ``enterprise_id`` for ``period`` ('YYYY-MM', UTC month), narrowed to
    ``wallet_id``'s usage events and budget if given (an end user's view); ``detail=False`` drops
    end-user detail (no chats, no wallet budgets).  Reads only; never writes.

    ``span`` (aware ``[start, end)``, any length; the page's date range) replaces the month's bounds
    for the usage sections (totals, providers, meters, top chats); budgets (monthly) and the
    six-month history are then left empty, and ``start``/``end`` are the span's.

    Returns a :class:`BillingReport` (money in nano-USD; see the module docstring for each section).
    Raises: ReportError naming the field: ``period`` (not YYYY-MM), ``enterprise_id`` (unknown app).
    """
    start, end = validate_period(period)
    if span is not None:
        start, end = span
    enterprise = session.get(Enterprise, enterprise_id) if isinstance(enterprise_id, str) and enterprise_id else None
    if enterprise is None:
        raise ReportError(f"enterprise_id: unknown enterprise {enterprise_id!r}", field="enterprise_id")
    periods = [period] if span is not None else history_periods(period)
    # small aggregates of small tables: JIT compiling them costs more than it saves (~150 ms a
    # statement measured when a month was read from usage_event); this transaction only
    session.execute(text("SET LOCAL jit = off"))
    sums = _period_sums(session, enterprise_id, wallet_id, periods, span=span)
    lines = [  # in PostgreSQL's order of provider, model, meter (its collation, as the exports were)
        Line(provider, model, meter, figures)
        for (p, provider, model, meter), figures in sums.lines.items()
        if p == period
    ]
    llm_lines = [x for x in lines if x.meter == LLM]
    providers = []
    for name in sorted({x.provider for x in llm_lines}):
        models = sorted((x for x in llm_lines if x.provider == name), key=lambda x: (-x.figures.cost_nanos, x.model))
        providers.append(ProviderSpend(name, sum((m.figures for m in models), Figures()), models))
    providers.sort(key=lambda p: (-p.figures.cost_nanos, p.provider))
    meters = [
        MeterUsage(info, sum((x.figures for x in lines if x.meter == name), Figures())) for name, info in METERS.items()
    ]
    # a meter this report does not know still counts in the totals (it is in ``lines``)
    llm = sum((x.figures for x in llm_lines), Figures())
    total = sum((x.figures for x in lines), Figures())

    budgets = [] if span is not None else _budgets(session, enterprise_id, wallet_id, detail, period, end, sums)
    chats_in_period = 0
    top: list[ChatCost] = []
    generated_at = (now or datetime.now(UTC)).astimezone(UTC)
    if detail:
        chats_in_period, top = _top_chats(session, enterprise_id, wallet_id, period, generated_at, span=span)
    return BillingReport(
        enterprise_id=enterprise_id,
        enterprise_name=enterprise.name,
        wallet_id=wallet_id,
        detail=detail,
        period=period,
        start=start,
        end=end,
        generated_at=generated_at,
        total=total,
        llm=llm,
        meters_total=_minus(total, llm),
        lines=lines,
        providers=providers,
        meters=meters,
        budgets=budgets,
        chats_in_period=chats_in_period,
        top_chats=top,
        history=History([], {}, []) if span is not None else _history(periods, sums),
    )


@dataclass(frozen=True, slots=True)
class _PeriodSums:
    """The sums of a report's months, read in one statement: ``lines`` by (period, provider, model,
    meter), ``wallets`` by (period, wallet_id), ``workflows`` by (period, workflow)."""

    lines: dict[tuple[str, str, str, str], Figures]
    wallets: dict[tuple[str, str], Figures]
    workflows: dict[tuple[str, str], Figures]


def _period_sums(
    session: Session,
    enterprise_id: str,
    wallet_id: str | None,
    periods: list[str],
    span: tuple[datetime, datetime] | None = None,
) -> _PeriodSums:
    """Every sum the report needs of ``periods`` (its month and the history's) in one statement over
    :func:`_usage_source` (``GROUPING SETS``: the rollup rows, or a span's events, are read once)."""
    src = _usage_source(session, enterprise_id, wallet_id, periods, ("provider", "model", "meter"), span=span)
    line_keys = (src.c.period, src.c.provider, src.c.model, src.c.meter)
    # grouping(wallet_id, workflow): 3 = a line, 1 = a wallet, 2 = a workflow
    which = func.grouping(src.c.wallet_id, src.c.workflow)
    out = _PeriodSums({}, {}, {})
    for kind, period, provider, model, meter, wallet, workflow, *rest in session.execute(
        select(which, *line_keys, src.c.wallet_id, src.c.workflow, *_sums(src))
        .group_by(
            func.grouping_sets(
                tuple_(*line_keys), tuple_(src.c.period, src.c.wallet_id), tuple_(src.c.period, src.c.workflow)
            )
        )
        .order_by(which, *line_keys)
    ):
        figures = _figures(rest)
        if kind == 3:
            out.lines[(period, provider, model, meter)] = figures
        elif kind == 1:
            out.wallets[(period, wallet)] = figures
        else:
            out.workflows[(period, workflow)] = figures
    return out


def _minus(a: Figures, b: Figures) -> Figures:
    return Figures(*(getattr(a, f) - getattr(b, f) for f in _FIGURES))


def _budgets(
    session: Session,
    enterprise_id: str,
    wallet_id: str | None,
    detail: bool,
    period: str,
    end: datetime,
    sums: _PeriodSums,
) -> list[BudgetLine]:
    # a budget shows on the months it existed in: created before the period's end
    stmt = (
        select(Budget)
        .where(col(Budget.enterprise_id) == enterprise_id, col(Budget.created_at) < end)
        .order_by(col(Budget.id))
    )
    if wallet_id is not None:
        stmt = stmt.where(col(Budget.wallet_id) == wallet_id)
    elif not detail:
        stmt = stmt.where(col(Budget.workflow).is_not(None))
    budgets = list(session.execute(stmt).scalars())
    if not budgets:
        return []
    # a wallet budget counts what its wallet was billed, a workflow budget what the workflow's turns
    # cost (an end user's view is narrowed to its wallet and shows only that wallet's budget)
    wallet_spend = {w: f.billed_nanos for (p, w), f in sums.wallets.items() if p == period}
    workflow_spend = {w: f.cost_nanos for (p, w), f in sums.workflows.items() if p == period}
    alerts: dict[int, list[BudgetAlertRecord]] = {}
    for budget_id, pct, spent, created in session.execute(
        select(
            col(BudgetAlert.budget_id),
            col(BudgetAlert.threshold_pct),
            col(BudgetAlert.spent_nanos),
            col(BudgetAlert.created_at),
        )
        .where(col(BudgetAlert.budget_id).in_([b.id for b in budgets]), col(BudgetAlert.period) == period)
        .order_by(col(BudgetAlert.budget_id), col(BudgetAlert.threshold_pct))
    ):
        alerts.setdefault(int(budget_id), []).append(BudgetAlertRecord(int(pct), int(spent), created))
    out = []
    for b in budgets:
        spent = int((wallet_spend.get(b.wallet_id) if b.wallet_id else workflow_spend.get(b.workflow)) or 0)
        out.append(
            BudgetLine(
                budget_id=int(b.id),
                scope="wallet" if b.wallet_id else "workflow",
                target=b.wallet_id or b.workflow,
                amount_nanos=int(b.amount_nanos),
                spent_nanos=spent,
                auto_pause=bool(b.auto_pause),
                used_bp=spent * 10_000 // int(b.amount_nanos),
                reached=crossed(spent, int(b.amount_nanos)),
                alerts=alerts.get(int(b.id), []),
            )
        )
    return out


def _top_chats(
    session: Session,
    enterprise_id: str,
    wallet_id: str | None,
    period: str,
    now: datetime,
    span: tuple[datetime, datetime] | None = None,
) -> tuple[int, list[ChatCost]]:
    src = _usage_source(session, enterprise_id, wallet_id, [period], ("chat_id",), chats=True, span=span)
    cost = func.sum(src.c.cost_nanos)
    # the chats of the period counted before LIMIT (a window over the grouped rows): one statement
    found = session.execute(
        select(
            func.count().over(),
            src.c.chat_id,
            func.max(src.c.workflow),
            func.max(src.c.wallet_id),
            func.min(src.c.first_at),
            func.max(src.c.last_at),
            *_sums(src),
        )
        .group_by(src.c.chat_id)
        .order_by(cost.desc(), src.c.chat_id)
        .limit(TOP_CHATS)
    ).all()
    count = int(found[0][0]) if found else 0
    rows = [r[1:] for r in found]
    ids = [r[0] for r in rows]
    sessions: dict[str, tuple[str, datetime]] = (
        {
            chat: (str(status), last_turn)
            for chat, status, last_turn in session.execute(
                select(col(ChatSession.chat_id), col(ChatSession.status), col(ChatSession.last_turn_at)).where(
                    col(ChatSession.enterprise_id) == enterprise_id, col(ChatSession.chat_id).in_(ids)
                )
            )
        }
        if ids
        else {}
    )
    out = []
    for chat_id, workflow, wallet, first, last, *rest in rows:
        status, last_turn = sessions.get(chat_id, (None, None))
        idle = status == ChatStatus.active.value and last_turn is not None and now - last_turn >= CHAT_INACTIVE
        shown = ChatStatus.completed.value if idle else status
        out.append(ChatCost(chat_id, workflow, wallet, status, first, last, _figures(rest), shown, idle))
    return int(count), out


def history_periods(period: str, months: int = HISTORY_MONTHS) -> list[str]:
    """The ``months`` periods ending with ``period``, oldest first.  Raises ReportError naming ``period``."""
    validate_period(period)
    out = [period]
    while len(out) < months:
        out.append(previous_period(out[-1]))
    return out[::-1]


def _history(periods: list[str], sums: _PeriodSums) -> History:
    rows = [(p, provider, f.cost_nanos) for (p, provider, _, _), f in sums.lines.items()]
    index = {p: i for i, p in enumerate(periods)}
    by_provider: dict[str, list[int]] = {}
    for p, provider, cost in rows:
        by_provider.setdefault(provider, [0] * len(periods))[index[p]] += int(cost)
    # LLM providers by cost, the meters' provider ('tollgate') last
    ordered = dict(sorted(by_provider.items(), key=lambda kv: (kv[0] == METER_PROVIDER, -sum(kv[1]), kv[0])))
    totals = [sum(v[i] for v in ordered.values()) for i in range(len(periods))]
    return History(periods, ordered, totals)


def iter_events(
    session: Session, *, enterprise_id: str, period: str, wallet_id: str | None = None, batch: int = 1000
) -> Iterator[dict[str, Any]]:
    """Every usage event of ``enterprise_id`` (and ``wallet_id`` if given) in ``period``, ordered by
    ``occurred_at`` then ``id``, as dicts of :data:`EVENT_COLUMNS` (money integer nanos, ``cost_usd``
    the exact decimal string, ``occurred_at`` ISO 8601 UTC), streamed ``batch`` rows at a time.
    Raises ReportError naming ``period``."""
    start, end = validate_period(period)
    ue = UsageEvent
    cols = [getattr(ue, c) for c in EVENT_COLUMNS if c != "cost_usd"]
    stmt = (
        select(*cols)
        .where(*_scope(enterprise_id, wallet_id, start, end))
        .order_by(col(ue.occurred_at), col(ue.id))
        .execution_options(yield_per=batch)
    )
    for row in session.execute(stmt):
        d = dict(zip(EVENT_COLUMNS, row))
        d["occurred_at"] = _iso(d["occurred_at"])
        d["cost_usd"] = usd_exact(d["cost_nanos"])
        yield d


def line_record(line: Line) -> dict[str, Any]:
    """An aggregate line as a dict of :data:`LINE_COLUMNS`."""
    f = line.figures
    return {
        "provider": line.provider,
        "model": line.model,
        "meter": line.meter,
        **{name: getattr(f, name) for name in _FIGURES},
        "cost_usd": usd_exact(f.cost_nanos),
    }


__all__ = [
    "BillingReport",
    "BudgetLine",
    "CHAT_INACTIVE",
    "CENT_NANOS",
    "Displayed",
    "PROVIDER_COLORS",
    "ChatCost",
    "EVENT_COLUMNS",
    "Figures",
    "History",
    "LINE_COLUMNS",
    "METERS",
    "MeterInfo",
    "ReportError",
    "THRESHOLDS",
    "billing_report",
    "format_quantity",
    "format_cents",
    "format_money",
    "format_usd",
    "largest_remainder",
    "provider_color",
    "round_cents",
    "format_bp",
    "history_periods",
    "iter_events",
    "provider_name",
    "line_record",
    "usd_exact",
    "validate_period",
]
