"""Top-up from the ``/billing`` page (issue 18 item 4): the POST of its top-up form.

- ``POST /billing/topup`` (form fields ``wallet_id``, ``package_id``, ``csrf_token``): start a Stripe
  Checkout session selling the one-off token package ``package_id`` to ``wallet_id`` through the
  existing Checkout code (:func:`worker.billing.stripe.create_checkout_session`) and send the browser
  to Stripe (303 to the session's URL).  Stripe sends the payer back to ``/billing?topup=success&
  checkout_session=<id>`` (or ``topup=cancelled``), where the page shows a banner and, once the
  webhook has credited the wallet, the credit and the balance (:func:`topup_view`).

  Checks, in order: the request comes from this site (``Origin``/``Referer``: 403 naming
  ``Origin``); a valid credential (401; the key's rate limit, 429); a signed-in browser session's
  CSRF token in ``csrf_token`` (403 naming it; a Bearer caller has no session and needs none); the
  caller may pay for the wallet: an owner any wallet of its app, an end user its own wallet, an
  admin none (aggregates only): else 403 naming ``wallet_id``; the package is an active one-off
  package (422 naming ``package_id``).  Stripe not configured: 503; Stripe refusing: 502.  Errors
  are the page's HTML error with that status.  Nothing is written here: the credit is the webhook's.

The section itself (packages, the banner on return) is :mod:`api_stub.billing_sections`.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlencode

import stripe
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from api_stub.routes.billing import Refusal, Viewer, _html, check_origin, own_origin, read_form, viewer
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole
from models.wallet import Wallet
from worker.billing.stripe import (
    StripeBillingError,
    StripeConfigError,
    create_checkout_session,
    get_package,
)
from worker.db import session_scope
from worker.periods import current_period
from worker.validation import storable_id

router = APIRouter(prefix="/billing", tags=["billing"], route_class=StrictJsonRoute)


def _return_url(request: Request, outcome: str) -> str:
    """Where Stripe sends the payer back: this month's page (where the credit lands) with a banner."""
    url = f"{own_origin(request)}/billing?{urlencode({'period': current_period(), 'topup': outcome})}"
    # Stripe replaces {CHECKOUT_SESSION_ID} with the session's id on the way back
    return url + "&checkout_session={CHECKOUT_SESSION_ID}" if outcome == "success" else url


def _payable(session: Session, v: Viewer, wallet_id: str) -> None:
    """Raise Refusal 403 naming ``wallet_id`` unless ``v`` may pay for it."""
    if v.principal.role is ApiRole.admin:
        raise Refusal(
            403, "Forbidden", "wallet_id: an admin key sees aggregates only and tops up no wallet", "wallet_id"
        )
    if v.wallet_id is not None:
        allowed = wallet_id == v.wallet_id
    else:
        wallet = session.get(Wallet, wallet_id) if storable_id(wallet_id) else None
        allowed = wallet is not None and wallet.enterprise_id == v.enterprise_id
    if not allowed:  # one answer for "not yours" and "no such wallet"
        raise Refusal(403, "Forbidden", f"wallet_id: this key may not top up wallet {wallet_id!r}", "wallet_id")


@router.post("/topup", include_in_schema=False)
async def topup(request: Request) -> Response:
    """Start Stripe Checkout for a token package from the page's top-up form and redirect to it
    (303); see the module doc for the checks and errors."""
    try:
        form = await read_form(request)
        url = await run_in_threadpool(_checkout_url, request, form)
    except Refusal as exc:
        return _html(request, "error.html", exc.status, headers=exc.headers, error=exc)
    return RedirectResponse(
        url, status_code=303, headers={"Cache-Control": "no-store", "Referrer-Policy": "same-origin"}
    )


def _checkout_url(request: Request, form: dict[str, list[str]]) -> str:
    """The checks of the module doc, in order, then the Checkout URL of the form's package sold to
    its wallet.  Raises Refusal."""
    check_origin(request)
    v = viewer(request, None, app_picker=True)  # an admin without an app gets its 403 below, not a 422
    sent = (form.get("csrf_token") or [""])[0]
    if v.csrf and (not sent or not hmac.compare_digest(sent.encode(), v.csrf.encode())):
        raise Refusal(403, "Forbidden", "csrf_token: the top-up form was not sent from this site's page", "csrf_token")
    wallet_id = (form.get("wallet_id") or [""])[0]
    package_id = (form.get("package_id") or [""])[0]
    with session_scope() as session:
        _payable(session, v, wallet_id)
        try:
            if get_package(session, package_id, active_only=True).monthly:
                raise StripeBillingError(
                    f"package_id: {package_id!r} is a monthly subscription, not a top-up", field="package_id"
                )
            started = create_checkout_session(
                session,
                wallet_id=wallet_id,
                package_id=package_id,
                success_url=_return_url(request, "success"),
                cancel_url=_return_url(request, "cancelled"),
            )
        except StripeBillingError as exc:
            raise Refusal(422, "Invalid request", str(exc), exc.field) from None
        except StripeConfigError as exc:
            raise Refusal(503, exc.title, str(exc)) from None
        except stripe.StripeError as exc:
            raise Refusal(502, "Stripe refused", f"Stripe: {exc.user_message or exc}") from None
    if started.mode != "payment" or not started.url:
        raise Refusal(502, "Stripe refused", "Stripe: the Checkout session has no payment URL")
    return started.url


__all__ = ["router", "topup"]
