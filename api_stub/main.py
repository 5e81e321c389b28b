"""The orchestrator HTTP API as a server runs it: ``app``, built by :func:`api_stub.app.create_app`.

Run: ``uvicorn api_stub.main:app --no-access-log`` (the Procfile's ``web``).  The routes live in
:mod:`api_stub.routes` (one module per resource); shared dependencies in :mod:`api_stub.deps`.
"""

from __future__ import annotations

import gc

from api_stub.app import create_app

#: second-generation collections between two full collections (CPython's default 10)
FULL_COLLECTION_EVERY = 100

app = create_app()
# what the imports and the app made lives as long as the process: out of the collector's sight, so a
# full collection walks only what requests left behind (about 200,000 objects here: ~100 ms of CPU
# each full collection, a stall of every request in flight; ~0 after the freeze, benchmarks/RESULTS.md)
gc.freeze()
# the collector's full collections: after the freeze the "long-lived objects grew by 25 %" guard no
# longer holds them back (the frozen objects are not counted), so one ran every 10 second-generation
# collections (about every 0.5 s at 6,000 requests/s), walking the ~20,000 objects made since the
# freeze (lazy imports, caches, requests in flight): 9–74 ms each, every request in flight waiting
# (the p99 of POST /v1/turns, benchmarks/RESULTS.md).  100 instead of 10: one every few seconds;
# cyclic garbage is still collected by the younger generations or the next full collection.
gc.set_threshold(gc.get_threshold()[0], gc.get_threshold()[1], FULL_COLLECTION_EVERY)
