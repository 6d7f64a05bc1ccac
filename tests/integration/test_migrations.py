"""Migrations upgrade and downgrade on both engines, and match the models exactly."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from cds.core import migrate
from cds.core.db.models import Base
from cds.core.db.session import make_engine

pytestmark = pytest.mark.integration

TABLES = {
    "patients",
    "patient_identifiers",
    "patient_merges",
    "source_items",
    "timeline_events",
    "imaging_studies",
    "imaging_series",
    "imaging_instances",
    "bundles",
    "bundle_members",
    "scoring_jobs",
    "predictions",
    "outbox",
    "audit_log",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, sqlite_url: str) -> str:
    if request.param == "sqlite":
        return sqlite_url
    url: str = request.getfixturevalue("postgres_server_url")
    # A database of its own, so upgrading and downgrading does not disturb shared fixtures.
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = "cdsfusion_migr_" + request.node.name.replace("[", "_").replace("]", "").lower()[-20:]
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    request.addfinalizer(drop)
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def test_upgrade_to_head_then_downgrade_to_base(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        assert set(inspect(engine).get_table_names()) >= TABLES
        migrate.downgrade(fresh_url, "base")
        assert migrate.current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(fresh_url)  # and up again: downgrade left nothing behind
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()


def test_autogenerate_finds_no_difference(fresh_url: str) -> None:
    migrate.upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_held_items_lookup_uses_an_index(fresh_url: str) -> None:
    """Regression: attach_held_items scanned all of source_items (no index on patient_ref)."""
    migrate.upgrade(fresh_url)
    engine = make_engine(fresh_url)
    try:
        indexes = {
            i["name"]: i["column_names"] for i in inspect(engine).get_indexes("source_items")
        }
        assert indexes.get("ix_source_items_held") == ["patient_ref"]
        assert "," not in (migrate.head_revision() or ""), "migrations should have one head"
    finally:
        engine.dispose()
