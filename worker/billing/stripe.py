"""Stripe billing: token packages sold through Checkout, and the Stripe webhook events that credit
wallets and change what they may do.

Flow::

    create_checkout_session(wallet, package) ──► Stripe Checkout (payment or subscription mode)
    Stripe ── POST /v1/stripe/webhook ──► signature checked, store_event (once per evt_ id), 200
                                          └─► Celery tollgate.stripe.process_event(event_id)
                                                └─► process_event: one handler per event type

Money: Stripe speaks USD cents, tollgate integer nano-USD (1 cent = :data:`NANOS_PER_CENT` nanos); a
package says both (``price_cents`` charged, ``credit_nanos`` received), so nothing is converted
with floats and a package may sell credit at a markup or discount.

Events handled (:data:`HANDLERS`; any other type is stored with outcome ``ignored``):

- ``checkout.session.completed`` / ``checkout.session.async_payment_succeeded``, payment mode with
  ``payment_status == 'paid'``: credit ``package.credit_nanos`` through
  :func:`worker.ledger.accounts.credit_wallet` keyed ``stripe:<checkout session id>`` (a replayed or second
  event credits once), one ``audit_log`` row (actor ``stripe``, action ``credit``).
  Subscription mode: the wallet records ``stripe_customer_id`` / ``stripe_subscription_id`` and
  ``subscription_status`` (no credit: the paid invoice credits).
- ``invoice.paid``: credit the subscription's package (found by the invoice lines' price ids,
  else the subscription metadata's ``package_id``) × quantity, keyed ``stripe:<invoice id>``;
  ``subscription_status = 'active'``; a ``blocked_reason == 'payment_failed'`` is lifted
  (PostgreSQL first, then the gate).  Proration lines are not credited.
- ``invoice.payment_failed``: ``subscription_status = 'past_due'``, ``blocked_reason =
  'payment_failed'`` (replacing no reason or ``budget_exceeded``, which the budget job sets again
  once lifted; any other reason is kept), then the gate refuses the wallet's turns.
- ``customer.subscription.deleted``: ``subscription_status = 'canceled'``, and a
  ``payment_failed`` block is lifted (nothing was credited for the unpaid invoices, and no
  subscription is left to pay).  ``monthly_allowance_nanos`` is left alone: a subscription never
  sets it (below), so it is a grant the operator set by hand, which a cancellation does not end.

Subscriptions are credited by their paid invoices, once per billing cycle: a subscription does
*not* set ``wallet.monthly_allowance_nanos``, or the monthly reset (:mod:`worker.billing.allowances`) would
grant the same tokens a second time each UTC month.

Events about a subscription that is no longer the wallet's current one are ignored.  Wallets are
found by the metadata tollgate puts on every Checkout session and subscription (``wallet_id``,
``package_id``), else by ``stripe_subscription_id``, else by ``stripe_customer_id``; so an
``invoice.paid`` arriving before its ``checkout.session.completed`` still finds its wallet.

Processing (:func:`process_event`) is one PostgreSQL transaction, the entry point's: it holds the
``stripe_event`` row lock, applies the handler (the ledger credit, the wallet's state), writes the
audit row and marks the event ``processed_at``/``outcome``; the gate steps (the credit, a
``payment_failed`` block) run once that transaction has committed (``db.after_commit``), keyed so
that they apply once.  A crash or a Redis failure between the commit and the gate steps is repaired
by the next delivery of the event (the task's retry, a redelivery: an event processed before sends
its gate steps again) and, for a credit, by the beat job ``tollgate.reconcile.complete_credits``
(:func:`worker.ledger.accounts.unapplied_credits`).  An event that cannot be applied (unknown wallet
or package, malformed) gets ``outcome = 'error: …'``, nothing else of it is written, and it stays
unprocessed (a later delivery of it is processed again); transient failures (Redis, the database,
:class:`worker.ledger.accounts.GatePending`) are raised for the task to retry.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Protocol, cast
from urllib.parse import urlsplit

import stripe
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import Session, col

from models.access import AuditLog
from models.enums import PayerLevel
from models.stripe import StripeEvent, TokenPackage
from models.wallet import Enterprise, Wallet
from worker.billing.budgets import BUDGET_EXCEEDED
from worker.db import after_commit
from worker.errors import InputError, InvalidInput, Unavailable
from worker.gate.gate import UnknownWallet, WalletGate, process_gate
from worker.gate.keys import STRIPE_KEY_PREFIX
from worker.ledger.accounts import MAX_CREDIT_NANOS, LedgerError, OnCredited, complete_credit, credit_wallet
from worker.ledger.audit import audit
from worker.settings import Settings, get_settings
from worker.validation import storable_id

log = logging.getLogger(__name__)

#: nano-USD in one US cent
NANOS_PER_CENT = 10_000_000
#: basis points in 100 %
BPS = 10_000
#: Stripe's smallest and largest USD charge, cents ($0.50 and $999,999.99)
MIN_PRICE_CENTS = 50
MAX_PRICE_CENTS = 99_999_999
#: ``wallet.blocked_reason`` while a subscription payment has failed
PAYMENT_FAILED = "payment_failed"
#: the ``audit_log.actor`` of everything Stripe events do
ACTOR = "stripe"
#: prefix of the ledger idempotency keys of Stripe credits: ``stripe:<cs_… or in_…>``
KEY_PREFIX = STRIPE_KEY_PREFIX
#: subscription statuses during which a wallet may not start another subscription
LIVE_SUBSCRIPTION = ("active", "past_due", "trialing", "incomplete", "unpaid")

_PACKAGE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")


class StripeBillingError(InputError, ValueError):
    """A package or Checkout request is invalid; the message starts with the field it names.
    Nothing changed."""


class StripeConfigError(Unavailable, RuntimeError):
    """Stripe is not configured: the named setting (``TOLLGATE_STRIPE_…``) is missing."""

    title = "Stripe is not configured"


class EventError(InputError, ValueError):
    """A stored Stripe event that cannot be applied (unknown wallet or package, malformed object).
    Recorded as the event's ``outcome`` (``error: …``); retrying would not help until data changes."""

    http_status, title = 400, "Invalid event"


