"""Database engine and sessions.  The caller owns the transaction: services take a session and never
commit inside themselves; :func:`session_scope` commits once at the end or rolls back."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlmodel import Session, SQLModel

from worker.settings import get_settings

log = logging.getLogger(__name__)


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
def session_scope(engine: Engine | Connection | None = None) -> Iterator[Session]:
    """A session whose transaction commits when the block ends and rolls back on an exception.
    ``engine``: default the settings' engine; a ``Connection`` already in a transaction (a test's
    rolled-back ``session`` fixture) gets a savepoint of it instead (commit releases it).
    An error of the commit itself propagates as it is: one from an ``after_commit`` hook (the rows
    are committed by then), or the database's (closing the session rolls back)."""
    bind = engine or get_engine()
    if isinstance(bind, Connection):
        opened = Session(bind, expire_on_commit=False, join_transaction_mode="create_savepoint")
    else:
        opened = Session(bind, expire_on_commit=False)
    with opened as session:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()


_AFTER_COMMIT = "tollgate.after_commit"


def after_commit(session: Session, hook: Callable[[], None]) -> None:
    """Run ``hook()`` once the session's outermost transaction has committed (Redis writes, Celery
    sends: side effects that must never see a row that was rolled back); drop it if that
    transaction rolls back instead, or if the savepoint (``session.begin_nested()``) it was added
    in rolls back.  Hooks run in the order added; when one raises, the others still run and the
    first error is re-raised from ``commit()`` (the rows are committed by then).
    """
    hooks = session.info.get(_AFTER_COMMIT)
    if hooks is None:
        hooks = session.info[_AFTER_COMMIT] = []
        event.listen(session, "after_commit", _run_after_commit)
        event.listen(session, "after_transaction_end", _drop_after_rollback)
        event.listen(session, "after_soft_rollback", _drop_after_savepoint_rollback)
    hooks.append((session.get_nested_transaction(), hook))


def _run_after_commit(session: Session) -> None:
    if session.in_nested_transaction():  # SQLAlchemy fires after_commit on a savepoint's release too
        return
    hooks = session.info.get(_AFTER_COMMIT) or []
    pending, hooks[:] = [hook for _savepoint, hook in hooks], []
    first: BaseException | None = None
    for hook in pending:
        try:
            hook()
        except Exception as exc:  # the rest must still run
            log.error("after-commit hook %r failed", hook, exc_info=True)
            first = first or exc
    if first is not None:
        raise first


def after_commit_in_transaction(session: Session, work: Callable[[Session], None]) -> None:
    """Once ``session``'s outermost transaction has committed, run ``work(follow_up)`` in a
    transaction of its own (one :func:`session_scope`, committed when ``work`` returns, rolled back
    if it raises): follow-up work a service sends from inside the caller's transaction that must
    read or write after that commit (mirror a wallet's mode in the gate under its advisory lock,
    mark an alert sent once it was published).  On the caller's bind (its engine; in the tests'
    ``session`` fixture, its connection, so the follow-up sees what the test wrote).  Dropped, like
    :func:`after_commit`, if the caller's transaction rolls back; its errors are raised from that
    ``commit()`` likewise."""
    bind = session.get_bind()

    def run() -> None:
        with session_scope(bind) as follow_up:
            work(follow_up)

    after_commit(session, run)


def _within(savepoint: Any, transaction: Any) -> bool:
    """``savepoint`` (a SessionTransaction, or None outside any) is ``transaction`` or nested in it."""
    while savepoint is not None:
        if savepoint is transaction:
            return True
        savepoint = savepoint.parent
    return False


def _drop_after_savepoint_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.nested:  # a savepoint rolled back: its hooks (and its children's) go with it
        hooks = session.info.get(_AFTER_COMMIT, [])
        hooks[:] = [(sp, hook) for sp, hook in hooks if not _within(sp, previous_transaction)]


def _drop_after_rollback(session: Session, transaction: Any) -> None:
    if transaction.parent is None:  # the outermost transaction ended without a commit (or after one)
        session.info.get(_AFTER_COMMIT, []).clear()


def table_of(model: type[SQLModel]) -> Table:
    """The Core ``Table`` of a SQLModel table class (``Model.__table__``), for Core statements
    (``insert(...).on_conflict_do_update``, ``update(...)``) that need its columns as ``table.c.name``.

    SQLModel's metaclass sets ``__table__`` on every ``table=True`` class but does not declare it to
    type checkers; this is the one place that reads it.  Raises ``TypeError`` for a class that is not
    a table (no ``__table__``).
    """
    table = getattr(model, "__table__", None)
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a SQLModel table class (table=True)")
    return table
