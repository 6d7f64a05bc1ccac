"""Engine and session factory, configured once from settings in the entry point."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
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
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
    else:
        _ping_idle_connections(engine)
    return engine


#: A pooled PostgreSQL connection unused for longer than this is pinged before it is handed
#: out (HikariCP's ``aliveBypassWindowMs`` is the same idea, at 0.5 s).
PING_AFTER_IDLE_S = 1.0


def _ping_idle_connections(engine: Engine) -> None:
    """Hand out only live connections, without a round trip per checkout.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one extra round trip for every
    transaction, which on a busy path (a CDS Hooks call, an indexed DICOM batch) is a
    noticeable share of its cost. Here a connection is pinged only when it sat in the pool
    for more than :data:`PING_AFTER_IDLE_S` (a database restart or an idle timeout kills
    idle connections); a dead one is replaced, as SQLAlchemy does for ``DisconnectionError``
    raised at checkout. A connection that dies within the window fails its next statement,
    and the pool is then emptied of its siblings.
    """
    now = time.monotonic

    @event.listens_for(engine, "checkin")
    def _used(_dbapi_connection: Any, record: Any) -> None:
        record.info["cdsfusion_idle_since"] = now()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("cdsfusion_idle_since")
        if idle_since is not None and now() - idle_since <= PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("pooled connection is dead") from exc


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy drive transactions (pysqlite's own BEGIN handling is off).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: Execution option of a session that only reads (:func:`read_only`).
READ_ONLY = "cdsfusion_read_only"


def _sqlite_begin_immediate(connection: Any) -> None:
    # Take the write lock at BEGIN so concurrent writers queue instead of failing with
    # "database is locked" when a read transaction tries to upgrade. A read-only session
    # (``read_only``) begins deferred: in WAL mode it reads a snapshot without the lock, so
    # it never makes a writer wait (nor waits for one), and ``query_only`` makes any write
    # in it fail at once instead of upgrading.
    read_only = bool(connection.get_execution_options().get(READ_ONLY, False))
    info = connection.connection.info
    if info.get(READ_ONLY, False) != read_only:
        connection.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
        info[READ_ONLY] = read_only
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that do not expire objects on commit (results are read after commit)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def read_only(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that only reads; its transaction ends (rolled back) when the block ends.

    On SQLite it does not take the write lock (see ``_sqlite_begin_immediate``): a poller
    that runs while the DICOM writer commits batch after batch neither stalls the writer
    nor waits for it, and a write attempted in it fails (``attempt to write a readonly
    database``). Elsewhere it is a plain session.
    """
    with factory(execution_options={READ_ONLY: True}) as session:
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