# packages ---------------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def add_package(
    session: Session,
    *,
    package_id: str,
    name: str,
    price_cents: int,
    credit_nanos: int,
    monthly: bool = False,
    stripe_price_id: str | None = None,
    active: bool = True,
) -> TokenPackage:
    """Create or update (same ``package_id``) a token package.  The caller commits.

    ``price_cents``: what Stripe charges, USD cents (50 … 99,999,999); ``credit_nanos``: what the
    wallet receives, nano-USD (1 … 2^62), once for a one-off package, per paid invoice for a
    ``monthly`` one.  A ``monthly`` package needs the ``stripe_price_id`` (``price_…``) of a
    recurring monthly Stripe price: paid invoices are matched to packages by it.  A price id belongs
    to at most one package.
    Raises: StripeBillingError naming the field.
    """
    if not isinstance(package_id, str) or not _PACKAGE_ID.match(package_id):
        raise StripeBillingError(
            f"package_id: {package_id!r} must be 1..100 letters, digits or _.:- ", field="package_id"
        )
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise StripeBillingError(f"name: must be 1..200 characters, got {name!r}", field="name")
    if not _is_int(price_cents) or not MIN_PRICE_CENTS <= price_cents <= MAX_PRICE_CENTS:
        raise StripeBillingError(
            f"price_cents: must be an integer of USD cents in {MIN_PRICE_CENTS}..{MAX_PRICE_CENTS}, got {price_cents!r}",
            field="price_cents",
        )
    if not _is_int(credit_nanos) or not 0 < credit_nanos <= MAX_CREDIT_NANOS:
        raise StripeBillingError(
            f"credit_nanos: must be an integer of nano-USD in 1..2^62, got {credit_nanos!r}", field="credit_nanos"
        )
    if not isinstance(monthly, bool):
        raise StripeBillingError(f"monthly: must be true or false, got {monthly!r}", field="monthly")
    if stripe_price_id is not None and (
        not isinstance(stripe_price_id, str) or not stripe_price_id.startswith("price_") or len(stripe_price_id) > 100
    ):
        raise StripeBillingError(
            f"stripe_price_id: {stripe_price_id!r} is not a Stripe price id (price_…)", field="stripe_price_id"
        )
    if monthly and not stripe_price_id:
        raise StripeBillingError(
            "stripe_price_id: a monthly package needs the id of its recurring Stripe price", field="stripe_price_id"
        )
    if stripe_price_id:
        other = session.execute(
            select(col(TokenPackage.id)).where(
                col(TokenPackage.stripe_price_id) == stripe_price_id, col(TokenPackage.id) != package_id
            )
        ).scalar_one_or_none()
        if other is not None:
            raise StripeBillingError(
                f"stripe_price_id: {stripe_price_id!r} already belongs to package {other!r}", field="stripe_price_id"
            )
    package = session.get(TokenPackage, package_id)
    if package is None:
        package = TokenPackage(  # type: ignore[call-arg]  # created_at: the database's now() (server_default)
            id=package_id, name=name, price_cents=price_cents, credit_nanos=credit_nanos
        )
        session.add(package)
    package.name, package.price_cents, package.credit_nanos = name, price_cents, credit_nanos
    package.monthly, package.stripe_price_id, package.active = monthly, stripe_price_id, active
    session.flush()
    return package


def get_package(session: Session, package_id: str, *, active_only: bool = False) -> TokenPackage:
    """The package ``package_id``.  Raises StripeBillingError naming ``package_id`` when it is unknown
    (or inactive, with ``active_only``)."""
    package = session.get(TokenPackage, package_id) if storable_id(package_id) else None
    if package is None or (active_only and not package.active):
        raise StripeBillingError(
            f"package_id: unknown{' or inactive' if active_only else ''} package {package_id!r}", field="package_id"
        )
    return package


def list_packages(session: Session, *, include_inactive: bool = False) -> list[TokenPackage]:
    """Packages ordered by ``(monthly, price_cents, id)``; only active ones unless ``include_inactive``."""
    query = select(TokenPackage).order_by(
        col(TokenPackage.monthly), col(TokenPackage.price_cents), col(TokenPackage.id)
    )
    if not include_inactive:
        query = query.where(col(TokenPackage.active).is_(True))
    return list(session.execute(query).scalars())


def deactivate_package(session: Session, package_id: str) -> bool:
    """Stop selling a package (Checkout refuses it; events of sessions already started still credit
    it).  True if it was active.  Raises StripeBillingError naming ``package_id``."""
    package = get_package(session, package_id)
    was_active = package.active
    package.active = False
    session.flush()
    return was_active


# Checkout ---------------------------------------------------------------------------------------
def platform_fee_cents(amount_cents: int, creator_share_bps: int) -> int:
    """The platform's cut of a Connect charge, USD cents: ``amount − floor(amount × share / 10,000)``
    (the creator's share is rounded down, so the platform keeps the sub-cent remainder).

    Raises: ValueError for a negative amount or a share outside 0..10,000 bps.
    """
    if not _is_int(amount_cents) or amount_cents < 0:
        raise InvalidInput("amount_cents", f"must be a non-negative integer, got {amount_cents!r}")
    if not _is_int(creator_share_bps) or not 0 <= creator_share_bps <= BPS:
        raise InvalidInput("creator_share_bps", f"must be an integer in 0..{BPS}, got {creator_share_bps!r}")
    return amount_cents - amount_cents * creator_share_bps // BPS


