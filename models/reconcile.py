"""The reconcile family: reconciliation runs (gate vs ledger) and the wallets that drifted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKey, func, text
from sqlmodel import Field, SQLModel

from models.columns import big, ts


class ReconciliationRun(SQLModel, table=True):
    """One comparison of every wallet's gate balance (Redis) with the ledger (PostgreSQL)."""

    __tablename__ = "reconciliation_run"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    started_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))
    finished_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
    wallets_checked: int = 0
    wallets_busy: int = 0
    wallets_drifted: int = 0
    drift_nanos_abs: int = Field(default=0, sa_column=big(nullable=False, server_default=text("0")))
    repair: bool = False
    rebuild: bool = False


class WalletDrift(SQLModel, table=True):
    """A wallet whose gate balance differed from ``ledger − queued`` in a reconciliation run."""

    __tablename__ = "wallet_drift"

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    run_id: int = Field(sa_column=Column(BigInteger, ForeignKey("reconciliation_run.id"), nullable=False, index=True))
    wallet_id: str = Field(max_length=200)
    gate_nanos: int | None = Field(default=None, sa_column=big(nullable=True))
    expected_nanos: int = Field(sa_column=big(nullable=False))
    drift_nanos: int = Field(sa_column=big(nullable=False))
    repaired: bool = False
