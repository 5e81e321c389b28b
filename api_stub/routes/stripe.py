"""Stripe over HTTP: the webhook endpoint Stripe posts events to, and Checkout for API-key holders.

``POST /v1/stripe/webhook`` (no API key: Stripe signs it).  The raw body is verified with
``stripe.Webhook.construct_event`` against ``TOLLGATE_STRIPE_WEBHOOK_SECRET`` (default tolerance,
300 s); the event is stored once by its id and the task ``tollgate.stripe.process_event`` is sent;
the answer comes at once: ``200 {"received": true, "duplicate": false}``.  A replay of a stored event
answers ``"duplicate": true`` and changes nothing (if the stored one is still unprocessed, the task
is sent again).  A forged or stale signature, or a body that is not an event, answers 400
(``application/problem+json`` naming the field) and stores nothing; a broker that cannot take the
task answers 503, so Stripe delivers the event again.

``POST /v1/checkout`` (owner key of the wallet's app, or the wallet's own end-user key): starts a
Stripe Checkout session for a token package and returns its URL.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Callable

import stripe
from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api_stub.api_docs import described
from api_stub.deps import principal, problem_response
from api_stub.strict_json import StrictJsonRoute
from models.enums import ApiRole
from models.stripe import CheckoutCreate, CheckoutPublic, WebhookReceiptPublic
from models.wallet import Wallet
from worker.billing.stripe import (
    EventError,
    StripeBillingError,
    StripeConfigError,
    create_checkout_session,
    is_processed,
    store_event,
)
from worker.celery_app import STRIPE_PROCESS_EVENT_TASK
from worker.celery_app import app as celery_app
from worker.db import session_scope
from worker.settings import get_settings

log = logging.getLogger(__name__)

#: the Celery task that processes a stored event (``tasks/stripe.py``)
PROCESS_TASK = STRIPE_PROCESS_EVENT_TASK

router = APIRouter(tags=["stripe"], route_class=StrictJsonRoute)

SendTask = Callable[..., Any]


def get_send_task() -> SendTask:
    """How the endpoint sends Celery tasks: the app's ``send_task`` (tests override this dependency)."""
    return celery_app.send_task


def _problem(status: int, title: str, detail: str, field: str | None = None) -> JSONResponse:
    """A problem document through the API's one builder; ``errors`` names ``field`` with the whole detail."""
    return problem_response(status, title, detail, [{"field": field, "message": detail}] if field else None)


def _store(event: dict[str, Any]) -> tuple[bool, bool]:
    """(new, processed) of the event after storing it."""
    with session_scope() as session:
        new = store_event(session, event)
        processed = False if new else is_processed(session, event["id"])
    return new, processed


@router.post(
    "/v1/stripe/webhook",
    response_model=WebhookReceiptPublic,
    summary="Stripe's webhook (for Stripe only)",
    description=(
        "The endpoint to register in Stripe's dashboard for payment events; not for API clients. "
        "No API key: each event is checked against its `Stripe-Signature` header (tollgate's webhook "
        "signing secret, 5 minutes' tolerance), then acknowledged at once and applied shortly after "
        "(a paid Checkout credits its wallet).\n\n"
        "**Idempotent:** an event id delivered again answers `duplicate: true` and changes nothing."
    ),
    response_description="Received (and whether this event id was received before).",
    responses=described(
        {400: {}, 422: {}, 503: {}},
        {
            400: "A forged, stale or missing signature, or a body that is not a Stripe event. Nothing was stored.",
            422: "The `Stripe-Signature` header is malformed (`errors[].field` names it). Nothing was stored.",
            503: (
                "Webhooks are not configured on this server, or the event was stored but could not be queued: "
                "Stripe delivers it again later."
            ),
        },
    ),
)
async def stripe_webhook(
    request: Request,
    send_task: Annotated[SendTask, Depends(get_send_task)],
    stripe_signature: Annotated[
        str | None, Header(description="Stripe's signature of the body (set by Stripe).")
    ] = None,
):
    """Receive one Stripe event: verify, store once, enqueue, answer 200 at once (see the module doc)."""
    secret = get_settings().stripe_webhook_secret
    if not secret:
        return _problem(503, "Stripe is not configured", "TOLLGATE_STRIPE_WEBHOOK_SECRET is not set")
    body = await request.body()
    try:
        stripe.Webhook.construct_event(body, stripe_signature, secret)
    except stripe.SignatureVerificationError as exc:
        return _problem(400, "Invalid signature", f"Stripe-Signature: {exc.user_message or exc}", "Stripe-Signature")
    except (
        ValueError,
        TypeError,
        AttributeError,
        RecursionError,
    ) as exc:  # not UTF-8 or JSON, not an object, nested too deep
        return _problem(400, "Invalid event", f"body: not a Stripe event ({exc!r})"[:300], "body")
    event = json.loads(body)
    if not isinstance(event, dict):
        return _problem(400, "Invalid event", f"body: a JSON {type(event).__name__}, not a Stripe event object", "body")
    try:
        new, processed = await run_in_threadpool(_store, event)
    except EventError as exc:
        return _problem(exc.http_status, exc.title, str(exc), exc.field)
    if new or not processed:
        try:
            send_task(PROCESS_TASK, kwargs={"event_id": event["id"]})
        except Exception as exc:  # stored: Stripe's next delivery re-sends the task
            log.error("could not enqueue stripe event %s: %s", event["id"], exc)
            return _problem(503, "Not queued", f"event {event['id']} is stored but could not be queued; retry")
    return WebhookReceiptPublic(received=True, duplicate=not new)


