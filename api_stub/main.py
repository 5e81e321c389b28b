"""The orchestrator HTTP API as a server runs it: ``app``, built by :func:`api_stub.app.create_app`.

Run: ``uvicorn api_stub.main:app --no-access-log`` (the Procfile's ``web``).  The routes live in
:mod:`api_stub.routes` (one module per resource); shared dependencies in :mod:`api_stub.deps`.
"""

from __future__ import annotations

from api_stub.app import create_app

app = create_app()
