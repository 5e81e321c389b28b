"""Exports of a billing period: CSV and JSON (streamed, exact integer nanos) and a PDF statement.

Every export is built from the same :class:`worker.billing.report.BillingReport` (and, for views with
end-user detail, the period's usage events from :func:`worker.billing.report.iter_events`), so its
figures agree with the ``/billing`` page to the nano.

- CSV: one row per usage event (:data:`~worker.billing.report.EVENT_COLUMNS`); a view without
  end-user detail (admin) gets one row per provider × model × meter
  (:data:`~worker.billing.report.LINE_COLUMNS`) instead.
- JSON: ``{"report": BillingReport.summary(), "events": [...]}`` (``events`` only with detail).
- PDF: a statement (A4) listing the totals, providers and models (cost and billed), meters, budgets
  and top chats, in dollars rounded to the cent as on the page (:meth:`BillingReport.displayed`:
  parts add up to their displayed totals; a non-zero amount under half a cent reads ``<$0.01``)
  plus each total's exact nano-USD figure.
"""

from __future__ import annotations

import io
import json
from typing import Any, Iterable, Iterator, Sequence

from fpdf import FPDF
from fpdf.fonts import FontFace

from api_stub.csv_cells import csv_writer, safe_row
from worker.billing.report import (
    EVENT_COLUMNS,
    LINE_COLUMNS,
    BillingReport,
    Figures,
    format_bp,
    format_cents,
    format_money,
    format_quantity,
    line_record,
    provider_name,
)
from worker.billing.statement import WalletStatement


def csv_rows(report: BillingReport, events: Iterable[dict[str, Any]] | None) -> Iterator[str]:
    """CSV text, a chunk per row: the header, then ``events`` (views with detail) or the report's
    aggregate lines (``events`` None).  Booleans are ``true``/``false``; money integer nanos; text
    that a spreadsheet would evaluate is escaped (:func:`api_stub.csv_cells.safe_cell`)."""
    columns = EVENT_COLUMNS if events is not None else LINE_COLUMNS
    records = events if events is not None else (line_record(x) for x in report.lines)
    buf = io.StringIO()
    writer = csv_writer(buf)

    def emit(values: list[Any]) -> str:
        writer.writerow(values)
        chunk = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return chunk

    yield emit(list(columns))
    for rec in records:
        yield emit(safe_row("true" if v is True else "false" if v is False else v for v in (rec[c] for c in columns)))


def json_chunks(report: BillingReport, events: Iterable[dict[str, Any]] | None) -> Iterator[str]:
    """JSON text in chunks: ``{"report": {...}, "events": [...]}``; ``events`` is omitted for views
    without end-user detail (``events`` None).  Integers stay integers (exact nanos)."""
    head = json.dumps({"report": report.summary()}, separators=(",", ":"))
    if events is None:
        yield head
        return
    yield head[:-1] + ',"events":['
    first = True
    for rec in events:
        yield ("" if first else ",") + json.dumps(rec, separators=(",", ":"))
        first = False
    yield "]}"


#: bytes (characters) a streamed export gathers before it hands a chunk to the server
STREAM_CHUNK = 64 * 1024


def batched(chunks: Iterable[str], size: int = STREAM_CHUNK) -> Iterator[str]:
    """``chunks`` joined into pieces of at least ``size`` characters (the last may be shorter; no
    empty piece), the same text in the same order.  A streamed export renders a chunk per row; the
    server moves each chunk it is given from the worker thread to the event loop, ~0.4 ms of CPU
    each, so per-row chunks cost 13× the CPU of 64 KiB ones (30,807 events: 15.3 s against 1.2 s,
    ``benchmarks.bench_billing_page``'s data).  Raises ValueError for a ``size`` below 1."""
    if size < 1:
        raise ValueError(f"size: must be at least 1, got {size!r}")
    buf: list[str] = []
    held = 0
    for chunk in chunks:
        buf.append(chunk)
        held += len(chunk)
        if held >= size:
            yield "".join(buf)
            buf, held = [], 0
    if held:
        yield "".join(buf)


# PDF ----------------------------------------------------------------------------------------------
_INK = (17, 24, 39)
_MUTED = (107, 114, 128)
_ACCENT = (79, 70, 229)
_RULE = (229, 231, 235)
_HEAD = FontFace(emphasis="BOLD", color=_MUTED, fill_color=(243, 244, 246), size_pt=8)