def application_fee_percent(creator_share_bps: int) -> str:
    """The platform's percentage of a subscription for ``subscription_data[application_fee_percent]``,
    as an exact decimal string with two places (7000 bps creator share → ``"30.00"``)."""
    if not _is_int(creator_share_bps) or not 0 <= creator_share_bps <= BPS:
        raise InvalidInput("creator_share_bps", f"must be an integer in 0..{BPS}, got {creator_share_bps!r}")
    fee_bps = BPS - creator_share_bps
    return f"{fee_bps // 100}.{fee_bps % 100:02d}"


def _url(value: Any, field_name: str) -> str:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or len(value) > 2000:
        raise StripeBillingError(f"{field_name}: {value!r} is not an http(s) URL", field=field_name)
    return value


def checkout_params(
    session: Session,
    *,
    wallet_id: str,
    package_id: str,
    success_url: str,
    cancel_url: str,
) -> dict[str, Any]:
    """The parameters of ``POST /v1/checkout/sessions`` that sell ``package_id`` to ``wallet_id``.

    One-off package: ``mode=payment``, line item the package's Stripe price (or an inline
    ``price_data`` of ``price_cents`` USD); monthly: ``mode=subscription`` with its price.  Always
    ``client_reference_id = wallet_id`` and ``metadata`` ``{wallet_id, package_id}``, copied onto the
    PaymentIntent or the subscription.  The wallet's Stripe customer is reused when known.
    Connect: for an ``app_usage`` wallet whose app has ``stripe_account_id``, the charge goes to that
    account and the platform keeps its fee (:func:`platform_fee_cents` of ``price_cents`` at the
    app's ``creator_share_bps``, or :func:`application_fee_percent` for a subscription).
    Raises: StripeBillingError naming ``wallet_id`` (unknown; already subscribed), ``package_id``
    (unknown or inactive), ``success_url`` / ``cancel_url``.
    """
    wallet = session.get(Wallet, wallet_id) if storable_id(wallet_id) else None
    if wallet is None:
        raise StripeBillingError(f"wallet_id: unknown wallet {wallet_id!r}", field="wallet_id")
    package = get_package(session, package_id, active_only=True)
    _url(success_url, "success_url")
    _url(cancel_url, "cancel_url")
    if package.monthly and wallet.stripe_subscription_id and wallet.subscription_status in LIVE_SUBSCRIPTION:
        raise StripeBillingError(
            f"wallet_id: wallet {wallet_id!r} already has subscription {wallet.stripe_subscription_id!r} "
            f"({wallet.subscription_status})",
            field="wallet_id",
        )
    metadata = {"wallet_id": wallet.id, "package_id": package.id}
    if package.stripe_price_id:
        item: dict[str, Any] = {"price": package.stripe_price_id, "quantity": 1}
    else:
        item = {
            "price_data": {
                "currency": "usd",
                "unit_amount": package.price_cents,
                "product_data": {"name": package.name},
            },
            "quantity": 1,
        }
    params: dict[str, Any] = {
        "mode": "subscription" if package.monthly else "payment",
        "line_items": [item],
        "client_reference_id": wallet.id,
        "metadata": metadata,
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if wallet.stripe_customer_id:
        params["customer"] = wallet.stripe_customer_id
    account: str | None = None
    share_bps = 0
    if wallet.level == PayerLevel.app_usage and wallet.enterprise_id:
        enterprise = session.get(Enterprise, wallet.enterprise_id)
        if enterprise is not None and enterprise.stripe_account_id:
            account, share_bps = enterprise.stripe_account_id, enterprise.creator_share_bps
    if package.monthly:
        data: dict[str, Any] = {"metadata": dict(metadata)}
        if account:
            data["application_fee_percent"] = application_fee_percent(share_bps)
            data["transfer_data"] = {"destination": account}
        params["subscription_data"] = data
    else:
        data = {"metadata": dict(metadata)}
        if account:
            data["application_fee_amount"] = platform_fee_cents(package.price_cents, share_bps)
            data["transfer_data"] = {"destination": account}
        params["payment_intent_data"] = data
    return params


def stripe_client(settings: Settings | None = None) -> stripe.StripeClient:
    """A StripeClient with ``settings.stripe_api_key``, talking to ``settings.stripe_api_base`` when
    set (tests: a local server).  Raises StripeConfigError when the key is missing."""
    settings = settings or get_settings()
    if not settings.stripe_api_key:
        raise StripeConfigError("TOLLGATE_STRIPE_API_KEY is not set: Checkout is unavailable")
    base: Any = {"api": settings.stripe_api_base} if settings.stripe_api_base else None  # stripe's BaseAddresses
    return stripe.StripeClient(settings.stripe_api_key, base_addresses=base, max_network_retries=2)


@dataclass(frozen=True, slots=True)
class CheckoutStarted:
    """A Checkout session Stripe created: its id (``cs_…``), the URL to send the payer to, and the
    mode (``payment`` | ``subscription``)."""

    session_id: str
    url: str | None
    mode: str


def checkout_idempotency_key(wallet_id: str, idempotency_key: str) -> str:
    """The ``Idempotency-Key`` sent to Stripe for a caller's ``idempotency_key`` on ``wallet_id``:
    ``tollgate-checkout-`` and the SHA-256 hex digest of the length-prefixed pair (82 characters,
    under Stripe's 255).  Stripe keeps idempotency keys per account, which every app shares: the
    caller's key alone would let one app's request meet another's (its cached session, or a 502 that
    tells the key was used).  Scoped to the wallet, a key can only meet its own wallet's requests."""
    pair = f"{len(wallet_id)}:{wallet_id}{idempotency_key}".encode()
    return "tollgate-checkout-" + hashlib.sha256(pair).hexdigest()


def create_checkout_session(
    session: Session,
    *,
    wallet_id: str,
    package_id: str,
    success_url: str,
    cancel_url: str,
    client: stripe.StripeClient | None = None,
    idempotency_key: str | None = None,
) -> CheckoutStarted:
    """Create a Stripe Checkout session selling ``package_id`` to ``wallet_id`` (parameters:
    :func:`checkout_params`).  Writes nothing: the wallet is credited when Stripe reports payment.

    ``client`` defaults to :func:`stripe_client`; ``idempotency_key`` (the caller's) is sent as
    Stripe's ``Idempotency-Key`` scoped to the wallet (:func:`checkout_idempotency_key`): the same key
    for the same wallet twice returns the same session; the same key for another wallet is another
    request (one Stripe account serves every app, so a caller's key never meets another app's).
    Raises: StripeBillingError naming the field (nothing is sent to Stripe then); StripeConfigError;
    ``stripe.StripeError`` when Stripe refuses or cannot be reached.
    """
    params = checkout_params(
        session, wallet_id=wallet_id, package_id=package_id, success_url=success_url, cancel_url=cancel_url
    )
    client = client or stripe_client()
    key = checkout_idempotency_key(wallet_id, idempotency_key) if idempotency_key else None
    options: Any = {"idempotency_key": key} if key else None  # stripe's RequestOptions
    created = client.v1.checkout.sessions.create(cast(Any, params), options)
    return CheckoutStarted(session_id=created.id, url=getattr(created, "url", None), mode=params["mode"])


# events -----------------------------------------------------------------------------------------
_SURROGATE = re.compile("[\ud800-\udfff]")


def jsonb_problem(value: Any) -> str | None:
    """Why parsed JSON ``value`` cannot be stored as PostgreSQL ``jsonb``, or None: a NUL (``\\u0000``)
    or a lone surrogate (``\\ud800``) in a string or key, a number that is not finite (``NaN``,
    ``Infinity``, ``1e400`` read as a float).  Python's ``json`` reads all of these; PostgreSQL
    refuses them, which would answer a signed webhook with a 500 that Stripe retries for days.
    Walks iteratively (no recursion limit); the path of the first problem is named."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return f"{path or 'the event'}: {item!r} is not a finite number"
            continue
        elif isinstance(item, Mapping):
            texts = [k for k in item if isinstance(k, str)]
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in item.items())
        elif isinstance(item, list):
            texts = []
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        else:
            continue
        for text in texts:
            if "\x00" in text or _SURROGATE.search(text):
                what = "a NUL" if "\x00" in text else "a lone surrogate"
                return f"{path or 'the event'}: {what} in {text[:60]!r}, which PostgreSQL cannot store"
    return None


def store_event(session: Session, event: Mapping[str, Any]) -> bool:
    """Store a verified Stripe event once by its id (``INSERT … ON CONFLICT (id) DO NOTHING``);
    True if it is new.  ``event`` is the event's JSON object as Stripe sent it.  The caller commits.
    Raises: EventError when ``id`` (``evt_…``) or ``type`` is missing or malformed, or when the
    payload holds what PostgreSQL's ``jsonb`` cannot store (:func:`jsonb_problem`), naming ``body``.
    """
    event_id, event_type = event.get("id"), event.get("type")
    if not storable_id(event_id, 255) or not cast(str, event_id).startswith("evt_"):
        raise EventError(f"id: {str(event_id)[:120]!r} is not a Stripe event id (evt_…)", field="id")
    if not storable_id(event_type, 100):
        raise EventError(f"type: {str(event_type)[:120]!r} is not a Stripe event type", field="type")
    problem = jsonb_problem(event)
    if problem:
        raise EventError(f"body: {problem}", field="body")
    inserted = session.execute(
        insert(StripeEvent)
        .values(id=event_id, type=event_type, payload=dict(event))
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(col(StripeEvent.id))
    ).first()
    return inserted is not None


def is_processed(session: Session, event_id: str) -> bool:
    """True if the stored event ``event_id`` has been processed."""
    return (
        session.execute(
            select(col(StripeEvent.processed_at).is_not(None)).where(col(StripeEvent.id) == event_id)
        ).scalar_one_or_none()
        is True
    )


@dataclass(frozen=True, slots=True)
class Credit:
    """A credit a handler applied: ledger key, nano-USD, the Stripe object and package behind it."""

    idempotency_key: str
    amount_nanos: int
    stripe_object: str
    package_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a handler did: the text stored as the event's ``outcome``, the wallet it touched, and
    the credit it applied (audited once)."""

    text: str
    wallet_id: str | None = None
    enterprise_id: str | None = None
    credit: Credit | None = None


@dataclass(frozen=True, slots=True)
class ProcessResult:
    """One :func:`process_event` call: ``processed`` if this call applied the event, ``duplicate`` if
    it had been processed before (nothing changed), and the event's ``outcome``."""

    event_id: str
    type: str | None
    outcome: str | None
    processed: bool
    duplicate: bool = False
    wallet_id: str | None = None
    credited_nanos: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form."""
        return asdict(self)


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(name)
    return obj


# reading an event's object: one typed reader per kind of field, each raising EventError naming it,
# so a field of the wrong JSON type is the event's error outcome, never a Python error that fails
# the task on every retry (and the sweeper's re-sends) or a value stored as something it is not
#: the longest Stripe id kept (``wallet.stripe_customer_id`` and ``stripe_subscription_id`` are varchar(100))
MAX_STRIPE_ID = 100


def _ref(value: Any, field: str) -> str | None:
    """A Stripe reference (``cus_…``, ``sub_…``, ``price_…``): the id string, or the ``id`` of an
    expanded object; None when absent (None or ``""``).  Raises EventError naming ``field`` for
    anything else: a number, a list, an id that could not be stored (over :data:`MAX_STRIPE_ID`
    characters, a NUL, whitespace; :func:`worker.validation.storable_id`)."""
    if isinstance(value, Mapping):
        value = value.get("id")
    if value is None or value == "":
        return None
    if not storable_id(value, MAX_STRIPE_ID):
        raise EventError(f"{field}: {str(value)[:120]!r} is not a Stripe id", field=field)
    return cast(str, value)


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    """An object field (``metadata``, ``subscription_details``): the mapping, ``{}`` when absent
    (None).  Raises EventError naming ``field`` for any other JSON type."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise EventError(f"{field}: {type(value).__name__} {str(value)[:120]!r} is not an object", field=field)
    return value


def _check_usd(obj: Mapping[str, Any]) -> None:
    """``data.object.currency`` is ``usd`` (any case) or absent.  Raises EventError naming it."""
    currency = obj.get("currency")
    if currency is not None and (not isinstance(currency, str) or currency.lower() != "usd"):
        raise EventError(f"data.object.currency: {str(currency)[:120]!r} is not usd", field="data.object.currency")


def _find_wallet(session: Session, *, metadata: Any, subscription_id: str | None, customer_id: str | None) -> Wallet:
    wallet_id = _get(metadata, "wallet_id")
    if storable_id(wallet_id) and (wallet := session.get(Wallet, wallet_id)) is not None:
        return wallet
    if subscription_id:
        wallet = (
            session.execute(select(Wallet).where(col(Wallet.stripe_subscription_id) == subscription_id))
            .scalars()
            .first()
        )
        if wallet is not None:
            return wallet
    if customer_id:
        found = list(
            session.execute(select(Wallet).where(col(Wallet.stripe_customer_id) == customer_id).limit(2)).scalars()
        )
        if len(found) == 1:
            return found[0]
    raise EventError(
        f"wallet_id: no wallet for metadata wallet_id {wallet_id!r}, subscription "
        f"{subscription_id!r}, customer {customer_id!r}",
        field="wallet_id",
    )


def _credit(
    session: Session,
    gate: WalletGate,
    wallet: Wallet,
    *,
    amount_nanos: int,
    key: str,
    description: str,
    stripe_object: str,
    package_id: str,
    on_credited: OnCredited | None,
) -> Credit:
    """The ledger entry of an event's credit in ``session``; its gate step runs after the commit."""
    credit_wallet(
        session,
        gate,
        wallet_id=wallet.id,
        amount_nanos=amount_nanos,
        idempotency_key=key,
        description=description,
        on_credited=on_credited,
        system_key=True,
    )
    return Credit(key, amount_nanos, stripe_object, package_id)


def _sync_block(gate: WalletGate, wallet_id: str, reason: str | None) -> None:
    """Make the gate's ``blocked`` flag equal ``reason`` (read from PostgreSQL, committed by then)
    where either is ``payment_failed``; other reasons are their own module's to change (as
    :func:`worker.billing.budgets.sync_gate_blocks` leaves ours alone).  Also completes a change whose gate
    step failed on an earlier attempt."""
    current = gate.blocked_reasons([wallet_id]).get(wallet_id)
    if current == reason or PAYMENT_FAILED not in (current, reason):
        return
    try:
        gate.set_blocked(wallet_id, reason)
    except UnknownWallet:
        log.info("wallet %s is not in the gate; its block is loaded with it on rebuild", wallet_id)


def _object_id(obj: Mapping[str, Any], prefix: str, what: str) -> str:
    """The event's ``data.object.id``, a string starting with ``prefix`` (``cs_``, ``in_``,
    ``sub_``); else EventError naming ``data.object.id`` (``what``: the id's kind, for the message)."""
    object_id = obj.get("id")
    if not isinstance(object_id, str) or not object_id.startswith(prefix) or not storable_id(object_id, MAX_STRIPE_ID):
        raise EventError(f"data.object.id: {str(object_id)[:120]!r} is not {what}", field="data.object.id")
    return object_id


def _update_wallet(session: Session, gate: WalletGate, wallet_id: str, change: Callable[[Wallet], None]) -> Wallet:
    """Apply ``change`` to the locked wallet row in ``session``; once the caller commits, mirror a
    ``payment_failed`` block (set or lifted) in the gate (:func:`_sync_block`)."""
    wallet = session.execute(select(Wallet).where(col(Wallet.id) == wallet_id).with_for_update()).scalar_one()
    change(wallet)
    reason = wallet.blocked_reason
    after_commit(session, lambda: _sync_block(gate, wallet_id, reason))
    return wallet


def _on_checkout_completed(
    session: Session, gate: WalletGate, obj: Mapping[str, Any], event_id: str, on_credited: OnCredited | None = None
) -> Outcome:
    session_id = _object_id(obj, "cs_", "a Checkout session id")
    metadata = _mapping(obj.get("metadata"), "data.object.metadata")
    wallet = _checkout_wallet(session, obj)
    package = get_package_or_event_error(session, metadata.get("package_id"))
    customer_id = _ref(obj.get("customer"), "data.object.customer")
    mode = obj.get("mode")
    if mode == "payment":
        if obj.get("payment_status") != "paid":
            return Outcome(f"ignored: payment_status {obj.get('payment_status')!r}", wallet.id, wallet.enterprise_id)
        _check_usd(obj)
        if customer_id and not wallet.stripe_customer_id:
            _update_wallet(
                session,
                gate,
                wallet.id,
                lambda w: setattr(w, "stripe_customer_id", w.stripe_customer_id or customer_id),
            )
        credit = _credit(
            session,
            gate,
            wallet,
            amount_nanos=package.credit_nanos,
            key=f"{KEY_PREFIX}{session_id}",
            description=f"Stripe Checkout {session_id}: {package.name}",
            stripe_object=session_id,
            package_id=package.id,
            on_credited=on_credited,
        )
        return Outcome("credited", wallet.id, wallet.enterprise_id, credit)
    if mode == "subscription":
        subscription_id = _ref(obj.get("subscription"), "data.object.subscription")
        if not subscription_id:
            raise EventError(
                "data.object.subscription: missing on a subscription-mode Checkout session",
                field="data.object.subscription",
            )
        status = "active" if obj.get("payment_status") in ("paid", "no_payment_required") else "incomplete"

        def record(w: Wallet) -> None:
            w.stripe_customer_id = customer_id or w.stripe_customer_id
            if w.stripe_subscription_id != subscription_id:  # a new subscription (events of it may come first)
                w.stripe_subscription_id = subscription_id
                w.subscription_status = status
            elif w.subscription_status is None:
                w.subscription_status = status

        _update_wallet(session, gate, wallet.id, record)
        return Outcome(f"subscribed: {subscription_id}", wallet.id, wallet.enterprise_id)
    return Outcome(f"ignored: mode {mode!r}", wallet.id, wallet.enterprise_id)


def _checkout_wallet(session: Session, obj: Mapping[str, Any]) -> Wallet:
    """The wallet a Checkout session pays for (its metadata's, else ``client_reference_id``).  Raises EventError."""
    metadata = _mapping(obj.get("metadata"), "data.object.metadata")
    return _find_wallet(
        session,
        metadata={"wallet_id": _get(metadata, "wallet_id") or obj.get("client_reference_id")},
        subscription_id=None,
        customer_id=None,
    )


def get_package_or_event_error(session: Session, package_id: Any) -> TokenPackage:
    """The package an event refers to (active or not: the session was started while it was sold).
    Raises EventError naming ``metadata.package_id``."""
    package = session.get(TokenPackage, package_id) if storable_id(package_id) else None
    if package is None:
        raise EventError(f"metadata.package_id: unknown package {package_id!r}", field="metadata.package_id")
    return package


def _invoice_subscription(obj: Mapping[str, Any]) -> tuple[str | None, Any]:
    """(subscription id, subscription metadata) of an invoice, in the API's new shape
    (``parent.subscription_details``) or the old one (``subscription``, ``subscription_details``)."""
    details = _mapping(
        _get(obj, "parent", "subscription_details") or obj.get("subscription_details"),
        "data.object.parent.subscription_details",
    )
    subscription_id = _ref(details.get("subscription"), "data.object.parent.subscription_details.subscription")
    subscription_id = subscription_id or _ref(obj.get("subscription"), "data.object.subscription")
    return subscription_id, _mapping(details.get("metadata"), "data.object.parent.subscription_details.metadata")


def _line_price(line: Mapping[str, Any]) -> str | None:
    return (
        _ref(_get(line, "pricing", "price_details", "price"), "data.object.lines.data.pricing.price_details.price")
        or _ref(line.get("price"), "data.object.lines.data.price")
        or _ref(_get(line, "plan"), "data.object.lines.data.plan")
    )


def _is_proration(line: Mapping[str, Any]) -> bool:
    return bool(
        line.get("proration")
        or _get(line, "parent", "subscription_item_details", "proration")
        or _get(line, "parent", "invoice_item_details", "proration")
    )


def _invoice_credit(session: Session, obj: Mapping[str, Any], metadata: Any) -> tuple[int, list[TokenPackage]]:
    """nano-USD an invoice buys: Σ package.credit_nanos × quantity over its non-proration lines whose
    price is a monthly package's (a line without ``quantity`` counts once; quantity 0 buys nothing);
    else the metadata's ``package_id`` once.  Raises EventError naming a field of the wrong type."""
    total, packages = 0, []
    lines = _mapping(obj.get("lines"), "data.object.lines").get("data")
    if lines is not None and not isinstance(lines, list):
        raise EventError(
            f"data.object.lines.data: {type(lines).__name__} is not a list", field="data.object.lines.data"
        )
    for line in lines or []:
        if not isinstance(line, Mapping) or _is_proration(line):
            continue
        price_id = _line_price(line)
        package = (
            session.execute(
                select(TokenPackage).where(col(TokenPackage.stripe_price_id) == price_id)
            ).scalar_one_or_none()
            if price_id
            else None
        )
        if package is None:
            continue
        quantity = line.get("quantity")
        quantity = 1 if quantity is None else quantity  # not `or 1`: a quantity of 0 bought one package
        if not _is_int(quantity) or quantity < 0:
            raise EventError(f"lines.data.quantity: {quantity!r} is not a whole number", field="lines.data.quantity")
        total += package.credit_nanos * quantity
        packages.append(package)
    if not packages and _get(metadata, "package_id"):
        package = get_package_or_event_error(session, metadata["package_id"])
        total, packages = package.credit_nanos, [package]
    if not packages:
        raise EventError(
            f"lines.data.price: no line of invoice {obj.get('id')!r} is a token package's price",
            field="lines.data.price",
        )
    return total, packages


def _subscription_event_wallet(
    session: Session, obj: Mapping[str, Any], subscription_id: str | None, metadata: Any
) -> Wallet:
    return _find_wallet(
        session,
        metadata=metadata,
        subscription_id=subscription_id,
        customer_id=_ref(obj.get("customer"), "data.object.customer"),
    )


def _stale(wallet: Wallet, subscription_id: str | None) -> bool:
    """The event is about a subscription the wallet has since replaced."""
    return bool(
        subscription_id
        and wallet.stripe_subscription_id
        and wallet.stripe_subscription_id != subscription_id
        and wallet.subscription_status in LIVE_SUBSCRIPTION
    )


def _on_invoice_paid(
    session: Session, gate: WalletGate, obj: Mapping[str, Any], event_id: str, on_credited: OnCredited | None = None
) -> Outcome:
    invoice_id = _object_id(obj, "in_", "an invoice id")
    subscription_id, metadata = _invoice_subscription(obj)
    if not subscription_id:
        return Outcome("ignored: not a subscription invoice")
    wallet = _subscription_event_wallet(session, obj, subscription_id, metadata)
    amount, packages = _invoice_credit(session, obj, metadata)
    if _stale(wallet, subscription_id):
        return Outcome(f"ignored: {subscription_id} is not the wallet's subscription", wallet.id, wallet.enterprise_id)
    _check_usd(obj)
    names = ", ".join(p.name for p in packages)
    credit = (
        _credit(
            session,
            gate,
            wallet,
            amount_nanos=amount,
            key=f"{KEY_PREFIX}{invoice_id}",
            description=f"Stripe invoice {invoice_id}: {names}",
            stripe_object=invoice_id,
            package_id=",".join(p.id for p in packages),
            on_credited=on_credited,
        )
        if amount
        else None
    )
    customer_id = _ref(obj.get("customer"), "data.object.customer")

    def activate(w: Wallet) -> None:
        w.stripe_subscription_id = subscription_id
        w.stripe_customer_id = w.stripe_customer_id or customer_id
        w.subscription_status = "active"
        if w.blocked_reason == PAYMENT_FAILED:
            w.blocked_reason = None

    _update_wallet(session, gate, wallet.id, activate)
    if credit is None:
        return Outcome("active: the invoice buys no tokens (quantity 0)", wallet.id, wallet.enterprise_id)
    return Outcome("credited", wallet.id, wallet.enterprise_id, credit)


def _on_invoice_payment_failed(
    session: Session, gate: WalletGate, obj: Mapping[str, Any], event_id: str, on_credited: OnCredited | None = None
) -> Outcome:
    subscription_id, metadata = _invoice_subscription(obj)
    if not subscription_id:
        return Outcome("ignored: not a subscription invoice")
    wallet = _subscription_event_wallet(session, obj, subscription_id, metadata)
    if _stale(wallet, subscription_id):
        return Outcome(f"ignored: {subscription_id} is not the wallet's subscription", wallet.id, wallet.enterprise_id)

    def block(w: Wallet) -> None:
        w.stripe_subscription_id = subscription_id
        w.subscription_status = "past_due"
        if w.blocked_reason in (None, BUDGET_EXCEEDED):  # the budget job sets its reason again once lifted
            w.blocked_reason = PAYMENT_FAILED

    after = _update_wallet(session, gate, wallet.id, block)
    return Outcome(f"blocked: {after.blocked_reason}", wallet.id, wallet.enterprise_id)


def _on_subscription_deleted(
    session: Session, gate: WalletGate, obj: Mapping[str, Any], event_id: str, on_credited: OnCredited | None = None
) -> Outcome:
    subscription_id = _object_id(obj, "sub_", "a subscription id")
    wallet = _subscription_event_wallet(
        session, obj, subscription_id, _mapping(obj.get("metadata"), "data.object.metadata")
    )
    if wallet.stripe_subscription_id and wallet.stripe_subscription_id != subscription_id:
        return Outcome(f"ignored: {subscription_id} is not the wallet's subscription", wallet.id, wallet.enterprise_id)

    def cancel(w: Wallet) -> None:
        w.stripe_subscription_id = subscription_id
        w.subscription_status = "canceled"
        if w.blocked_reason == PAYMENT_FAILED:
            w.blocked_reason = None

    _update_wallet(session, gate, wallet.id, cancel)
    return Outcome("canceled", wallet.id, wallet.enterprise_id)


class Handler(Protocol):
    """An event type's handler: its PostgreSQL work in the caller's ``session``, its gate steps
    sent with ``after_commit``.  Raises EventError or LedgerError when the event cannot be applied."""

    def __call__(
        self,
        session: Session,
        gate: WalletGate,
        obj: Mapping[str, Any],
        event_id: str,
        on_credited: OnCredited | None = None,
    ) -> Outcome: ...


#: event type → handler (one place, as lago's handle_event_service)
HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": _on_checkout_completed,
    "checkout.session.async_payment_succeeded": _on_checkout_completed,
    "invoice.paid": _on_invoice_paid,
    "invoice.payment_failed": _on_invoice_payment_failed,
    "customer.subscription.deleted": _on_subscription_deleted,
}


