"""Schemathesis runs the served OpenAPI spec against the app (ASGI, in-process) with real Redis and
PostgreSQL behind: generated requests, valid and not, with an owner key, an end-user key and an
admin key, must never get a server error (5xx) and must answer with the documented shapes."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings as hsettings
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.checks import not_a_server_error

from worker.db import session_scope
from worker.ledger.accounts import credit_wallet, open_wallet

pytestmark = pytest.mark.integration

from api_stub.main import app  # noqa: E402

schema = schemathesis.openapi.from_asgi("/openapi.json", app)
# the /billing browser pages and the Stripe webhook are other modules' (their own tests)
schema = schema.exclude(path_regex=r"^/(billing|v1/stripe)")


@pytest.fixture()
def keys(db, redis_client, gate, settings, monkeypatch):
    from api_stub import deps
    from models.enums import ApiRole
    from worker.access.apikeys import create_key

    monkeypatch.setattr(settings, "rate_limit", "1000000/minute")
    deps.get_gate.cache_clear()
    open_wallet(gate, wallet_id="w1", enterprise_id="acme", owner_id="u1")
    credit_wallet(gate, wallet_id="w1", amount_nanos=10**9, idempotency_key="open-w1")
    with session_scope() as session:
        created = [create_key(session, role=ApiRole.owner, enterprise_id="acme"),
                   create_key(session, role=ApiRole.end_user, enterprise_id="acme", wallet_id="w1"),
                   create_key(session, role=ApiRole.admin)]
    yield created
    deps.get_gate.cache_clear()


@schema.parametrize()
@hsettings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_spec_holds_and_nothing_is_a_server_error(case, keys):
    statuses = []
    for key in keys:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"},
                                          checks=[not_a_server_error, response_schema_conformance])
        statuses.append(response.status_code)
    assert 401 not in statuses  # the keys are valid: every request got past authentication
