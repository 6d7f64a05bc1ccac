"""Fixtures of the docker/ checks: the compose file rendered with a site's values."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from cds.core.settings import Settings
from tests.deploy import composefile


@pytest.fixture(scope="session")
def raw_compose() -> dict[str, Any]:
    """docker/compose.yaml parsed, not interpolated."""
    return composefile.raw()


@pytest.fixture(scope="session")
def site_env() -> dict[str, str]:
    """docker/.env.example with its required values filled in."""
    env = composefile.load_env_file(composefile.ENV_EXAMPLE)
    env.update(composefile.SITE_VALUES)
    return env


@pytest.fixture(scope="session")
def compose(raw_compose: dict[str, Any], site_env: dict[str, str]) -> dict[str, Any]:
    """docker/compose.yaml as ``docker compose config`` would see it for that site."""
    rendered = composefile.render(raw_compose, site_env)
    assert isinstance(rendered, dict)
    return rendered


@pytest.fixture(scope="session")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


@pytest.fixture(scope="session")
def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run ``cdsfusion worker``."""
    found = {name: svc for name, svc in services.items() if composefile.runs(svc, "worker")}
    assert found, "no service runs `cdsfusion worker`"
    return found


@pytest.fixture
def settings_of(monkeypatch: pytest.MonkeyPatch) -> Callable[[Mapping[str, Any]], Settings]:
    """The Settings a service's process builds: image ENV, overridden by compose, checked."""

    def build(service: Mapping[str, Any]) -> Settings:
        for name in list(os.environ):
            if name.startswith("CDSFUSION_"):
                monkeypatch.delenv(name)
        merged = {**composefile.image_env(service), **composefile.environment(service)}
        for name, value in merged.items():
            if name.startswith("CDSFUSION_"):
                monkeypatch.setenv(name, value)
        settings = Settings()
        settings.check_startable()
        return settings

    return build
