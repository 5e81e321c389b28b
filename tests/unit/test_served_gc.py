"""The served app's collector settings (``api_stub.main``): the import-time objects frozen out of the
collector's sight, and full collections at most once per ``FULL_COLLECTION_EVERY`` second-generation
collections (a full collection stalls every request in flight: ``benchmarks/RESULTS.md``, HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO


def test_served_app_freezes_imports_and_spaces_full_collections():
    # a fresh interpreter: the test process's own collector settings are not the server's
    probe = (
        "import gc, json; import api_stub.main as m; "
        "print(json.dumps([gc.get_threshold(), gc.get_freeze_count(), m.FULL_COLLECTION_EVERY]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    threshold, frozen, every = json.loads(out.stdout.strip().splitlines()[-1])
    assert every == 100
    assert threshold == [700, 10, 100]  # CPython's first two thresholds kept; full collections 10x rarer
    assert frozen > 50_000  # the imports and the app (about 200,000 objects)
