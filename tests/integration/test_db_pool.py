"""The PostgreSQL pool hands out live connections, pinging only those idle for a while."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from cds.core.db import session as db_session
from cds.core.db.session import make_engine

pytestmark = pytest.mark.integration


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_killed_while_idle_is_replaced(postgres_server_url: str) -> None:
    engine = make_engine(postgres_server_url, pool_size=1)
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    try:
        pid = _backend_pid(engine)
        with admin.connect() as conn:  # as a database restart or an idle timeout would
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        db_session.PING_AFTER_IDLE_S, saved = 0.0, db_session.PING_AFTER_IDLE_S
        try:
            assert _backend_pid(engine) != pid
        finally:
            db_session.PING_AFTER_IDLE_S = saved
    finally:
        engine.dispose()
        admin.dispose()


def test_a_connection_in_steady_use_is_not_pinged(postgres_server_url: str) -> None:
    engine = make_engine(postgres_server_url, pool_size=1)
    pings = 0
    original = engine.dialect.do_ping

    def counting_ping(dbapi_connection: Any) -> bool:
        nonlocal pings
        pings += 1
        return bool(original(dbapi_connection))

    engine.dialect.do_ping = counting_ping  # type: ignore[method-assign]
    try:
        for _ in range(20):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert pings <= 1  # at most the first checkout, not one per checkout
    finally:
        engine.dispose()
