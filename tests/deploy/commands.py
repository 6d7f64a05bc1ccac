"""The ``cdsfusion`` command tree, walked the way the console script resolves an argv."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import click

from cds.core.cli.main import cli


def resolve(argv: Sequence[str]) -> tuple[list[str], click.Command, list[str]]:
    """Split ``cdsfusion sub [subsub] args...`` into (command path, command, its arguments).

    Raises:
        LookupError: ``argv`` does not start with ``cdsfusion`` or names no subcommand.
    """
    if not argv or argv[0] != "cdsfusion":
        raise LookupError(f"not a cdsfusion command: {list(argv)}")
    command: click.Command = cli
    path: list[str] = []
    rest = list(argv[1:])
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        with click.Context(command, info_name=" ".join(["cdsfusion", *path])) as ctx:
            sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise LookupError(f"cdsfusion {' '.join([*path, rest[0]])}: no such command")
        path.append(rest.pop(0))
        command = sub
    if isinstance(command, click.Group):
        raise LookupError(f"cdsfusion {' '.join(path)}: a group, not a command")
    return path, command, rest


def walk(
    command: click.Command = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command of the tree with its path (``("db", "upgrade")``), groups included."""
    yield path, command
    if isinstance(command, click.Group):
        with click.Context(command, info_name="cdsfusion") as ctx:
            names = command.list_commands(ctx)
            children = [(name, command.get_command(ctx, name)) for name in names]
        for name, child in children:
            if child is not None:
                yield from walk(child, (*path, name))


def option_envvars() -> set[str]:
    """Environment variables that ``cdsfusion`` options read (``envvar=`` on an option)."""
    found: set[str] = set()
    for _, command in walk():
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                found.add(envvar)
            elif envvar:
                found.update(envvar)
    return found