def _event_wallet(session: Session, event_type: str, obj: Mapping[str, Any]) -> Wallet | None:
    """The wallet a handled event is about, found as its handler finds it; None if none is."""
    try:
        if event_type.startswith("checkout.session."):
            return _checkout_wallet(session, obj)
        if event_type.startswith("invoice."):
            subscription_id, metadata = _invoice_subscription(obj)
            return _subscription_event_wallet(session, obj, subscription_id, metadata) if subscription_id else None
        if event_type == "customer.subscription.deleted":
            subscription_id = _ref(obj.get("id"), "data.object.id")
            return _subscription_event_wallet(
                session, obj, subscription_id, _mapping(obj.get("metadata"), "data.object.metadata")
            )
    except EventError:
        return None
    return None


def _complete_gate_steps(
    session: Session, gate: WalletGate, event: StripeEvent, on_credited: OnCredited | None
) -> None:
    """Send again, after the caller's commit, the gate steps of an event processed before: its
    credit (keyed ``stripe:<object id>``, so the gate applies it once) and its wallet's
    ``payment_failed`` block as PostgreSQL has it.  This is the repair of a crash or a Redis failure
    between the event's commit and its gate steps: the task's retry, or a redelivery, of the event
    lands here.  Changes nothing in PostgreSQL."""
    obj = _get(event.payload, "data", "object")
    if event.type not in HANDLERS or not isinstance(obj, Mapping):
        return
    object_id = obj.get("id")
    if isinstance(object_id, str):
        complete_credit(session, gate, f"{KEY_PREFIX}{object_id}", on_credited=on_credited)
    wallet = _event_wallet(session, event.type, obj)
    if wallet is not None:
        wallet_id, reason = wallet.id, wallet.blocked_reason
        after_commit(session, lambda: _sync_block(gate, wallet_id, reason))


