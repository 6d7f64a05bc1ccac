"""Engine and session factory, configured once from settings in the entry point."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def make_engine(database_url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine for the timeline database.

    ``hide_parameters`` keeps bound values (names, MRNs) out of SQLAlchemy's log lines and
    exception messages. SQLite gets WAL, foreign keys, a busy timeout and
    ``synchronous=FULL``, so a committed row survives power loss, which is the promise made
    when an item is acknowledged.

    Args:
        database_url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        pool_size: connections kept open on PostgreSQL. Defaults to 10.
    """
    url = make_url(database_url)
    kwargs: dict[str, Any] = {"hide_parameters": True, "future": True}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy drive transactions (pysqlite's own BEGIN handling is off).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock at BEGIN so concurrent writers queue instead of failing with
    # "database is locked" when a read transaction tries to upgrade.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that do not expire objects on commit (results are read after commit)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def commit_waits_for_flush(session: Session, wait: bool) -> None:
    """Whether this transaction's commit waits for the database's durable write.

    On PostgreSQL ``wait=False`` sets ``synchronous_commit`` off for the current transaction
    only (``SET LOCAL``): the commit returns before its WAL is flushed, and a database crash
    may lose the last fraction of a second of such commits (never corrupt anything). Only
    for records whose loss is harmless; ``wait=True`` restores the default for a transaction
    that goes on to write something that must survive. SQLite is left as configured.
    """
    if session.get_bind().dialect.name == "postgresql":
        value = "DEFAULT" if wait else "OFF"
        session.execute(text(f"SET LOCAL synchronous_commit TO {value}"))
