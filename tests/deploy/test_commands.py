"""Every ``cdsfusion`` command line in docker/ names a real subcommand with real options."""

from __future__ import annotations

import re
import shlex

import click
import pytest
from click.testing import CliRunner

from cds.core.cli.main import cli
from tests.deploy import composefile, dockerfile
from tests.deploy.commands import resolve

SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "#", "&"}
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _compose_command_lines() -> list[tuple[str, list[str]]]:
    env = composefile.load_env_file(composefile.ENV_EXAMPLE) | composefile.SITE_VALUES
    compose = composefile.render(composefile.raw(), env)
    return [
        (f"compose.yaml {name}", composefile.command(svc))
        for name, svc in compose["services"].items()
        if composefile.runs(svc)
    ]


def _dockerfile_command_lines() -> list[tuple[str, list[str]]]:
    found = []
    for path in sorted(composefile.DOCKER_DIR.glob("Dockerfile*")):
        cmd = dockerfile.parse(path).final.last("CMD")
        if cmd is not None:
            found.append((f"{path.name} CMD", cmd.exec_form()))
    return found


def _readme_command_lines() -> list[tuple[str, list[str]]]:
    """``cdsfusion ...`` in docker/README.md code blocks, up to a shell operator."""
    text = (composefile.DOCKER_DIR / "README.md").read_text(encoding="utf-8")
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "cdsfusion" not in words:
                continue
            argv = words[words.index("cdsfusion") :]
            for i, word in enumerate(argv):
                if word in SHELL_OPERATORS:
                    argv = argv[:i]
                    break
            found.append((f"docker/README.md: {line.strip()}", argv))
    return found


COMMAND_LINES = _compose_command_lines() + _dockerfile_command_lines() + _readme_command_lines()


@pytest.mark.parametrize(("where", "argv"), COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_command_exists_and_accepts_its_arguments(where: str, argv: list[str]) -> None:
    path, command, args = resolve(argv)
    help_run = CliRunner().invoke(cli, [*path, "--help"])
    assert help_run.exit_code == 0, f"{where}: {help_run.output}"
    try:
        command.make_context(" ".join(["cdsfusion", *path]), list(args))
    except click.ClickException as exc:
        pytest.fail(f"{where}: {exc.format_message()}")


def test_the_deployment_uses_the_commands_it_needs() -> None:
    used = {" ".join(resolve(argv)[0]) for _, argv in COMMAND_LINES}
    assert {"serve", "worker", "db upgrade", "train"} <= used


def test_resolve_refuses_an_unknown_subcommand() -> None:
    """The check above can fail: a misspelt subcommand is caught."""
    with pytest.raises(LookupError, match="no such command"):
        resolve(["cdsfusion", "db", "upgrad"])
    with pytest.raises(LookupError, match="a group"):
        resolve(["cdsfusion", "db"])


def test_unknown_option_is_caught() -> None:
    _, command, _ = resolve(["cdsfusion", "worker"])
    with pytest.raises(click.UsageError):
        command.make_context("cdsfusion worker", ["--concurency", "2"])
