"""A local OpenAI-compatible HTTP server for tests (127.0.0.1, no network): ``POST
/v1/chat/completions`` answers a chat completion with usage, and remembers what it answered.

Each answer's usage is deterministic: the n-th call (from 1) reports ``prompt_tokens = 40 × (number
of messages) + n``, ``completion_tokens = 10 + 3n`` and, every other call, 32 cached prompt tokens.
The calling agent is read from its system message (``AGENT=<name>``); an AG2 speaker-selection call
(its prompt lists every agent) is agent ``speaker_selection`` and answers the first agent listed."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    """Start with ``with FakeOpenAI(model) as server:``; ``server.base_url`` is the ``/v1`` root and
    ``server.calls`` the list of ``{"agent", "id", "model", "prompt_tokens", "completion_tokens",
    "cached_tokens"}`` answered, in order."""

    def __init__(self, model: str = "gpt-4o-mini-2024-07-18") -> None:
        self.model = model
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                self._json(outer.answer(body))

            def _json(self, payload):
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, body: dict) -> dict:
        messages = body["messages"]
        system = next((m.get("content") or "" for m in messages if m["role"] == "system"), "")
        system = system if isinstance(system, str) else json.dumps(system)
        match = re.search(r"AGENT=(\w+)", system)
        # AG2's speaker selection prompt lists every agent: name it after the selection, and its answer
        # (below) names the first agent listed, which AG2 then picks
        agent = "speaker_selection" if "role play game" in system else (match.group(1) if match else "?")
        with self.lock:
            n = len(self.calls) + 1
            call = {
                "agent": agent,
                "picks": match.group(1) if match else "?",
                "id": f"chatcmpl-{n:04d}",
                "model": self.model,
                "prompt_tokens": 40 * len(messages) + n,
                "completion_tokens": 10 + 3 * n,
                "cached_tokens": 32 if n % 2 == 0 else 0,
            }
            self.calls.append(call)
        return {
            "id": call["id"],
            "object": "chat.completion",
            "created": 1764590400,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": call["picks"] if agent == "speaker_selection" else f"{call['agent']} says step {n}",
                    },
                }
            ],
            "usage": {
                "prompt_tokens": call["prompt_tokens"],
                "completion_tokens": call["completion_tokens"],
                "total_tokens": call["prompt_tokens"] + call["completion_tokens"],
                "prompt_tokens_details": {"cached_tokens": call["cached_tokens"]},
            },
        }

    def __enter__(self) -> "FakeOpenAI":
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