def _latin(text: Any) -> str:
    """Text the PDF core fonts can draw (Latin-1): a code point outside it is written as its escape
    (``w-ѕ1`` → ``w-\\u04551``), so two ids or keys that differ only there stay different on the
    statement (with ``?`` for each, ``w-ѕ1`` and ``w-д1`` both read ``w-?1``)."""
    return str(text).encode("latin-1", "backslashreplace").decode("latin-1")


class _Statement(FPDF):
    def __init__(self, report: BillingReport) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.report = report
        self.set_margins(16, 16, 16)
        self.set_auto_page_break(True, margin=18)
        self.set_title(f"tollgate billing statement {report.enterprise_id} {report.period}")
        self.set_author("tollgate")
        self.set_creator("tollgate")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=7)
        self.set_text_color(*_MUTED)
        r = self.report
        self.cell(
            0,
            5,
            _latin(f"tollgate - {r.enterprise_id} - {r.period} - generated {r.generated_at:%Y-%m-%d %H:%M} UTC"),
            align="L",
        )
        self.cell(0, 5, f"Page {self.page_no()} of {{nb}}", align="R")

    def heading(self, text: str) -> None:
        if self.get_y() > self.h - 60:  # keep a heading with the start of its table
            self.add_page()
        self.ln(4)
        self.set_font("Helvetica", "B", 11)
        self.set_text_color(*_INK)
        self.cell(0, 7, _latin(text), new_x="LMARGIN", new_y="NEXT")
        self.set_draw_color(*_RULE)
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.ln(2)

    def grid(self, header: list[str], rows: list[list[str]], widths: tuple[int, ...], align: tuple[str, ...]) -> None:
        self.set_font("Helvetica", size=8)
        self.set_text_color(*_INK)
        self.set_draw_color(*_RULE)
        with self.table(
            col_widths=widths,
            text_align=align,
            headings_style=_HEAD,
            line_height=5.2,
            borders_layout="HORIZONTAL_LINES",
            padding=(1, 1.5),
        ) as table:
            for values in [header, *rows]:
                row = table.row()
                for v in values:
                    row.cell(_latin(v))

    def note(self, text: str) -> None:
        self.set_font("Helvetica", size=8)
        self.set_text_color(*_MUTED)
        self.multi_cell(0, 4.5, _latin(text), new_x="LMARGIN", new_y="NEXT")


