"""SQLite transactions: writers take the lock at BEGIN, read-only sessions never take it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from cds.core.db.session import make_engine, make_session_factory, read_only, transaction


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")

    @event.listens_for(engine, "connect")
    def _short_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        # After make_engine's pragmas: a transaction that has to wait for the write lock
        # fails after 0.1 s ("database is locked") instead of 30 s.
        dbapi_connection.execute("PRAGMA busy_timeout=100")

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    yield engine
    engine.dispose()


def test_a_read_only_session_reads_while_a_writer_holds_the_lock(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with transaction(factory) as writer:
        writer.execute(text("INSERT INTO t VALUES (2)"))  # holds the write lock, uncommitted
        # a second writer waits for the lock, then gives up
        with pytest.raises(OperationalError, match="locked"), transaction(factory) as other:
            other.execute(text("SELECT 1"))
        with read_only(factory) as reader:
            assert reader.scalars(text("SELECT x FROM t ORDER BY x")).all() == [1]
    with read_only(factory) as reader:
        assert reader.scalars(text("SELECT x FROM t ORDER BY x")).all() == [1, 2]


def test_a_write_in_a_read_only_session_fails_and_writes_nothing(engine: Engine) -> None:
    factory = make_session_factory(engine)
    with pytest.raises(OperationalError, match="readonly"), read_only(factory) as reader:
        reader.execute(text("INSERT INTO t VALUES (3)"))
    with transaction(factory) as writer:  # the pooled connection writes again afterwards
        writer.execute(text("INSERT INTO t VALUES (4)"))
    with read_only(factory) as reader:
        assert reader.scalars(text("SELECT x FROM t ORDER BY x")).all() == [1, 4]
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.checkedin() == 1  # one connection served all of them
