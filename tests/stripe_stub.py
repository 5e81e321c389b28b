"""A local stand-in for Stripe's API (an HTTP server on 127.0.0.1) and Stripe-style webhook signing,
for tests that must not touch the network.

    with StripeStub() as stub:
        client = stripe.StripeClient("sk_test_x", base_addresses={"api": stub.url})
        ...
        [req] = stub.requests          # method, path, headers, params (form-decoded, in order)

Answers ``POST /v1/checkout/sessions`` with a Checkout session object (ids ``cs_test_1``, ``_2``, …)
and everything else with Stripe's 404 error shape; ``stub.fail_next`` makes the next answer a 402
card error.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


def stripe_signature(payload: str, secret: str, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header as Stripe computes it: ``t=<ts>,v1=<hex HMAC-SHA256 of
    "<ts>.<payload>" keyed by the endpoint secret>`` (computed here, not by the stripe library)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def event_json(event_id: str, event_type: str, obj: dict[str, Any], *, created: int | None = None) -> str:
    """A Stripe event body (snapshot payload) around ``obj``, as Stripe sends it."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()) if created is None else created,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
            "data": {"object": obj},
        }
    )


@dataclass
class StubRequest:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    params: list[tuple[str, str]] = field(default_factory=list)

    @property
    def form(self) -> dict[str, str]:
        """The form-encoded body as a dict (keys such as ``line_items[0][price]``)."""
        return dict(self.params)


class StripeStub:
    """The server; ``url`` is its base address (``http://127.0.0.1:<port>``)."""

    def __init__(self) -> None:
        self.requests: list[StubRequest] = []
        self.fail_next = False
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                parts = urlsplit(self.path)
                req = StubRequest(
                    self.command,
                    parts.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    parse_qsl(body or parts.query, keep_blank_values=True),
                )
                status, payload = stub._route(req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_stub_{len(stub.requests)}")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _route(self, req: StubRequest) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append(req)
            n = len(self.requests)
            if self.fail_next:
                self.fail_next = False
                return 402, {
                    "error": {"type": "card_error", "code": "card_declined", "message": "Your card was declined."}
                }
        if req.method == "POST" and req.path == "/v1/checkout/sessions":
            form = req.form
            sid = f"cs_test_{n}"
            return 200, {
                "id": sid,
                "object": "checkout.session",
                "mode": form.get("mode"),
                "url": f"https://checkout.stripe.com/c/pay/{sid}",
                "status": "open",
                "payment_status": "unpaid",
                "client_reference_id": form.get("client_reference_id"),
            }
        return 404, {
            "error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({req.method}: {req.path})",
            }
        }

    def __enter__(self) -> "StripeStub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
