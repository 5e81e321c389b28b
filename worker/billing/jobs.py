"""Billing's scheduled jobs: entry-point bodies shared by their beat task and their CLI command.

A job is a loop of units of work; it opens one ``session_scope`` per unit (a wallet) and calls the
services, which take that session and never commit.  Short transactions on purpose: one bad wallet
must not stop the others, and a job killed mid-way keeps what it committed (every step is
idempotent, so the next run completes it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from models.enums import TransactionKind
from worker.billing.allowances import (
    LOOKBACK_PERIODS,
    RESTORE_PREFIX,
    AllowanceError,
    Entry,
    ResetReport,
    apply_to_gate,
    lookback,
    reset_wallet,
    wallets_to_reset,
)
from worker.billing.modes import FeeReport, ResumeChats, charge_flat_fees
from worker.db import after_commit, session_scope
from worker.gate.gate import WalletGate, process_gate
from worker.periods import current_period, period_bounds
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _apply_to_gate(gate: WalletGate, written: list[Entry], resume: ResumeChats | None) -> None:
    apply_to_gate(gate, written, resume)


def run_monthly_reset(
    gate: WalletGate | None = None,
    *,
    now: datetime | None = None,
    period: str | None = None,
    wallet_ids: list[str] | None = None,
    settings: Settings | None = None,
    resume: ResumeChats | None = None,
) -> ResetReport:
    """The monthly reset job: :func:`reset_wallet` for every candidate wallet (or ``wallet_ids``),
    one short transaction each, and the entries each inserted applied to the gate after its commit.

    ``now`` defaults to the current UTC time; ``period`` ('YYYY-MM', default: the period of ``now``)
    is the period granted and may be earlier than now's (an operator's backfill), never later.
    Idempotent: a second run returns an empty report.  ``resume(gate, wallet_id, cause=key)`` runs
    after each applied grant (the task and the CLI pass :func:`worker.chats.lifecycle.resume_paused_chats`).
    Raises: AllowanceError naming ``period`` (malformed or in the future); Redis errors from the gate
    (the entries are committed by then; reconciliation repairs the gate).
    """
    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    this_period = current_period(now)
    period = period or this_period
    try:
        period_bounds(period)
    except ValueError as exc:
        raise AllowanceError(str(exc), field="period") from None
    if period > this_period:
        raise AllowanceError(f"period: {period!r} is after the current period {this_period!r}", field="period")
    if period not in lookback(this_period) and period != this_period:
        # a grant older than the lookback would never be expired by the hourly job
        raise AllowanceError(
            f"period: {period!r} is more than {LOOKBACK_PERIODS} months before {this_period!r}", field="period"
        )
    gate = gate or process_gate()
    report = ResetReport(period=period)
    if wallet_ids is None:
        with session_scope() as session:
            wallet_ids = wallets_to_reset(session, period)
    for wallet_id in wallet_ids:
        try:
            with session_scope() as session:
                written = reset_wallet(
                    session, wallet_id, period=period, now=now, grace_s=settings.allowance_expiry_grace_s
                )
                if written:
                    after_commit(session, partial(_apply_to_gate, gate, written, resume))
        except (AllowanceError, SQLAlchemyError) as exc:  # one bad wallet must not stop the others
            log.error("monthly reset of wallet %s for %s failed: %s", wallet_id, period, exc)
            report.failed.append(wallet_id)
            continue
        report.wallets_checked += 1
        for e in written:
            if e.key.startswith(RESTORE_PREFIX):
                report.restored.append(e)
            else:
                (report.granted if e.kind == TransactionKind.credit else report.expired).append(e)
    return report


@dataclass(slots=True)
class MonthlyRun:
    """One run of the monthly job (:func:`run_monthly_jobs`): the allowance reset and the flat fees
    of ``track_only`` apps for the same period."""

    reset: ResetReport
    fees: FeeReport

    def summary(self) -> dict[str, Any]:
        """The job's result as beat's task returns it and ``tollgate allowance reset --json`` prints it:
        the reset's figures with its entries counted (``granted``, ``expired``, ``restored``: numbers
        of entries; ``*_nanos``: nano-USD), ``flat_fees`` (apps charged) and ``flat_fees_nanos``."""
        report = self.reset.as_dict()
        fees = self.fees.as_dict()
        return {k: v for k, v in report.items() if k not in ("granted", "expired", "restored")} | {
            "granted": len(report["granted"]),
            "expired": len(report["expired"]),
            "restored": len(report["restored"]),
            "flat_fees": len(fees["charged"]),
            "flat_fees_nanos": fees["charged_nanos"],
        }


def run_monthly_jobs(
    gate: WalletGate | None = None, *, period: str | None = None, resume: ResumeChats | None = None
) -> MonthlyRun:
    """The hourly monthly job, one code path for beat (``tollgate.billing.monthly_reset``) and
    ``tollgate allowance reset``: :func:`run_monthly_reset` (grants, expiries, restores; one
    transaction per wallet), then :func:`worker.billing.modes.charge_flat_fees` for the same
    ``period`` in one transaction (default: the current UTC month).  Idempotent per period.
    Raises AllowanceError / ModeError naming ``period`` when it is malformed (or in the future)."""
    gate = gate or process_gate()
    reset = run_monthly_reset(gate, period=period, resume=resume)
    with session_scope() as session:
        fees = charge_flat_fees(session, gate, period=reset.period)
    return MonthlyRun(reset, fees)
