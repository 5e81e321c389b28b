"""Which failures the drain treats as transient (the batch stays pending) and which are an entry's
own (it is dead-lettered): fast, no services."""

from __future__ import annotations

import psycopg
import psycopg.errors as pg
import pytest
import redis
from sqlalchemy import exc as sa_exc

from worker.ledger.deadletter import identity, storable
from worker.transient import is_transient


def _wrapped(orig: BaseException, cls=sa_exc.DBAPIError) -> sa_exc.DBAPIError:
    return cls.instance("INSERT …", {}, orig, psycopg.Error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection refused"),
        psycopg.InterfaceError("connection closed"),
        pg.DeadlockDetected("deadlock"),
        pg.SerializationFailure("retry"),
        pg.AdminShutdown("shutting down"),
        pg.DiskFull("no space"),
        pg.LockNotAvailable("lock"),
        pg.TooManyConnections("full"),
        redis.ConnectionError("down"),
        redis.TimeoutError("slow"),
        sa_exc.TimeoutError("pool"),
    ],
)
def test_a_server_that_cannot_work_now_is_transient(error):
    assert is_transient(error)
    if isinstance(error, psycopg.Error):
        assert is_transient(_wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        pg.CharacterNotInRepertoire("NUL"),
        pg.StringDataRightTruncation("too long"),
        pg.CheckViolation("check"),
        pg.UniqueViolation("dup"),
        pg.ProgramLimitExceeded("index row too large"),
        pg.NumericValueOutOfRange("big"),
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        TypeError("a bug"),
        KeyError("x"),
        ValueError("bad"),
        UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogate"),
        redis.ResponseError("WRONGTYPE"),
    ],
)
def test_anything_else_is_the_entry_s_own(error):
    assert not is_transient(error)
    if isinstance(error, psycopg.Error):
        assert not is_transient(_wrapped(error))


def test_identity_and_storable_never_raise_on_what_was_stored():
    assert identity({"t": '[4, "t-1", "w1"]', "b": "12"}) == ("t-1", "w1", 12)
    assert identity({"t": '[4, null, ["w1"]]', "b": "x"}) == (None, None, 0)
    assert identity({"t": "[" * 100_000}) == (None, None, 0)
    assert identity({}) == (None, None, 0)
    assert [storable(v) for v in ("ok", "a\x00b", "t-\udcff", None, 5)] == [True, False, False, False, False]
