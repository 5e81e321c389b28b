"""``python -m benchmarks.soak [--rate N] [--duration S] [--fault kind@S ...] [--find-max]``.

Settings are read once and cached, and ``worker.celery_app`` binds its broker when imported: the
soak's ports are chosen and put into ``TOLLGATE_*`` here, before anything imports a ``worker``
module that reads them (the servers themselves start later, on these ports).
"""

from __future__ import annotations

import os
import sys

from worker.devtools.throwaway import free_port  # reads no settings

REDIS_PORT, PG_PORT = free_port(), free_port()
os.environ["TOLLGATE_REDIS_URL"] = os.environ["TOLLGATE_BROKER_URL"] = f"redis://127.0.0.1:{REDIS_PORT}/0"
os.environ["TOLLGATE_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:{PG_PORT}/tollgate"
os.environ.pop("TOLLGATE_PRICE_OVERRIDES_PATH", None)

from benchmarks.soak.run import main  # noqa: E402  (after the settings above)

sys.exit(main((REDIS_PORT, PG_PORT)))
