"""``cdsfusion audit``: verify the tamper-evident audit log."""

from __future__ import annotations

import click

from cds.core.cli.common import load_settings
from cds.core.db.session import make_engine, make_session_factory
from cds.core.repository.audit import verify_chain


@click.group()
def audit() -> None:
    """The append-only, hash-chained audit log."""


@audit.command()
def verify() -> None:
    """Walk the audit chain; exit 1 and name the first broken entry if it was tampered with."""
    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine)() as session:
            report = verify_chain(session=session)
    finally:
        engine.dispose()
    if report.ok:
        click.echo(f"audit chain intact: {report.entries} entries")
        return
    click.echo(
        f"audit chain BROKEN at entry {report.first_bad_id}: {report.reason} "
        f"({report.entries} entries verified before it)",
        err=True,
    )
    raise SystemExit(1)
