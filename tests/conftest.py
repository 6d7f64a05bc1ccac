"""Fixtures shared by every test tier.

PostgreSQL tests run against the server named by ``CDSFUSION_TEST_POSTGRES_URL`` (default:
this machine's ``postgresql+psycopg://postgres@127.0.0.1:5432/test``), each test run in a
database of its own created from it, so parallel runs never see each other. They skip with
a visible reason only when no PostgreSQL is reachable.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cds.core import migrate
from cds.core.db.session import make_engine

POSTGRES_URL = os.environ.get(
    "CDSFUSION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def threads_not_lingering() -> Iterator[None]:
    """Fail a test that leaves server threads running (as Celery's suite does)."""
    before = set(threading.enumerate())
    yield
    lingering = [
        t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
    ]
    for thread in lingering:
        thread.join(timeout=5)
    still = [t.name for t in lingering if t.is_alive()]
    assert not still, f"threads left running: {still}"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The admin URL of a reachable PostgreSQL, or skip."""
    engine = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at {make_url(POSTGRES_URL).host}: {exc.orig}")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for this test run; dropped afterwards."""
    name = f"cdsfusion_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'timeline.db'}"


@pytest.fixture(scope="session")
def migrated_postgres(postgres_url: str) -> Iterator[Engine]:
    """The run's PostgreSQL database at head, shared by repository tests."""
    migrate.upgrade(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated_sqlite(sqlite_url: str) -> Iterator[Engine]:
    migrate.upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    """Each test using this runs once per engine: embedded SQLite and PostgreSQL."""
    fixture = "migrated_sqlite" if request.param == "sqlite" else "migrated_postgres"
    engine: Engine = request.getfixturevalue(fixture)
    return engine


@pytest.fixture
def session(db_engine: Engine) -> Iterator[Session]:
    """A session in one outer transaction, rolled back after the test (as Dispatch does).

    Code under test may commit: its commits become savepoint releases inside the outer
    transaction, which is rolled back at the end, so tests never see each other's rows.
    """
    with db_engine.connect() as conn:
        outer = conn.begin()
        sess = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield sess
        finally:
            sess.close()
            outer.rollback()
