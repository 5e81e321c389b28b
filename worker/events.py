"""App events: published on Redis pub/sub and, where an app configured a callback, POSTed to it as a
signed webhook.

An event is generic (a type and a JSON payload), so any part of tollgate can emit one: budget alerts
(``worker.billing.budgets``), pause and resume notices.  Its wire form, the body of the POST and the pub/sub
message alike::

    {"id": "evt_…", "type": "budget.threshold_crossed", "enterprise_id": "acme",
     "created": 1764547200, "data": {…}}

``created`` is Unix seconds; money inside ``data`` is integer nano-USD (``*_nanos``).

Pub/sub channel: ``tollgate:events:<enterprise_id>`` (at most once, to whoever listens right now).

Webhook (at least once, retried by the Celery task ``tollgate.webhooks.deliver``) headers:

    Content-Type: application/json
    Tollgate-Event-Id: evt_…          the same on every attempt: receivers drop ids they have seen
    Tollgate-Event-Type: budget.threshold_crossed
    Tollgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by webhook_secret>

as Stripe signs its own: a receiver recomputes the HMAC over the raw body, compares in constant time
and refuses a timestamp outside its tolerance (:func:`verify` does all three).  Each attempt is
signed afresh, so a retry hours later still passes a 5-minute tolerance.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from sqlmodel import Session

from models.wallet import Enterprise
from worker.celery_app import DELIVER_WEBHOOK_TASK, app
from worker.errors import InputError, TollgateError
from worker.gate.keys import EVENTS_CHANNEL_PREFIX
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Tollgate-Signature"
EVENT_ID_HEADER = "Tollgate-Event-Id"
EVENT_TYPE_HEADER = "Tollgate-Event-Type"
#: seconds a signature's timestamp may differ from the receiver's clock (Stripe's default)
DEFAULT_TOLERANCE_S = 300
CHANNEL_PREFIX = EVENTS_CHANNEL_PREFIX
#: the Celery task that POSTs one event (``tasks/billing.py``)
DELIVER_TASK = DELIVER_WEBHOOK_TASK
USER_AGENT = "tollgate-webhooks/1"


class SignatureError(InputError, ValueError):
    """A webhook signature header is malformed, does not match the body, or is outside the tolerance."""

    http_status, title = 400, "Invalid signature"


class WebhookError(TollgateError):
    """One delivery attempt failed.  ``status`` is the HTTP status, or None when none came back."""

    http_status, title = 502, "Webhook delivery failed"

    def __init__(self, message: str, status: int | None = None, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status


class WebhookRetryable(WebhookError):
    """A connection error, a timeout or a 5xx: the same event may be sent again later."""


class WebhookRejected(WebhookError):
    """The receiver answered 4xx (or 3xx: redirects are not followed), or the URL is unusable;
    sending the same event again would not help."""


# events -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Event:
    """One app event.

    Attributes:
        id: unique event id (``evt_…``); receivers deduplicate on it.
        type: dotted name, e.g. ``budget.threshold_crossed``.
        enterprise_id: the app the event belongs to (selects channel and callback).
        created: Unix seconds.
        data: JSON-serialisable payload; money as integer nano-USD.
    """

    id: str
    type: str
    enterprise_id: str
    created: int
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def new(
        cls,
        type: str,
        enterprise_id: str,
        data: Mapping[str, Any],
        *,
        event_id: str | None = None,
        created: int | None = None,
    ) -> "Event":
        """An event with ``event_id`` (default: a random ``evt_<uuid4 hex>``) created now (Unix s)."""
        return cls(
            id=event_id or f"evt_{uuid.uuid4().hex}",
            type=type,
            enterprise_id=enterprise_id,
            created=int(time.time()) if created is None else created,
            data=dict(data),
        )

    def as_dict(self) -> dict[str, Any]:
        """The wire form as a dict."""
        return {
            "id": self.id,
            "type": self.type,
            "enterprise_id": self.enterprise_id,
            "created": self.created,
            "data": dict(self.data),
        }

    def body(self) -> str:
        """The wire form as compact JSON text (keys sorted): the exact bytes that are signed."""
        return json.dumps(self.as_dict(), separators=(",", ":"), sort_keys=True)


def channel(enterprise_id: str) -> str:
    """The Redis pub/sub channel of an app's events: ``tollgate:events:<enterprise_id>``."""
    return f"{CHANNEL_PREFIX}{enterprise_id}"


def publish(client, event: Event) -> int:
    """PUBLISH the event's JSON on its app's channel; returns the number of subscribers reached."""
    return int(client.publish(channel(event.enterprise_id), event.body()))


# signatures -------------------------------------------------------------------------------------
def _bytes(body: str | bytes) -> bytes:
    return body.encode() if isinstance(body, str) else body


