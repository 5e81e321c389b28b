"""/docs (Swagger UI) and /redoc work without a network (issue 17): every request the pages make goes
to the API server itself (any other host is aborted and would fail the test), and they render the
API's operations; the Authorize button takes a bearer key that Try it out then sends.  Debian's
chromium driven by Playwright, as tests/e2e/test_billing_page.py."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from api_stub.app import create_app
from tests.conftest import create_keys

pytestmark = pytest.mark.integration

OPERATIONS = sum(len(methods) for methods in create_app().openapi()["paths"].values())


@pytest.fixture(scope="module")
def offline_page(browser, server):
    """A page whose requests to any host but the server are aborted (and recorded)."""
    own = urlsplit(server).netloc
    ctx = browser.new_context(base_url=server, viewport={"width": 1360, "height": 900})
    outside: list[str] = []

    def route(r):
        if urlsplit(r.request.url).netloc == own or r.request.url.startswith("data:"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort("internetdisconnected")

    ctx.route("**/*", route)
    page = ctx.new_page()
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    yield page, outside
    ctx.close()


def test_swagger_ui_renders_every_operation_offline_and_authorize_sends_the_key(offline_page, db):
    api_keys = create_keys({"admin": ("admin",)})
    page, outside = offline_page
    page.goto("/docs")
    page.wait_for_selector(".opblock", timeout=20_000)
    assert page.locator(".opblock").count() == OPERATIONS
    assert "Meter and bill the tokens" in page.inner_text(".information-container")
    page.click("button.authorize")
    page.fill(".modal-ux input[type=text], .modal-ux input[type=password]", api_keys["admin"])
    page.click(".modal-ux button.authorize")
    page.click(".modal-ux button.btn-done")
    op = page.locator(".opblock", has=page.locator(".opblock-summary-path[data-path='/v1/analytics/rollups']"))
    op.locator(".opblock-summary-control").click()
    op.locator("button.try-out__btn").click()
    op.locator("input[placeholder='period']").fill("2026-11")
    op.locator("input[placeholder='enterprise_id']").fill("app-7")
    with page.expect_response(lambda r: "/v1/analytics/rollups" in r.url) as answer:
        op.locator("button.execute").click()
    assert answer.value.request.headers["authorization"] == f"Bearer {api_keys['admin']}"
    assert answer.value.status == 200, answer.value.text()  # the admin key was accepted
    assert outside == [] and page.errors == []


def test_redoc_renders_offline(offline_page):
    page, outside = offline_page
    page.goto("/redoc")
    page.wait_for_selector("[data-section-id^='operation/']", timeout=20_000)
    sections = page.eval_on_selector_all(
        "[data-section-id^='operation/']", "els => [...new Set(els.map(e => e.dataset.sectionId))]"
    )
    assert len(sections) == OPERATIONS, sections
    assert outside == [] and page.errors == []
