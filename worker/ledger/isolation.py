"""Per-app usage schemas: an app that needs isolation keeps its usage events in its own schema.

``usage_event`` is partitioned by month (``worker.ledger.partitions``; the partitions belong to ``usage_row``,
the table under the ``usage_event`` view since migration 0019).  Isolating an app partitions each
of its months, and the DEFAULT partition, by LIST (``enterprise_id``): the app's rows go to
``<schema>.usage_event_YYYY_MM`` (``<schema>.usage_event_default``), every other app's to a DEFAULT
sub-partition ``usage_event_YYYY_MM_shared`` in ``public``.  PostgreSQL routes each row by its
``enterprise_id``, so the drain's one INSERT and every reader's query on ``usage_event`` stay as they
are, and the exactly-once key (``usage_turn_key``, unique per turn_id in its (enterprise_id, wallet_id)
scope, unpartitioned) stays in the same transaction.  The app's schema
can then be granted to its own role, dumped (``pg_dump -n``) or moved on its own.

Isolation is per schema in the one database: a separate database per app would put the usage row
and its turn key (and the ledger debit) in two transactions, and a crash between them would lose or
double-count a turn.

:func:`isolate_app` moves the app's existing rows into its schema, in one transaction that holds
an exclusive lock on ``usage_event`` (drains wait; the gate is not affected).
:func:`worker.ledger.partitions.ensure_partitions` creates the months ahead already split for every
isolated app; retention drops a month with its apps' sub-partitions.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

from sqlalchemy import CursorResult, select, text
from sqlmodel import Session, col

from models.wallet import Enterprise
from worker.errors import InputError

log = logging.getLogger(__name__)

#: a schema name tollgate will create: lower case, digits and '_', at most 63 bytes (PostgreSQL's limit)
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
_RESERVED = {"public", "information_schema"}


class IsolationError(InputError, ValueError):
    """An app cannot be isolated as asked (unknown app, bad or taken schema name); names the field."""


def default_schema(enterprise_id: str) -> str:
    """``app_<enterprise_id>`` in lower case with every other character as '_' (cut to 63)."""
    return ("app_" + re.sub(r"[^a-z0-9_]", "_", enterprise_id.lower()))[:63]


def isolated_apps(session: Session) -> dict[str, str]:
    """``{enterprise_id: schema}`` of every isolated app."""
    rows = session.execute(
        select(col(Enterprise.id), col(Enterprise.usage_schema)).where(col(Enterprise.usage_schema).is_not(None))
    )
    return {e: s for e, s in rows}


def _literal(session: Session, value: str) -> str:
    """``value`` as a SQL string literal, quoted by PostgreSQL (DDL takes no bind parameters)."""
    return session.execute(text("SELECT quote_literal(:v)"), {"v": value}).scalar_one()


def _children(session: Session, parent: str) -> list[tuple[str, str, str]]:
    """Partitions of ``parent`` (a table in ``public``): ``(schema, name, bound)``, ``bound`` as
    PostgreSQL prints it (``FOR VALUES …`` or ``DEFAULT``)."""
    return list(
        session.execute(
            text(
                "SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE i.inhparent = CAST(:p AS regclass) ORDER BY c.relname"
            ),
            {"p": f'public."{parent}"'},
        ).all()
    )


def _is_split(session: Session, name: str) -> bool:
    return session.execute(
        text(
            "SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relname = :n"
        ),
        {"n": name},
    ).scalar_one()


def split_partition(session: Session, name: str, bound: str, apps: dict[str, str]) -> None:
    """Give each app of ``apps`` (``{enterprise_id: schema}``) its own sub-partition of the
    ``usage_event`` partition ``name`` (``bound``: its ``FOR VALUES …`` or ``DEFAULT``), moving its
    rows there.  A plain partition is first turned into one partitioned by LIST (enterprise_id)
    whose DEFAULT sub-partition ``<name>_shared`` holds the other apps' rows.  Apps that already
    have their sub-partition are skipped.  Does not commit."""
    shared = f"{name}_shared"
    if not _is_split(session, name):
        session.execute(text(f'ALTER TABLE usage_row DETACH PARTITION "{name}"'))
        session.execute(text(f'ALTER TABLE "{name}" RENAME TO "{shared}"'))
        session.execute(text(f'CREATE TABLE "{name}" PARTITION OF usage_row {bound} PARTITION BY LIST (enterprise_id)'))
        session.execute(text(f'ALTER TABLE "{name}" ATTACH PARTITION "{shared}" DEFAULT'))
    have = {schema for schema, _n, _b in _children(session, name)}
    todo = {e: s for e, s in apps.items() if s not in have}
    if not todo:
        return
    # a value may not get its own sub-partition while the DEFAULT one holds its rows: take the
    # DEFAULT one out, move the apps' rows, put it back (PostgreSQL checks its constraint then)
    session.execute(text(f'ALTER TABLE "{name}" DETACH PARTITION "{shared}"'))
    for enterprise_id, schema in sorted(todo.items()):
        value = _literal(session, enterprise_id)
        session.execute(text(f'CREATE TABLE "{schema}"."{name}" PARTITION OF "{name}" FOR VALUES IN ({value})'))
        # a DML statement's result is a CursorResult (Session.execute types it as a plain Result)
        moved = cast(
            CursorResult[Any],
            session.execute(
                text(
                    f'WITH gone AS (DELETE FROM "{shared}" WHERE enterprise_id = {value} RETURNING *) '
                    f'INSERT INTO "{schema}"."{name}" SELECT * FROM gone'
                )
            ),
        ).rowcount
        log.info("usage_event: %s of %s moved to %s.%s", moved, enterprise_id, schema, name)
    session.execute(text(f'ALTER TABLE "{name}" ATTACH PARTITION "{shared}" DEFAULT'))


def isolate_app(session: Session, enterprise_id: str, schema: str | None = None) -> str:
    """Keep app ``enterprise_id``'s usage events in schema ``schema`` (default
    :func:`default_schema`), created if missing: every existing month and the DEFAULT partition get
    the app's sub-partition there, its rows moved in.  Idempotent for the same schema.  Takes an
    ACCESS EXCLUSIVE lock on ``usage_event`` until the caller commits.

    Returns the schema.  Raises IsolationError naming ``enterprise_id`` (unknown app, or already in
    another schema) or ``schema`` (not a plain lower-case name, reserved, or another app's)."""
    app = session.get(Enterprise, enterprise_id, with_for_update=True)
    if app is None:
        raise IsolationError(f"enterprise_id: unknown app {enterprise_id!r}", field="enterprise_id")
    schema = schema or default_schema(enterprise_id)
    if not _SCHEMA.match(schema) or schema in _RESERVED or schema.startswith("pg_"):
        raise IsolationError(
            f"schema: {schema!r} must match [a-z_][a-z0-9_]{{0,62}} and not be public, information_schema or pg_*",
            field="schema",
        )
    if app.usage_schema not in (None, schema):
        raise IsolationError(
            f"enterprise_id: {enterprise_id!r} already keeps its usage in {app.usage_schema!r}", field="enterprise_id"
        )
    owner = session.execute(
        select(col(Enterprise.id)).where(col(Enterprise.usage_schema) == schema)
    ).scalar_one_or_none()
    if owner not in (None, enterprise_id):
        raise IsolationError(f"schema: {schema!r} already holds app {owner!r}", field="schema")
    session.execute(text("LOCK TABLE usage_row IN ACCESS EXCLUSIVE MODE"))
    session.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    for part_schema, name, bound in _children(session, "usage_row"):
        if part_schema == "public":
            split_partition(session, name, bound, {enterprise_id: schema})
    app.usage_schema = schema
    session.add(app)
    session.flush()
    return schema
