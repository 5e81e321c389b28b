"""The orchestrator HTTP API as a server runs it: ``app``, built by :func:`api_stub.app.create_app`.

Run: ``uvicorn api_stub.main:app --no-access-log`` (the Procfile's ``web``).  The routes live in
:mod:`api_stub.routes` (one module per resource); shared dependencies in :mod:`api_stub.deps`.
"""

from __future__ import annotations

import gc

from api_stub.app import create_app

app = create_app()
# what the imports and the app made lives as long as the process: out of the collector's sight, so a
# full collection walks only what requests left behind (about 200,000 objects here: ~100 ms of CPU
# each full collection, a stall of every request in flight; ~0 after the freeze, benchmarks/RESULTS.md)
gc.freeze()
