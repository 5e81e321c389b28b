"""Which failures are PostgreSQL's or Redis' own (down, connection lost, deadlock, shutdown) rather
than a piece of data's: the one rule, used by the drain (nothing is dead-lettered for such a failure,
:mod:`worker.ledger.deadletter`) and by the Celery tasks that only kick work kept elsewhere
(:mod:`worker.celery_app`: such a task ends with a warning instead of a failure)."""

from __future__ import annotations

import psycopg
import redis
from sqlalchemy import exc as sa_exc

#: failures of the connection, not of an entry: the batch stays pending and is retried as a whole
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # connection pool exhausted
    psycopg.OperationalError,  # connection lost, server shutting down, deadlock, serialization failure
    psycopg.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
)

#: SQLSTATE classes of a server that cannot work now, whatever the data: connection exception,
#: transaction rollback (deadlock, serialization), insufficient resources, operator intervention
#: (shutdown, cancel), system error; and lock_not_available.  Everything else PostgreSQL reports
#: (data exceptions, integrity, program limits such as an index row too large) is the entry's own.
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
TRANSIENT_SQLSTATES = ("55P03",)


def is_transient(exc: BaseException) -> bool:
    """True for a failure of PostgreSQL or Redis themselves (down, connection lost, deadlock,
    serialization failure, pool timeout, disk full): nothing is dead-lettered for it.  Any other
    exception, whatever its class, is the entry's own; a PostgreSQL error is judged by its SQLSTATE
    (psycopg files e.g. ``ProgramLimitExceeded`` under OperationalError, yet it is the data's)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(cause, psycopg.Error) and sqlstate:
        return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES
    return isinstance(exc, TRANSIENT_ERRORS)
