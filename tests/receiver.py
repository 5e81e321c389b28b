"""A webhook receiver for tests: an ``http.server`` on 127.0.0.1 in a thread that records every POST
and answers with scripted statuses (then 200)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """One request as the receiver saw it (header names lower-cased; the raw body)."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int


@dataclass
class Receiver:
    """``url`` to POST to; ``statuses`` are answered in order, then 200; ``requests`` grows."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    event: threading.Event = field(default_factory=threading.Event)

    def delivered(self) -> list[Received]:
        """Requests answered 2xx."""
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer, threading.Thread]:
    """Start a receiver on a free loopback port."""
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with receiver.lock:
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append(
                    Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status)
                )
            if 300 <= status < 400:
                self.send_response(status)
                self.send_header("Location", "/elsewhere")
            else:
                self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            receiver.event.set()

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tollgate"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return receiver, server, thread
