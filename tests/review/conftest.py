"""Fixtures of the review page tests: the seeded database and a live engine serving it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cds.api.app import create_app
from cds.api.server import HttpServer
from cds.core.db.session import make_engine, make_session_factory
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from cds.review.routes import install
from tests.conftest import free_port
from tests.review.seed import Seeded, build


@pytest.fixture(scope="session")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    """Built once: real predictions from the tiny model (about 15 s)."""
    return build(tmp_path_factory.mktemp("review-seed"))


@dataclass
class Live:
    """A running engine (HTTP with the review pages) on a private copy of the seed."""

    base: str
    ctx: EngineContext
    seeded: Seeded

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, follow_redirects=False, timeout=30)


def serve_copy(seeded: Seeded, tmp_path: Path, **overrides: object) -> Iterator[Live]:
    """Copy the seeded SQLite file and serve it; yields, then stops the server."""
    database = tmp_path / "review.db"
    shutil.copy(seeded.database_url.removeprefix("sqlite:///"), database)
    settings = Settings(
        database_url=f"sqlite:///{database}",
        data_dir=seeded.data_dir,
        model_dir=seeded.model_dir,
        **overrides,  # type: ignore[arg-type]
    )
    engine = make_engine(settings.database_url)
    ctx = EngineContext(
        settings=settings, engine=engine, session_factory=make_session_factory(engine)
    )
    port = free_port()
    server = HttpServer(create_app(ctx, installers=[install]), host="127.0.0.1", port=port)
    server.start()
    try:
        yield Live(f"http://127.0.0.1:{port}", ctx, seeded)
    finally:
        server.stop()
        engine.dispose()


@pytest.fixture
def live(seeded: Seeded, tmp_path: Path) -> Iterator[Live]:
    yield from serve_copy(seeded, tmp_path)