def _audited(session: Session, key: str) -> bool:
    return (
        session.execute(
            select(func.count())
            .select_from(AuditLog)
            .where(
                col(AuditLog.actor) == ACTOR,
                col(AuditLog.action) == "credit",
                col(AuditLog.detail)["idempotency_key"].astext == key,
            )
        ).scalar_one()
        > 0
    )


def process_event(
    session: Session, event_id: str, *, gate: WalletGate | None = None, on_credited: OnCredited | None = None
) -> ProcessResult:
    """Apply the stored Stripe event ``event_id`` once (see the module doc) and mark it processed,
    all in ``session``: one transaction (the caller's, which commits) holds the event row's lock,
    the ledger credit, the wallet's state, the audit row and the processed mark; the gate steps (the
    credit, a ``payment_failed`` block) run after that commit (``after_commit``), keyed so that
    they apply once.

    Idempotent: an event already processed changes nothing in PostgreSQL (``duplicate=True``) and
    sends its gate steps again (:func:`_complete_gate_steps`: what repairs a crash between the
    commit and the gate); two concurrent calls are serialised by the event's row lock; each
    credit's ledger key makes it count once even across different events.  An unknown ``event_id``
    returns ``outcome='missing'``.  ``gate``: the entry point's (the task passes
    :func:`worker.gate.gate.process_gate`, also the default).  ``on_credited``: passed to
    :func:`worker.ledger.accounts.credit_wallet` for the event's credit (the task passes
    :func:`worker.chats.wiring.after_credit`: the wallet's paused chats resume).
    Returns a :class:`ProcessResult` (``credited_nanos``: nano-USD this event credited).
    Raises (the caller's transaction rolls back, the event stays unprocessed; retry later, and
    record it with :func:`note_retry`): ``UnknownWallet`` (the wallet is not in the gate: rebuild
    it), Redis and database errors; from the caller's ``commit()`` (the event is processed in
    PostgreSQL by then; a retry completes the gate side): ``worker.ledger.accounts.GatePending``,
    Redis errors.  Events that cannot be applied are not raised: their outcome is ``error: …``
    (:class:`EventError`, or a :class:`worker.ledger.accounts.LedgerError` such as a ledger key
    already used for another amount), nothing else of theirs is written.
    """
    gate = gate or process_gate()
    event = session.execute(
        select(StripeEvent).where(col(StripeEvent.id) == event_id).with_for_update()
    ).scalar_one_or_none()
    if event is None:
        return ProcessResult(event_id, None, "missing", processed=False)
    if event.processed_at is not None:
        _complete_gate_steps(session, gate, event, on_credited)
        return ProcessResult(event_id, event.type, event.outcome, processed=False, duplicate=True)
    handler = HANDLERS.get(event.type)
    obj = _get(event.payload, "data", "object")
    try:
        with session.begin_nested():  # an event that cannot be applied leaves nothing of its own
            if handler is None:
                outcome = Outcome("ignored")
            elif not isinstance(obj, Mapping):
                raise EventError("data.object: missing", field="data.object")
            else:
                outcome = handler(session, gate, obj, event_id, on_credited=on_credited)
    except (EventError, LedgerError) as exc:
        event.outcome = f"error: {exc}"[:500]
        log.error("stripe event %s (%s) cannot be applied: %s", event_id, event.type, exc)
        return ProcessResult(event_id, event.type, event.outcome, processed=False)
    if outcome.credit and not _audited(session, outcome.credit.idempotency_key):
        c = outcome.credit
        audit(
            session,
            actor=ACTOR,
            action="credit",
            enterprise_id=outcome.enterprise_id,
            wallet_id=outcome.wallet_id,
            idempotency_key=c.idempotency_key,
            amount_nanos=c.amount_nanos,
            stripe_object=c.stripe_object,
            package_id=c.package_id,
            event_id=event_id,
        )
    event.processed_at = func.now()
    event.outcome = outcome.text[:500]
    return ProcessResult(
        event_id,
        event.type,
        event.outcome,
        processed=True,
        wallet_id=outcome.wallet_id,
        credited_nanos=outcome.credit.amount_nanos if outcome.credit else 0,
    )


def note_retry(session: Session, event_id: str, exc: BaseException) -> None:
    """Record on the still unprocessed event ``event_id`` why its processing failed (``outcome =
    'retrying: <error>'``), for operators; the entry point calls it in a transaction of its own
    after :func:`process_event`'s rolled back.  Changes nothing on a processed event."""
    session.execute(
        update(StripeEvent)
        .where(col(StripeEvent.id) == event_id, col(StripeEvent.processed_at).is_(None))
        .values(outcome=f"retrying: {type(exc).__name__}: {exc}"[:500])
    )


def unprocessed_events(session: Session, *, older_than_s: int = 120, limit: int = 500) -> list[str]:
    """Ids of stored Stripe events not processed yet and received more than ``older_than_s``
    seconds ago (their task was lost, gave up, or hit data that was fixed since), oldest first."""
    return list(
        session.execute(
            select(col(StripeEvent.id))
            .where(
                col(StripeEvent.processed_at).is_(None),
                col(StripeEvent.received_at) < func.now() - func.make_interval(0, 0, 0, 0, 0, 0, older_than_s),
            )
            .order_by(col(StripeEvent.received_at))
            .limit(limit)
        ).scalars()
    )
