"""A Dockerfile read as instructions and stages: enough for tests, not a full parser.

Handles comments, ``\\`` line continuations, parser directives, global ``ARG`` defaults in
``FROM`` lines, exec-form (JSON) and shell-form arguments, and ``ENV`` in its ``K=V`` form.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    """One instruction: ``keyword`` upper-cased, ``args`` the rest of the logical line."""

    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The arguments as an argv: the JSON array form, else split like a shell."""
        text = self.args.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            assert isinstance(parsed, list)
            return [str(part) for part in parsed]
        return shlex.split(text)


@dataclass
class Stage:
    """The instructions from one ``FROM`` to the next."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """Variables set by ``ENV NAME=value ...`` in this stage, later ones winning."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for item in shlex.split(instruction.args):
                name, sep, value = item.partition("=")
                assert sep, f"write ENV as NAME=value: {instruction.args!r}"
                values[name] = value
        return values

    def run_commands(self) -> list[str]:
        return [i.args for i in self.all("RUN")]


@dataclass
class Dockerfile:
    """A parsed Dockerfile."""

    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        """The stage the image is made of (the last one)."""
        return self.stages[-1]

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """``ARG`` defaults visible in ``stage``: global ones, then the stage's own."""
        values = dict(self.global_args)
        for instruction in stage.all("ARG"):
            name, _, default = instruction.args.partition("=")
            values[name.strip()] = default.strip().strip('"')
        return values


_ARG_REF = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def substitute(text: str, values: dict[str, str]) -> str:
    """``$NAME`` and ``${NAME}`` replaced from ``values`` (unknown names left as they are)."""
    return _ARG_REF.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def logical_lines(text: str) -> list[str]:
    """Lines with comments dropped and ``\\`` continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw_line in text.splitlines():
        stripped = raw_line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending.strip():
        lines.append(pending.strip())
    return lines


def parse(path: Path) -> Dockerfile:
    """Stages and instructions of the Dockerfile at ``path``."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        if keyword == "FROM":
            words = args.split()
            base = substitute(words[0], global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"{path.name}: only ARG may precede FROM, found {keyword}"
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    assert stages, f"{path.name}: no FROM"
    return Dockerfile(path=path, global_args=global_args, stages=stages)


def pip_extras(command: str) -> list[set[str]]:
    """The extras of each local-project requirement (``".[a,b]"``) a RUN line pip-installs."""
    return [
        {extra.strip() for extra in match.group(1).split(",")}
        for match in re.finditer(r"""["']?\.\[([A-Za-z0-9_,\s-]+)\]["']?""", command)
    ]
