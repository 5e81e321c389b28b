"""What every e2e module shares, started once for the package (``scope="package"``: stopped after
its last test, before the rest of the suite): one headless chromium (Playwright) and one
``uvicorn api_stub.main:app`` on the test database.  Each test still opens its own browser context
(own cookies and storage), so sharing the browser shares no state between tests; a module that needs
a server configured otherwise (``test_billing_attention.py``: Stripe) defines its own ``server``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, _env, free_port, wait_healthy

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def start_server(env: dict[str, str] | None = None):
    """``uvicorn api_stub.main:app`` on a free loopback port with ``_env()`` plus ``env``; yields
    its base URL (``http://127.0.0.1:<port>``) once ``/healthz`` answers, terminates it afterwards.
    Raises RuntimeError (the server's output) when it does not come up."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api_stub.main:app", "--host", "127.0.0.1", "--port", str(port)]
        + ["--log-level", "warning"],
        cwd=REPO,
        env=_env() | (env or {}),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base)
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="package")
def server(database_url):
    """``uvicorn api_stub.main:app`` on a free loopback port (a subprocess on the test database)."""
    yield from start_server()


@pytest.fixture(scope="package")
def browser():
    """One headless Debian chromium for every e2e test (tests open their own contexts)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "run scripts/browser.sh (make install-test) to install chromium"
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()
