"""The Stripe family: token packages a payer can buy, stored webhook events, and the API shapes of
Checkout (``CheckoutCreate`` in, ``CheckoutPublic`` out) and of the webhook's receipt."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel
from pydantic import Field as PydanticField
from sqlalchemy import Column, Index, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from models.columns import big, ts
from models.validation import SAFE_ID, Id, InputModel


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


class WebhookReceiptPublic(BaseModel):
    """The answer to Stripe: the event was received, and whether it had been received before."""

    received: bool = PydanticField(description="Always true: the event was received and stored.")
    duplicate: bool = PydanticField(description="True: this event id was received before; nothing changed.")


class CheckoutCreate(InputModel):
    """A token package to buy for a wallet, and where Stripe sends the payer afterwards. Unknown
    fields are refused; no field may hold control characters."""

    # ids as models.validation.Id; the package id 1..100 characters, the URLs 1..2,000

    wallet_id: Id = PydanticField(description="The wallet the package's credit goes to.")
    package_id: Annotated[
        str,
        PydanticField(
            min_length=1,
            max_length=100,
            description="The token package to buy (the operator lists them with `tollgate stripe package list`).",
        ),
        SAFE_ID,
    ]
    success_url: Annotated[str, PydanticField(min_length=1, max_length=2000), SAFE_ID] = PydanticField(
        description="Where Stripe sends the payer after paying (1..2,000 characters)."
    )
    cancel_url: Annotated[str, PydanticField(min_length=1, max_length=2000), SAFE_ID] = PydanticField(
        description="Where Stripe sends the payer who cancels (1..2,000 characters)."
    )


class CheckoutPublic(BaseModel):
    """The Checkout session Stripe created, and the URL to send the payer to."""

    session_id: str = PydanticField(description="Stripe's Checkout session id (`cs_…`).")
    url: str | None = PydanticField(description="The page to send the payer to (null if Stripe gave none).")
    mode: str = PydanticField(description="`payment` (one-off package) or `subscription` (monthly package).")
