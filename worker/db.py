"""Database engine and sessions.  The caller owns the transaction: services take a session and never
commit inside themselves; :func:`session_scope` commits once at the end or rolls back."""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Iterator

from sqlalchemy import Engine, create_engine
from sqlmodel import Session

from worker.settings import get_settings


@lru_cache(maxsize=4)
def engine_for(url: str) -> Engine:
    """A pooled engine for ``url`` (one per URL per process)."""
    # a lock wait longer than 30 s fails the transaction (the drain's entries stay pending and are
    # retried) instead of holding a worker forever
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"options": "-c lock_timeout=30000"}
    )


def get_engine() -> Engine:
    """The engine of ``settings.database_url``."""
    return engine_for(get_settings().database_url)


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session whose transaction commits when the block ends and rolls back on an exception."""
    with Session(engine or get_engine(), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
