"""Column helpers shared by the record families: an aware timestamp and a BIGINT column.  The
schema itself is created only by the Alembic migrations in ``models/migrations``."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime


def ts(**kw) -> Column:
    """A ``TIMESTAMP WITH TIME ZONE`` column; ``kw`` as :class:`sqlalchemy.Column`."""
    return Column(DateTime(timezone=True), **kw)


def big(**kw) -> Column:
    """A ``BIGINT`` column (money in nano-USD, token counts); ``kw`` as :class:`sqlalchemy.Column`."""
    return Column(BigInteger, **kw)