def sign(secret: str, timestamp: int, body: str | bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.{body}"`` keyed by ``secret`` (UTF-8)."""
    message = str(int(timestamp)).encode() + b"." + _bytes(body)
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: str | bytes, *, timestamp: int | None = None) -> str:
    """The ``Tollgate-Signature`` value ``t=<unix s>,v1=<hex>`` for ``body`` at ``timestamp`` (default now)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={sign(secret, ts, body)}"


def verify(
    secret: str,
    header: str | None,
    body: str | bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: int | None = None,
) -> int:
    """Check a ``Tollgate-Signature`` header against the raw ``body``, as a receiver does.

    Any ``v1`` entry may match (several appear while a secret is rotated); comparison is constant-time.
    Returns the signed timestamp (Unix s).
    Raises: SignatureError when the header is missing or malformed, no ``v1`` matches, or the
    timestamp is more than ``tolerance_s`` seconds from ``now`` (default: the current time).
    """
    if not header:
        raise SignatureError(f"{SIGNATURE_HEADER} header is missing", field=SIGNATURE_HEADER)
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"{SIGNATURE_HEADER}: malformed element {part!r}", field=SIGNATURE_HEADER)
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError(
                    f"{SIGNATURE_HEADER}: t={value!r} is not Unix seconds", field=SIGNATURE_HEADER
                ) from None
        elif name == "v1":
            candidates.append(value)
    if timestamp is None:
        raise SignatureError(f"{SIGNATURE_HEADER}: no timestamp (t=)", field=SIGNATURE_HEADER)
    if not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER}: no v1 signature", field=SIGNATURE_HEADER)
    expected = sign(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError(f"{SIGNATURE_HEADER}: no signature matches the body", field=SIGNATURE_HEADER)
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(
            f"{SIGNATURE_HEADER}: timestamp {timestamp} is {current - timestamp} s from now "
            f"(tolerance {tolerance_s} s)",
            field=SIGNATURE_HEADER,
        )
    return timestamp


# delivery ---------------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would replay a POST as a body-less GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(
    url: str,
    secret: str,
    *,
    event_id: str,
    event_type: str,
    body: str,
    timeout_s: float,
    timestamp: int | None = None,
) -> int:
    """One signed POST of ``body`` (the event's JSON text) to ``url``.

    Returns the 2xx status.
    Raises: WebhookRetryable (connection error, timeout, 5xx); WebhookRejected (1xx/3xx/4xx, or a URL
    that is not http(s)).
    """
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise WebhookRejected(f"callback_url: scheme {scheme!r} is not http or https", field="callback_url")
    data = body.encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event_id,
            EVENT_TYPE_HEADER: event_type,
            SIGNATURE_HEADER: signature_header(secret, data, timestamp=timestamp),
        },
    )
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
        exc.close()
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, DNS, TLS, timeout
        raise WebhookRetryable(f"POST {url}: {getattr(exc, 'reason', exc)}") from exc
    if 200 <= status < 300:
        return status
    if status >= 500:
        raise WebhookRetryable(f"POST {url}: HTTP {status}", status)
    raise WebhookRejected(f"POST {url}: HTTP {status}", status)


@dataclass(frozen=True, slots=True)
class Delivery:
    """Outcome of :func:`deliver`: ``delivered`` (2xx, with ``status``) or ``skipped`` (the app is
    gone or has no callback configured; ``reason`` says which)."""

    outcome: str
    status: int | None = None
    reason: str = ""


def callback_of(session: Session, enterprise_id: str) -> tuple[str, str] | None:
    """``(callback_url, webhook_secret)`` of an app, or None if it is unknown or lacks either."""
    enterprise = session.get(Enterprise, enterprise_id)
    if enterprise is None or not enterprise.callback_url or not enterprise.webhook_secret:
        return None
    return enterprise.callback_url, enterprise.webhook_secret


def deliver(
    callback: tuple[str, str] | None,
    *,
    enterprise_id: str,
    event_id: str,
    event_type: str,
    body: str,
    settings: Settings | None = None,
) -> Delivery:
    """Send one event to its app's callback: ``callback`` is ``(callback_url, webhook_secret)`` as
    :func:`callback_of` read it for this attempt (the task reads it again on every attempt, in a
    transaction of its own that ends before the POST, so a rotated secret applies to retries), then
    :func:`post` once.  Touches no database.

    Returns a :class:`Delivery`; a missing app or callback (None) is ``skipped``, not an error.
    Raises: WebhookRetryable, WebhookRejected (see :func:`post`).
    """
    settings = settings or get_settings()
    if callback is None:
        return Delivery("skipped", reason=f"enterprise {enterprise_id!r} has no callback_url and webhook_secret")
    url, secret = callback
    status = post(
        url, secret, event_id=event_id, event_type=event_type, body=body, timeout_s=settings.webhook_timeout_s
    )
    return Delivery("delivered", status=status)


def backoff_s(retries: int, settings: Settings | None = None) -> float:
    """Seconds to wait before retry number ``retries + 1``: ``base × 2^retries``, capped."""
    settings = settings or get_settings()
    return min(settings.webhook_backoff_max_s, settings.webhook_backoff_base_s * 2 ** max(0, retries))


SendTask = Callable[..., Any]


def enqueue_delivery(event: Event, send_task: SendTask | None = None) -> None:
    """Send the Celery task ``tollgate.webhooks.deliver`` for ``event``.  Call it after the
    transaction that produced the event committed.  ``send_task`` defaults to the app's
    ``send_task`` (tests pass their own)."""
    if send_task is None:
        send_task = app.send_task
    send_task(
        DELIVER_TASK,
        kwargs={
            "enterprise_id": event.enterprise_id,
            "event_id": event.id,
            "event_type": event.type,
            "body": event.body(),
        },
    )


def emit(client, event: Event, *, webhook: bool, send_task: SendTask | None = None) -> None:
    """Publish ``event`` on pub/sub and, if ``webhook``, enqueue its delivery.  Call after commit.

    Failures are logged, not raised: the event's source of truth (e.g. the stored alert) is already
    committed, and pub/sub is at most once anyway.
    """
    try:
        publish(client, event)
    except Exception:
        log.error("could not publish event %s (%s) for %s", event.id, event.type, event.enterprise_id, exc_info=True)
    if webhook:
        try:
            enqueue_delivery(event, send_task)
        except Exception:
            log.error(
                "could not enqueue webhook for event %s (%s) of %s",
                event.id,
                event.type,
                event.enterprise_id,
                exc_info=True,
            )
