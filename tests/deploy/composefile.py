"""docker/compose.yaml read as Compose reads it, for tests that have no container engine.

PyYAML's safe loader resolves the anchors and ``<<`` merge keys the file uses; the
``${...}`` interpolation follows the Compose specification (§Interpolation): ``${VAR}``,
``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``, and ``$$``
for a literal dollar sign.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy import dockerfile

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"

#: What a site puts in docker/.env besides the example's defaults (test values only).
SITE_VALUES = {
    "POSTGRES_PASSWORD": "compose-test-password",
    "CDSFUSION_SECRET_KEY": "compose-test-secret-" + "x" * 40,
    "CDSFUSION_DICOM_ALLOWED_AE_TITLES": "MODALITY1, PACS",
    "CDSFUSION_PUBLIC_BASE_URL": "https://cds.hospital.example/",
}

#: ``$$``, ``${NAME}``, ``${NAME<op><word>}`` with op one of ``:-``, ``-``, ``:?``, ``?``.
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<word>[^}]*))?\}"
)
#: A dollar sign that starts neither ``$$`` nor ``${NAME...}`` (Compose would read ``$NAME``).
BARE_DOLLAR = re.compile(r"\$(?!\$|\{[A-Za-z_])")


class MissingVariableError(ValueError):
    """A ``${VAR:?error}`` interpolation whose variable is unset (or empty, with ``:``)."""


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """``value`` with every ``${...}`` replaced from ``env``, as ``docker compose`` does.

    Raises:
        MissingVariableError: a required variable is missing.
    """

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, word = match.group("name"), match.group("op"), match.group("word") or ""
        present = name in env
        usable = present and (env[name] != "" or not (op or "").startswith(":"))
        if op in (":-", "-"):
            return env[name] if usable else word
        if op in (":?", "?"):
            if not usable:
                raise MissingVariableError(f"{name}: {word}")
            return env[name]
        return env.get(name, "")

    return INTERPOLATION.sub(one, value)


def render(node: Any, env: Mapping[str, str]) -> Any:
    """A parsed YAML tree with every string interpolated."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [render(item, env) for item in node]
    if isinstance(node, dict):
        return {key: render(value, env) for key, value in node.items()}
    return node


def variables(node: Any) -> dict[str, str | None]:
    """Every variable interpolated in a parsed tree, with its operator (``None``: plain)."""
    found: dict[str, str | None] = {}
    if isinstance(node, str):
        for match in INTERPOLATION.finditer(node):
            if match.group("name"):
                found.setdefault(match.group("name"), match.group("op"))
    elif isinstance(node, list | dict):
        for item in node.values() if isinstance(node, dict) else node:
            for name, op in variables(item).items():
                found.setdefault(name, op)
    return found


def load_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a Compose ``.env`` file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        assert sep, f"{path.name}: not NAME=value: {line!r}"
        env[name.strip()] = value.strip()
    return env


def raw() -> dict[str, Any]:
    """The compose file parsed, anchors merged, nothing interpolated."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping (Compose allows a mapping or a list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {name: value for name, _, value in pairs}
    return {str(name): "" if value is None else str(value) for name, value in env.items()}


def command(service: Mapping[str, Any]) -> list[str]:
    """A service's ``command`` as an argv list (the file writes exec-form lists)."""
    cmd = service.get("command")
    assert isinstance(cmd, list), "write commands as lists (exec form), not shell strings"
    return [str(part) for part in cmd]


@dataclass(frozen=True)
class Mount:
    """One entry of a service's ``volumes``."""

    source: str
    target: str
    read_only: bool

    @property
    def named(self) -> bool:
        """A named volume rather than a bind mount of a host path."""
        return not self.source.startswith((".", "/", "~"))


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    """A service's volumes, short (``src:dst[:ro]``) or long syntax."""
    found: list[Mount] = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            mode = parts[2] if len(parts) > 2 else "rw"
            found.append(Mount(parts[0], parts[1], "ro" in mode.split(",")))
        else:
            found.append(
                Mount(
                    str(entry.get("source", "")),
                    str(entry["target"]),
                    bool(entry.get("read_only", False)),
                )
            )
    return found


def published_ports(service: Mapping[str, Any]) -> dict[int, int]:
    """Container port -> host port for every TCP port a service publishes."""
    found: dict[int, int] = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            found[int(entry["target"])] = int(entry.get("published", entry["target"]))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.split(":")
        container = int(parts[-1])
        host = int(parts[-2]) if len(parts) > 1 else container
        found[container] = host
    return found


def gpu_devices(service: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The device reservations of a service (``deploy.resources.reservations.devices``)."""
    deploy = service.get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices")
    return list(devices or [])


def build_dockerfile(service: Mapping[str, Any]) -> Path | None:
    """The Dockerfile a service is built from, or ``None`` for a pulled image."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (DOCKER_DIR / build / "Dockerfile").resolve()
    context = (DOCKER_DIR / build.get("context", ".")).resolve()
    return (context / build.get("dockerfile", "Dockerfile")).resolve()


def image_env(service: Mapping[str, Any]) -> dict[str, str]:
    """``ENV`` of the final stage of the image a service is built from."""
    path = build_dockerfile(service)
    return dockerfile.parse(path).final.env() if path else {}


def runs(service: Mapping[str, Any], *subcommand: str) -> bool:
    """Whether a service's command is ``cdsfusion <subcommand...>``."""
    cmd = service.get("command")
    return isinstance(cmd, list) and cmd[: 1 + len(subcommand)] == ["cdsfusion", *subcommand]