# Checkout ---------------------------------------------------------------------------------------
async def _caller(
    authorization: Annotated[str | None, Header(description="Your API key: `Bearer tg_…`.")] = None,
):
    return await principal(authorization)


@router.post(
    "/v1/checkout",
    response_model=CheckoutPublic,
    summary="Buy a token package with Stripe Checkout",
    description=(
        "Start a Stripe Checkout session for one of the operator's token packages (`package_id`, "
        "one-off or monthly) and get the URL to send the payer to. When Stripe reports the payment, "
        "the package's credit is added to `wallet_id` (once per payment); the payer returns to "
        "`success_url` or `cancel_url`.\n\n"
        "**Key:** an **owner** key of the wallet's app, or the wallet's own **end_user** key.\n\n"
        "**Idempotent** with an `Idempotency-Key` header: the same key again returns the same session."
    ),
    response_description="The Checkout session and the URL to send the payer to.",
    # the key is read from the Authorization header parameter; declaring the bearer scheme too makes
    # Swagger UI's Authorize send it (a header parameter named Authorization is ignored there)
    openapi_extra={"security": [{"apiKey": []}]},
    responses=described(
        {401: {}, 404: {}, 422: {}, 502: {}, 503: {}},
        {
            404: "`wallet_id` is not a wallet your key may pay for. Nothing was started.",
            422: "Invalid body, or an unknown or inactive `package_id` (`errors[].field` names it). Nothing was started.",
            503: "Stripe is not configured on this server. Nothing was started.",
        },
    ),
)
def checkout(
    body: CheckoutCreate,
    who: Annotated[Any, Depends(_caller)],
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Optional: a key of yours; retrying with it returns the same session."),
    ] = None,
):
    """Start a Stripe Checkout session (owner key of the wallet's app, or the wallet's end-user key);
    the wallet is credited when Stripe reports the payment.  ``Idempotency-Key`` is passed to Stripe."""
    with session_scope() as session:
        wallet = session.get(Wallet, body.wallet_id)
        allowed = wallet is not None and (
            (who.role is ApiRole.owner and wallet.enterprise_id == who.enterprise_id)
            or (who.role is ApiRole.end_user and wallet.id == who.wallet_id)
        )
        if not allowed:  # one answer for "not yours" and "no such wallet"
            return _problem(404, "Unknown wallet", f"wallet_id: no wallet {body.wallet_id!r} for this key", "wallet_id")
        try:
            started = create_checkout_session(
                session,
                wallet_id=body.wallet_id,
                package_id=body.package_id,
                success_url=body.success_url,
                cancel_url=body.cancel_url,
                idempotency_key=idempotency_key,
            )
        except StripeBillingError as exc:
            return _problem(422, "Invalid request", str(exc), exc.field)
        except StripeConfigError as exc:
            return _problem(exc.http_status, exc.title, str(exc))
        except stripe.StripeError as exc:
            return _problem(502, "Stripe refused", f"Stripe: {exc.user_message or exc}")
    return CheckoutPublic(session_id=started.session_id, url=started.url, mode=started.mode)
