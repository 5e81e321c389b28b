"""Column helpers shared by the record families: an aware timestamp, a BIGINT column, an enum
stored as ``VARCHAR``.  The
schema itself is created only by the Alembic migrations in ``models/migrations``."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import BigInteger, Column, DateTime, Enum


def ts(**kw) -> Column:
    """A ``TIMESTAMP WITH TIME ZONE`` column; ``kw`` as :class:`sqlalchemy.Column`."""
    return Column(DateTime(timezone=True), **kw)


def big(**kw) -> Column:
    """A ``BIGINT`` column (money in nano-USD, token counts); ``kw`` as :class:`sqlalchemy.Column`."""
    return Column(BigInteger, **kw)


def enum_type(enum: type[StrEnum], length: int) -> Enum:
    """The column type of an enum field: ``VARCHAR(length)`` in PostgreSQL, as the migrations create
    it (no PostgreSQL enum type, no CHECK constraint), holding the members' values; a row reads back
    as the member (``BillingMode.trial``), and a member or its plain value binds the same."""
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=False,
    )
