"""The budget family: monthly budgets, their alerts and dirty marks."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic import Field as PydanticField
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    UniqueConstraint,
    func,
)
from sqlmodel import Field, SQLModel

from models.columns import big, ts
from models.validation import Id


class BudgetDirty(SQLModel, table=True):
    """A budget scope × month whose spend changed: rollup_dirty's mechanism for budgets.  The drain
    marks each (wallet, enterprise, workflow, month) of the turns it inserts, in the same transaction
    (``ON CONFLICT DO UPDATE``); ``worker.billing.budgets.check_budgets`` takes the marks (``FOR UPDATE SKIP
    LOCKED``) and evaluates the budgets of those scopes in those months, so a turn persisted after its
    month ended still reaches its month's alerts."""

    __tablename__ = "budget_dirty"

    wallet_id: str = Field(primary_key=True, max_length=200)
    enterprise_id: str = Field(primary_key=True, max_length=200)
    workflow: str = Field(primary_key=True, max_length=200)
    period: str = Field(primary_key=True, max_length=7)  # 'YYYY-MM', UTC
    touched_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


#: nano-USD a budget may hold per month: an integer, 0 < n ≤ 2^62 (sums stay far from BIGINT)
BudgetNanos = Annotated[int, PydanticField(strict=True, gt=0, le=2**62)]


class Budget(SQLModel, table=True):
    """A monthly spending budget on one wallet (``wallet_id``) or one workflow of an app
    (``workflow``), in nano-USD, with alerts at 50/80/100 % and an optional auto-pause at 100 %."""

    __tablename__ = "budget"
    __table_args__ = (
        CheckConstraint("(wallet_id IS NULL) <> (workflow IS NULL)", name="ck_budget_one_scope"),
        CheckConstraint("amount_nanos > 0", name="ck_budget_positive"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    enterprise_id: str = Field(foreign_key="enterprise.id", index=True, max_length=200)
    wallet_id: str | None = Field(default=None, foreign_key="wallet.id", max_length=200)
    workflow: str | None = Field(default=None, max_length=200)
    amount_nanos: int = Field(sa_column=big(nullable=False))
    auto_pause: bool = False
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


class BudgetCreate(BaseModel):
    """A monthly spending budget as a caller sets it: on one wallet (``wallet_id``) or on one workflow
    of the app (``workflow``), exactly one of the two.  ``amount_nanos`` is nano-USD per UTC month;
    alerts fire at 50/80/100 %; ``auto_pause`` stops the spending at 100 %.

    Raises ``pydantic.ValidationError`` naming the field for bad input.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enterprise_id: Id
    wallet_id: Id | None = None
    workflow: Id | None = None
    amount_nanos: BudgetNanos
    auto_pause: Annotated[bool, PydanticField(strict=True)] = False

    @model_validator(mode="after")
    def _one_scope(self) -> "BudgetCreate":
        if (self.wallet_id is None) == (self.workflow is None):
            raise ValueError("give exactly one of wallet_id or workflow")
        return self


class BudgetAlert(SQLModel, table=True):
    """One alert: a budget crossed a threshold (50, 80 or 100 %) in a period; unique per
    (budget, period, threshold), so it is sent once however often or concurrently the job runs."""

    __tablename__ = "budget_alert"
    __table_args__ = (UniqueConstraint("budget_id", "period", "threshold_pct", name="uq_budget_alert_once"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    budget_id: int = Field(sa_column=Column(BigInteger, ForeignKey("budget.id"), nullable=False))
    period: str = Field(max_length=7)
    threshold_pct: int
    spent_nanos: int = Field(sa_column=big(nullable=False))
    amount_nanos: int = Field(sa_column=big(nullable=False))
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))
    #: when the alert was published and its webhook queued; None: not yet (the next check sends it)
    notified_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
