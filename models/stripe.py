"""The Stripe family: token packages a payer can buy, and stored webhook events."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from models.columns import big, ts


class TokenPackage(SQLModel, table=True):
    """Something a payer can buy through Stripe: a one-off top-up (``monthly=False``) or a
    subscription granting ``credit_nanos`` as its monthly allowance (``monthly=True``).
    ``price_cents`` is what Stripe charges (USD cents), ``credit_nanos`` what the wallet receives."""

    __tablename__ = "token_package"
    #: a Stripe price is one package: invoice.paid finds the package by it
    __table_args__ = (
        Index(
            "uq_token_package_stripe_price",
            "stripe_price_id",
            unique=True,
            postgresql_where=text("stripe_price_id IS NOT NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=100)
    name: str = Field(max_length=200)
    price_cents: int = Field(sa_column=big(nullable=False))
    credit_nanos: int = Field(sa_column=big(nullable=False))
    monthly: bool = Field(default=False, sa_column_kwargs={"server_default": text("false")})
    stripe_price_id: str | None = Field(default=None, max_length=100)
    active: bool = Field(default=True, sa_column_kwargs={"server_default": text("true")})
    created_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))


class StripeEvent(SQLModel, table=True):
    """A Stripe webhook event, stored once by its id when it arrives, processed by a task."""

    __tablename__ = "stripe_event"

    id: str = Field(primary_key=True, max_length=255)  # evt_…
    type: str = Field(max_length=100)
    payload: dict = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False))
    received_at: datetime = Field(sa_column=ts(nullable=False, server_default=func.now()))
    processed_at: datetime | None = Field(default=None, sa_column=ts(nullable=True))
    #: what processing did ('credited', 'ignored', 'error: …'), for operators
    outcome: str | None = Field(default=None, max_length=500)
