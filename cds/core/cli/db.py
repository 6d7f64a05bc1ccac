"""``cdsfusion db``: Alembic migrations driven by settings."""

from __future__ import annotations

import click

from cds.core import migrate
from cds.core.cli.common import load_settings
from cds.core.db.session import make_engine


@click.group()
def db() -> None:
    """Database migrations (Alembic, bound to the one cdsfusion schema)."""


@db.command()
@click.argument("revision", default="heads")
def upgrade(revision: str) -> None:
    """Upgrade the database to REVISION (default: the newest)."""
    settings = load_settings()
    migrate.upgrade(settings.database_url, revision)
    click.echo(f"database at {migrate.head_revision() if revision == 'heads' else revision}")


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Downgrade the database to REVISION ('base' removes every table)."""
    settings = load_settings()
    migrate.downgrade(settings.database_url, revision)
    click.echo(f"database at {revision}")


@db.command()
def current() -> None:
    """Print the database's revision and the code's head revision."""
    settings = load_settings()
    engine = make_engine(settings.database_url)
    try:
        click.echo(f"database: {migrate.current_revision(engine)}")
        click.echo(f"code head: {migrate.head_revision()}")
    finally:
        engine.dispose()
