"""Fixtures shared by every test tier.

PostgreSQL tests run against the server named by ``CDSFUSION_TEST_POSTGRES_URL`` (default:
this machine's ``postgresql+psycopg://postgres@127.0.0.1:5432/test``), each test module in a
database of its own cloned from one migrated template, so neither parallel runs nor test
modules see each other's rows. They skip with
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


def _create_database(admin_url: str, name: str, template: str | None = None) -> str:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            clause = f' TEMPLATE "{template}"' if template else ""
            conn.execute(text(f'CREATE DATABASE "{name}"{clause}'))
    finally:
        admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def _drop_database(admin_url: str, name: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_template(postgres_server_url: str) -> Iterator[str]:
    """A database migrated to head once per run, cloned for each test module."""
    name = f"cdsfusion_tmpl_{uuid.uuid4().hex[:12]}"
    url = _create_database(postgres_server_url, name)
    migrate.upgrade(url)
    make_engine(url).dispose()
    try:
        yield name
    finally:
        _drop_database(postgres_server_url, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'timeline.db'}"


@pytest.fixture(scope="module")
def migrated_postgres(postgres_server_url: str, postgres_template: str) -> Iterator[Engine]:
    """A PostgreSQL database at head for one test module (a clone of the template).

    Each module gets its own, so rows one module commits are never seen by another.
    """
    name = f"cdsfusion_mod_{uuid.uuid4().hex[:12]}"
    url = _create_database(postgres_server_url, name, template=postgres_template)
    engine = make_engine(url)
    yield engine
    engine.dispose()
    _drop_database(postgres_server_url, name)


@pytest.fixture
def fresh_postgres_url(postgres_server_url: str, postgres_template: str) -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own (for tests that run processes)."""
    name = f"cdsfusion_fresh_{uuid.uuid4().hex[:12]}"
    url = _create_database(postgres_server_url, name, template=postgres_template)
    yield url
    _drop_database(postgres_server_url, name)


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
