"""Fixtures of the client tests: a fresh app (enterprise) per test, so pub/sub channels (global to the
Redis server, whatever the logical database) never meet another test's or another engineer's."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import TEST_REDIS_URL


@pytest.fixture()
def app_id() -> str:
    return f"cl{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def events_url() -> str:
    return TEST_REDIS_URL


@pytest.fixture()
def drain(redis_client, settings, gate):
    """Persist every accepted turn now (``OutboxDrain`` in-process); returns its stats."""
    from worker import OutboxDrain  # wired: announces chat.paused / chat.resumable

    def run():
        return OutboxDrain(redis_client, settings=settings, consumer="clients-test").drain()

    return run


@pytest.fixture()
def open_payer(db, gate):
    """Open (and credit) the wallet of a payer: ``open_payer(level, app_id, payer_id, nanos)`` → wallet id."""
    from models.enums import PayerLevel
    from tests.committed import open_wallet
    from worker import credit_wallet  # wired: resumes paused chats, announces wallet.credited
    from worker.billing.payers import wallet_id_for

    def run(level: str, app_id: str, payer_id: str, nanos: int) -> str:
        wallet_id = wallet_id_for(level, enterprise_id=app_id, payer_id=payer_id)
        open_wallet(
            gate,
            wallet_id=wallet_id,
            enterprise_id=app_id if level == "app_usage" else None,
            owner_id=payer_id,
            level=PayerLevel(level),
        )
        if nanos:
            credit_wallet(gate, wallet_id=wallet_id, amount_nanos=nanos, idempotency_key=f"open-{wallet_id}")
        return wallet_id

    return run


@pytest.fixture()
def api(http_api):
    """FastAPI TestClient of the HTTP API, and a factory of owner keys: ``api.owner_key(app_id)``."""
    from tests.conftest import create_keys

    client = http_api()
    client.owner_key = lambda app_id: create_keys({"owner": ("owner", app_id)})["owner"]
    return client
