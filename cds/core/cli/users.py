"""``cdsfusion users``: accounts of the audit review pages (there is no default password)."""

from __future__ import annotations

import sys

import click


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _create(username: str, role_name: str, from_stdin: bool) -> None:
    from cds.core.cli.common import load_settings
    from cds.core.db.models import ReviewRole
    from cds.core.db.session import make_engine, make_session_factory, transaction
    from cds.core.errors import ConflictError, MalformedInputError
    from cds.review.passwords import WeakPasswordError
    from cds.review.users import create_local_user

    settings = load_settings()
    password = _password(from_stdin)
    engine = make_engine(settings.database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            user = create_local_user(
                session=session,
                username=username,
                password=password,
                role=ReviewRole(role_name),
                actor="system:cli",
            )
            user_id = user.id
    except (MalformedInputError, ConflictError, WeakPasswordError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(f"created {role_name} {username} ({user_id})")


@click.group()
def users() -> None:
    """Accounts of the audit review pages (/audit/)."""


@users.command("create-admin")
@click.argument("username")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (one line)."
)
def create_admin(username: str, password_stdin: bool) -> None:
    """Create an admin account; the password is asked for twice (12+ characters)."""
    _create(username, "admin", password_stdin)


@users.command("create")
@click.argument("username")
@click.option(
    "--role",
    type=click.Choice(["clinician", "auditor", "admin"]),
    required=True,
    help="What the account may see and do.",
)
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (one line)."
)
def create(username: str, role: str, password_stdin: bool) -> None:
    """Create a local account with a role; the password is asked for twice."""
    _create(username, role, password_stdin)
