"""Alembic environment, bound to the one cdsfusion metadata.

Run through ``cdsfusion db upgrade`` (which builds the Alembic config from settings); a
connection may also be handed in through ``config.attributes["connection"]`` (tests).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cds.core.db.models import Base
from cds.core.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL given to Alembic")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported; run online")
run_migrations_online()
