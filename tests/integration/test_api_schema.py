"""Schemathesis runs the served OpenAPI spec against the app (ASGI, in-process) with real Redis and
PostgreSQL behind: generated requests, valid and not, with an owner key, an end-user key and an
admin key, must never get a server error (5xx) and must answer with the documented shapes."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import create_keys, seed_wallet

pytestmark = pytest.mark.integration

from api_stub.main import app  # noqa: E402

schema = schemathesis.openapi.from_asgi("/openapi.json", app)
# the /billing browser pages and the Stripe webhook are other modules' (their own tests)
schema = schema.exclude(path_regex=r"^/(billing|v1/stripe)")


@pytest.fixture()
def keys(http_api, gate, settings, monkeypatch):
    """The owner, end user and admin keys (the API's cached gate cleared around the test by ``http_api``)."""
    monkeypatch.setattr(settings, "rate_limit", "1000000/minute")
    seed_wallet(gate, "w1", "acme", "u1", 10**9)
    return list(
        create_keys({"owner": ("owner", "acme"), "end_user": ("end_user", "acme", "w1"), "admin": ("admin",)}).values()
    )


@schema.parametrize()
@hsettings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_spec_holds_and_nothing_is_a_server_error(case, keys):
    statuses = []
    for key in keys:
        # the spec's bearer scheme makes schemathesis generate an Authorization of its own: replace it
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        case.headers = headers | {"Authorization": f"Bearer {key}"}
        response = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
        statuses.append(response.status_code)
    assert 401 not in statuses  # the keys are valid: every request got past authentication
