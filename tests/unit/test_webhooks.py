"""Signed webhooks: the signature scheme, one POST against a real HTTP server on 127.0.0.1, and the
Celery task's retry policy (run in-process with ``apply``: its retries re-run at once)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket

import pytest

from tests.receiver import start_receiver
from worker.events import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Event,
    SignatureError,
    WebhookRejected,
    WebhookRetryable,
    backoff_s,
    channel,
    post,
    publish,
    sign,
    signature_header,
    verify,
)

SECRET = "whsec_test_5f2b"
BODY = '{"data":{"threshold_pct":50},"id":"evt_1","type":"budget.threshold_crossed"}'


@pytest.fixture()
def receiver():
    rcv, server, thread = start_receiver()
    yield rcv
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


# signatures -------------------------------------------------------------------------------------
def test_sign_is_hmac_sha256_hex_over_timestamp_dot_body():
    expected = hmac.new(SECRET.encode(), f"1764547200.{BODY}".encode(), hashlib.sha256).hexdigest()
    assert sign(SECRET, 1764547200, BODY) == expected
    assert sign(SECRET, 1764547200, BODY.encode()) == expected
    assert signature_header(SECRET, BODY, timestamp=1764547200) == f"t=1764547200,v1={expected}"


def test_verify_accepts_a_valid_signature_and_any_matching_v1_of_a_rotation():
    header = signature_header(SECRET, BODY, timestamp=1_000)
    assert verify(SECRET, header, BODY, now=1_000) == 1_000
    assert verify(SECRET, header, BODY.encode(), now=1_300) == 1_000  # exactly at the tolerance
    rotated = f"t=1000,v1={sign('old-secret', 1000, BODY)},v1={sign(SECRET, 1000, BODY)}"
    assert verify(SECRET, rotated, BODY, now=1_000) == 1_000


@pytest.mark.parametrize(
    ("header", "body", "now", "match"),
    [
        (None, BODY, 1_000, "missing"),
        ("", BODY, 1_000, "missing"),
        ("garbage", BODY, 1_000, "malformed"),
        ("t=abc,v1=00", BODY, 1_000, "Unix seconds"),
        (f"v1={'0' * 64}", BODY, 1_000, "no timestamp"),
        ("t=1000", BODY, 1_000, "no v1"),
        (f"t=1000,v1={'0' * 64}", BODY, 1_000, "no signature matches"),  # forged
        (f"t=1000,v1={sign('wrong-secret', 1000, BODY)}", BODY, 1_000, "no signature matches"),
        ("VALID", BODY.replace("50", "80"), 1_000, "no signature matches"),  # body tampered
        ("VALID", BODY, 1_301, "tolerance"),  # replayed too late
        ("VALID", BODY, 699, "tolerance"),  # dated in the future
        (f"t=1001,v1={sign(SECRET, 1000, BODY)}", BODY, 1_000, "no signature matches"),  # timestamp moved
    ],
)
def test_verify_refuses_forged_tampered_stale_and_malformed_signatures(header, body, now, match):
    if header == "VALID":
        header = signature_header(SECRET, BODY, timestamp=1_000)
    with pytest.raises(SignatureError, match=match):
        verify(SECRET, header, body, now=now)


def test_event_wire_form_is_compact_sorted_json_and_ids_are_unique():
    e = Event.new("budget.threshold_crossed", "acme", {"spent_nanos": 5_000_000_000}, created=1_764_547_200)
    assert e.id.startswith("evt_") and Event.new("x", "acme", {}).id != e.id
    assert json.loads(e.body()) == {
        "id": e.id,
        "type": "budget.threshold_crossed",
        "enterprise_id": "acme",
        "created": 1_764_547_200,
        "data": {"spent_nanos": 5_000_000_000},
    }
    assert " " not in e.body()
    assert channel("acme") == "tollgate:events:acme"


def test_publish_sends_the_event_json_on_the_apps_channel(redis_client):
    sub = redis_client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(channel("acme"))
    assert sub.get_message(timeout=1) is None  # the subscribe confirmation, ignored
    event = Event.new("budget.threshold_crossed", "acme", {"threshold_pct": 80})
    assert publish(redis_client, event) == 1
    message = sub.get_message(timeout=2)
    assert message["channel"] == "tollgate:events:acme"
    assert json.loads(message["data"]) == event.as_dict()
    sub.close()


def test_backoff_is_exponential_and_capped(settings, monkeypatch):
    monkeypatch.setattr(settings, "webhook_backoff_base_s", 30.0)
    monkeypatch.setattr(settings, "webhook_backoff_max_s", 600.0)
    assert [backoff_s(n, settings) for n in range(6)] == [30.0, 60.0, 120.0, 240.0, 480.0, 600.0]


# one POST ---------------------------------------------------------------------------------------
def test_post_delivers_a_body_the_receiver_can_verify(receiver):
    status = post(
        receiver.url, SECRET, event_id="evt_42", event_type="budget.threshold_crossed", body=BODY, timeout_s=5
    )
    assert status == 200
    [req] = receiver.requests
    assert req.body == BODY.encode()
    assert req.headers["content-type"] == "application/json"
    assert req.headers[EVENT_ID_HEADER.lower()] == "evt_42"
    assert req.headers["tollgate-event-type"] == "budget.threshold_crossed"
    verify(SECRET, req.headers[SIGNATURE_HEADER.lower()], req.body)
    with pytest.raises(SignatureError):  # the same request with a forged secret fails
        verify("not-the-secret", req.headers[SIGNATURE_HEADER.lower()], req.body)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_post_5xx_is_retryable(receiver, status):
    receiver.statuses = [status]
    with pytest.raises(WebhookRetryable) as info:
        post(receiver.url, SECRET, event_id="e", event_type="t", body=BODY, timeout_s=5)
    assert info.value.status == status


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
def test_post_4xx_and_redirects_are_final(receiver, status):
    receiver.statuses = [status]
    with pytest.raises(WebhookRejected) as info:
        post(receiver.url, SECRET, event_id="e", event_type="t", body=BODY, timeout_s=5)
    assert info.value.status == status
    assert len(receiver.requests) == 1  # a redirect is not followed


def test_post_connection_refused_is_retryable_and_other_schemes_are_refused():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(WebhookRetryable) as info:
        post(f"http://127.0.0.1:{port}/x", SECRET, event_id="e", event_type="t", body=BODY, timeout_s=2)
    assert info.value.status is None
    with pytest.raises(WebhookRejected, match="scheme 'file'"):
        post("file:///etc/passwd", SECRET, event_id="e", event_type="t", body=BODY, timeout_s=2)


# the task ---------------------------------------------------------------------------------------
@pytest.fixture()
def hooked_app(db, receiver):
    """Enterprise ``acme`` with its callback on the receiver."""
    from sqlalchemy import text

    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO enterprise (id, name, default_mode, callback_url, webhook_secret) "
                "VALUES ('acme', 'Acme', 'production', :u, :s)"
            ),
            {"u": receiver.url, "s": SECRET},
        )
    return receiver


def _deliver(event: Event):
    from tasks.billing import deliver

    return deliver.apply(
        kwargs={
            "enterprise_id": event.enterprise_id,
            "event_id": event.id,
            "event_type": event.type,
            "body": event.body(),
        }
    )


def test_task_retries_a_500_and_delivers_once_with_the_same_event_id(hooked_app):
    hooked_app.statuses = [500]
    event = Event.new("budget.threshold_crossed", "acme", {"threshold_pct": 50})
    result = _deliver(event)
    assert result.successful()
    assert result.result == {"outcome": "delivered", "status": 200, "event_id": event.id, "attempts": 2}
    assert [r.status for r in hooked_app.requests] == [500, 200]
    assert len(hooked_app.delivered()) == 1
    for r in hooked_app.requests:  # every attempt: same event id and body, a valid fresh signature
        assert r.headers["tollgate-event-id"] == event.id
        assert r.body == event.body().encode()
        verify(SECRET, r.headers["tollgate-signature"], r.body)


def test_task_does_not_retry_a_4xx(hooked_app):
    hooked_app.statuses = [422]
    event = Event.new("budget.threshold_crossed", "acme", {})
    result = _deliver(event)
    assert result.result == {"outcome": "rejected", "status": 422, "event_id": event.id, "attempts": 1}
    assert len(hooked_app.requests) == 1


def test_task_gives_up_after_max_retries(hooked_app, settings, monkeypatch):
    monkeypatch.setattr(settings, "webhook_max_retries", 2)
    hooked_app.statuses = [503] * 10
    result = _deliver(Event.new("budget.threshold_crossed", "acme", {}))
    assert result.failed()
    assert isinstance(result.result, WebhookRetryable)
    assert len(hooked_app.requests) == 3  # the first attempt and two retries
    assert hooked_app.delivered() == []


def test_task_skips_an_app_without_a_callback(db):
    from sqlalchemy import text

    with db.begin() as conn:
        conn.execute(text("INSERT INTO enterprise (id, name, default_mode) VALUES ('plain', 'Plain', 'production')"))
    result = _deliver(Event.new("budget.threshold_crossed", "plain", {}))
    assert result.result["outcome"] == "skipped"
    result = _deliver(Event.new("budget.threshold_crossed", "gone", {}))
    assert result.result["outcome"] == "skipped"
