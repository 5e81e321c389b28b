"""The ``/billing`` page's attention and top-up sections (issue 18 items 3 and 4): what the page
route (:mod:`api_stub.routes.billing`) adds to its template context, read in the page's snapshot.

- ``attention``: :func:`worker.billing.attention.attention` with the viewer's access rules (an end
  user its wallet's, an owner its app's, an admin counts only and the reconciliation drift);
- ``topup``: a :class:`TopUpView` (None for an admin: aggregates only, no wallet to pay for): the
  one-off token packages offered to the wallets in view and, back from Stripe Checkout
  (``?topup=success&checkout_session=cs_…`` or ``?topup=cancelled``), the credit once the webhook
  landed (:func:`worker.billing.topup.checkout_result`);
- ``blocks``, ``reason_label``: the labels ``_attention.html`` shows.

The form's POST is :mod:`api_stub.routes.billing_topup`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlmodel import Session
from starlette.requests import Request

from worker.billing.attention import BLOCK_LABELS, attention, reason_label
from worker.billing.topup import CheckoutResult, Offer, checkout_result, offers, valid_session_id
from worker.periods import current_period
from worker.settings import get_settings

if TYPE_CHECKING:  # the page route's type; importing it at run time would be a cycle
    from api_stub.routes.billing import Viewer

#: the ``topup`` query values Stripe's success and cancel URLs carry back to the page
RETURNS = ("success", "cancelled")


@dataclass(frozen=True)
class TopUpView:
    """The top-up section of the page: ``offers`` (one-off packages), ``wallets`` the payer may top
    up (ids), ``configured`` (Stripe Checkout has an API key), and the return from Checkout:
    ``returned`` (``success`` | ``cancelled`` | None) with ``result`` (the credit once the webhook
    landed, else pending) for a success with a valid session id."""

    offers: list[Offer]
    wallets: list[str]
    configured: bool
    returned: str | None = None
    result: CheckoutResult | None = None


def topup_view(session: Session, request: Request, v: Viewer, wallet_ids: list[str]) -> TopUpView | None:
    """The top-up section for viewer ``v`` (None for an admin), offering the packages to
    ``wallet_ids`` (the wallets in view), with the Checkout return read from the query (``topup``,
    ``checkout_session``)."""
    if not v.detail:
        return None
    returned = request.query_params.get("topup")
    returned = returned if returned in RETURNS else None
    sid = valid_session_id(request.query_params.get("checkout_session"))
    result = (
        checkout_result(session, session_id=sid, enterprise_id=v.enterprise_id, wallet_id=v.wallet_id)
        if returned == "success" and sid
        else None
    )
    return TopUpView(offers(session), wallet_ids, bool(get_settings().stripe_api_key), returned, result)


def page_sections(session: Session, request: Request, v: Viewer, period: str, wallet_ids: list[str]) -> dict[str, Any]:
    """The template context of the attention and top-up sections of viewer ``v``'s page for
    ``period`` (keys ``attention``, ``topup``, ``blocks``, ``reason_label``), read in ``session``
    (the page's read-only snapshot).  Raises ReportError naming ``period``."""
    return {
        "attention": attention(
            session,
            enterprise_id=v.enterprise_id,
            period=period,
            wallet_id=v.wallet_id,
            detail=v.detail,
            now_period=current_period(),
        ),
        "topup": topup_view(session, request, v, wallet_ids),
        "blocks": BLOCK_LABELS,
        "reason_label": reason_label,
    }


__all__ = ["RETURNS", "TopUpView", "page_sections", "topup_view"]
