"""The HTTP app: metrics and logs label requests by route template, never raw paths."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from cds.api.app import create_app
from cds.core.runtime import EngineContext
from cds.core.settings import Settings


def test_metrics_label_included_routes_by_their_template() -> None:
    """Regression: routes from included routers were all labelled ``unmatched``."""

    def install(app: FastAPI, _ctx: EngineContext) -> None:
        router = APIRouter(prefix="/things")

        @router.get("/{thing_id}")
        def read(thing_id: str) -> dict[str, str]:
            return {"id": thing_id}

        app.include_router(router)

    ctx = EngineContext.build(Settings(database_url="sqlite://"))
    with TestClient(create_app(ctx, installers=[install])) as client:
        assert client.get("/things/MRN123").status_code == 200
    metrics = generate_latest(ctx.metrics).decode()
    assert 'route="/things/{thing_id}"' in metrics
    assert "MRN123" not in metrics