def pdf_statement(report: BillingReport, wallets: Sequence[WalletStatement] = ()) -> bytes:
    """The period's statement as PDF bytes (A4, core fonts).  Lines (text, extractable):
    ``Total cost $X (N nanos)``, ``Billed $Y (M nanos)``, ``LLM $…``, ``Meters $…``, one row per
    wallet of ``wallets`` (opening, credits, debits, closing as displayed, adding up to the cent,
    then the closing balance's exact nanos; an admin's statement passes one aggregate row), then
    one table row per provider, model, meter, budget and top chat."""
    r = report
    pdf = _Statement(r)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.set_text_color(*_ACCENT)
    pdf.cell(0, 9, "tollgate", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 14)
    pdf.set_text_color(*_INK)
    pdf.cell(0, 8, _latin(f"Billing statement - {r.start:%B %Y}"), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    pdf.set_text_color(*_MUTED)
    scope = f"App {r.enterprise_name} ({r.enterprise_id})"
    if r.wallet_id:
        scope += f" - wallet {r.wallet_id}"
    pdf.cell(0, 5, _latin(scope), new_x="LMARGIN", new_y="NEXT")
    pdf.cell(
        0,
        5,
        _latin(f"Period {r.period}: {r.start:%Y-%m-%d} to {r.last_day:%Y-%m-%d} (UTC)"),
        new_x="LMARGIN",
        new_y="NEXT",
    )

    pdf.heading("Summary")
    t = r.total
    shown = r.displayed()
    c, b = shown.cost, shown.billed
    pdf.grid(
        ["Figure", "Amount", "Exact (nano-USD)"],
        [
            ["Total cost", format_cents(c["total"], t.cost_nanos), f"{t.cost_nanos:,}"],
            ["Billed", format_cents(b["total"], t.billed_nanos), f"{t.billed_nanos:,}"],
            ["LLM", format_cents(c["llm"], r.llm.cost_nanos), f"{r.llm.cost_nanos:,}"],
            ["Meters", format_cents(c["meters"], r.meters_total.cost_nanos), f"{r.meters_total.cost_nanos:,}"],
            ["Usage events", f"{t.events:,}", ""],
            ["Tokens (prompt + completion)", f"{t.total_tokens:,}", ""],
        ],
        (60, 50, 68),
        ("LEFT", "RIGHT", "RIGHT"),
    )

    if wallets:
        pdf.heading("Wallets: opening balance, credits, debits, closing balance")
        wrows = []
        for w in wallets:
            d = w.displayed()
            wrows.append(
                [
                    w.wallet_id,
                    format_cents(d["opening"], w.opening_nanos),
                    format_cents(d["credits"], w.credits_nanos),
                    format_cents(d["debits"], w.debits_nanos),
                    format_cents(d["closing"], w.closing_nanos),
                    f"{w.closing_nanos:,}",
                ]
            )
        pdf.grid(
            ["Wallet", "Opening", "Credits", "Debits", "Closing", "Closing (nano-USD)"],
            wrows,
            (40, 24, 24, 24, 24, 42),
            ("LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT"),
        )
        pdf.note("Opening + credits - debits = closing, to the nano and to the cent as shown.")

    pdf.heading("LLM spend by provider and model")

    def spend_row(first: str, second: str, f: Figures, key: str) -> list[str]:
        """A row of the spend table: turns and tokens of ``f``, billed and cost in cents as shown
        (``b``/``c`` by display key ``key``: 'provider:…', 'model:…:…', 'llm')."""
        events, prompt, cached, completion = f.events, f.prompt_tokens, f.cached_prompt_tokens, f.completion_tokens
        return [
            first,
            second,
            *(f"{n:,}" for n in (events, prompt, cached, completion)),
            format_cents(b[key], f.billed_nanos),
            format_cents(c[key], f.cost_nanos),
        ]

    rows: list[list[str]] = []
    for p in r.providers:
        rows.append(spend_row(provider_name(p.provider), "all models", p.figures, f"provider:{p.provider}"))
        rows.extend(spend_row("", m.model, m.figures, f"model:{p.provider}:{m.model}") for m in p.models)
    if rows:
        rows.append(spend_row("Total LLM", "", r.llm, "llm"))
        pdf.grid(
            ["Provider", "Model", "Turns", "Prompt", "Cached", "Completion", "Billed", "Cost"],
            rows,
            (22, 36, 14, 22, 20, 22, 21, 21),
            ("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT"),
        )
    else:
        pdf.note("No LLM turns in this period.")

    pdf.heading("Usage meters")
    pdf.grid(
        ["Meter", "Rate", "Quantity", "Cost"],
        [
            [
                m.info.label,
                m.info.rate,
                f"{format_quantity(m.info.meter, m.figures.quantity)} {m.info.display_unit}",
                format_cents(c[f"meter:{m.info.meter}"], m.figures.cost_nanos),
            ]
            for m in r.meters
        ]
        + [["Total meters", "", "", format_cents(c["meters"], r.meters_total.cost_nanos)]],
        (40, 50, 56, 32),
        ("LEFT", "LEFT", "RIGHT", "RIGHT"),
    )

    pdf.heading("Budgets")
    if r.budgets:
        pdf.grid(
            ["Budget", "Amount", "Spent", "Used", "Alerts sent"],
            [
                [
                    f"{bl.scope} {bl.target}",
                    format_money(bl.amount_nanos),
                    format_money(bl.spent_nanos),
                    format_bp(bl.used_bp),
                    ", ".join(f"{a.threshold_pct} %" for a in bl.alerts) or "none",
                ]
                for bl in r.budgets
            ],
            (56, 30, 30, 24, 38),
            ("LEFT", "RIGHT", "RIGHT", "RIGHT", "LEFT"),
        )
    else:
        pdf.note("No budgets set.")

    if r.detail:
        pdf.heading(f"Top conversations ({len(r.top_chats)} of {r.chats_in_period:,})")
        if r.top_chats:
            pdf.grid(
                ["Chat", "Workflow", "Wallet", "Events", "Tokens", "Cost"],
                [
                    [
                        ch.chat_id,
                        ch.workflow,
                        ch.wallet_id,
                        f"{ch.figures.events:,}",
                        f"{ch.figures.total_tokens:,}",
                        format_money(ch.figures.cost_nanos),
                    ]
                    for ch in r.top_chats
                ],
                (44, 32, 34, 18, 26, 24),
                ("LEFT", "LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT"),
            )
        else:
            pdf.note("No conversations in this period.")

    pdf.ln(4)
    pdf.note(
        "Amounts in USD, rounded to the cent so that the parts shown add up to the total shown (largest "
        "remainder: a part may differ by a cent from its own rounding); a non-zero amount under half a cent "
        "reads <$0.01 and counts as $0.00. Exports in CSV and JSON carry every figure in exact nano-USD "
        "(1 USD = 1,000,000,000 nanos)."
    )
    return bytes(pdf.output())
