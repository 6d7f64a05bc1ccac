"""Alembic driven from settings: ``cdsfusion db upgrade`` and the readiness check."""

from __future__ import annotations

from functools import cache
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import Connection


def alembic_config(database_url: str, *, connection: Connection | None = None) -> Config:
    """An Alembic config pointing at the packaged ``migrations`` directory.

    Args:
        database_url: the database to migrate.
        connection: an open connection to run on instead (tests use this).
    """
    config = Config()
    config.set_main_option("script_location", str(resources.files("migrations")))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(database_url: str, revision: str = "heads") -> None:
    """Apply migrations up to ``revision`` (default: every head)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base`` removes everything)."""
    command.downgrade(alembic_config(database_url), revision)


@cache
def head_revision() -> str | None:
    """The newest revision(s) shipped with this code, comma-joined when branches exist."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return ",".join(sorted(script.get_heads())) or None


def current_revision(engine: Engine) -> str | None:
    """The revision(s) the database is at, or ``None`` when never migrated."""
    with engine.connect() as conn:
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads)) or None
