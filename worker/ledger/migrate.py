"""Schema management through Alembic (no ``create_all``): create the database if missing, upgrade."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from worker.settings import get_settings


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic config pointing at ``models/migrations`` and ``database_url`` (default: settings)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("models").joinpath("migrations")))
    cfg.set_main_option("sqlalchemy.url", (database_url or get_settings().database_url).replace("%", "%%"))
    return cfg


def create_database_if_missing(database_url: str) -> bool:
    """Create the database named in ``database_url`` (connecting to ``postgres``); True if created."""
    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": url.database}).first()
            if exists:
                return False
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
            return True
    finally:
        admin.dispose()


def recreate_database(database_url: str) -> None:
    """Drop (closing its connections) and re-create the database of ``database_url``, then migrate it
    to head.  For tests and benchmarks only: it destroys every row."""
    url = make_url(database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    finally:
        admin.dispose()
    upgrade(database_url)


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Create the database if needed and run ``alembic upgrade <revision>``."""
    url = database_url or get_settings().database_url
    create_database_if_missing(url)
    command.upgrade(alembic_config(url), revision)
