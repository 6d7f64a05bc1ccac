"""HTTP: the serving model's card, and the icon that CDS Hooks cards show as their source.

* ``GET /models/{name}/{version}``: HTML (default, for clinicians following a card's
  source link) or markdown (``Accept: text/markdown`` or ``?format=md``).
* ``GET /models/icon.png``: a 100x100 opaque PNG (CDS Hooks 2.0 §Source: ``icon``).
"""

from __future__ import annotations

import functools
import html
import struct
import zlib

from fastapi import APIRouter, FastAPI, Request, Response

from cds.api.outcome import outcome_response
from cds.core.runtime import EngineContext
from cds.modelcard import ModelCardSource

ICON_PATH = "/models/icon.png"


@functools.cache
def icon_png() -> bytes:
    """A 100x100 RGB PNG without transparency: a teal square with a white bar chart."""
    size = 100
    rows = []
    for y in range(size):
        row = bytearray([0])  # filter type 0 per scanline
        for x in range(size):
            bar = any(
                left <= x < left + 14 and y >= top for left, top in ((18, 60), (43, 35), (68, 15))
            )
            inside = 8 <= y < 92
            row += b"\xff\xff\xff" if bar and inside else b"\x00\x6d\x77"
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def _wants_markdown(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt.lower() in {"md", "markdown"}
    return "text/markdown" in request.headers.get("accept", "")


def build_router(cards: ModelCardSource) -> APIRouter:
    router = APIRouter(tags=["model card"])

    @router.get(ICON_PATH, include_in_schema=False)
    def icon() -> Response:
        return Response(
            icon_png(), media_type="image/png", headers={"Cache-Control": "max-age=86400"}
        )

    @router.get("/models/{name}/{version}", summary="The model card of a served model")
    def model_card(
        request: Request, name: str, version: str, format: str | None = None
    ) -> Response:
        card = cards.find(name, version)
        if card is None:
            return outcome_response(404, "no model card for this model and version")
        text = card.markdown or f"# {card.name} {card.version}\n"
        if _wants_markdown(request, format):
            return Response(text, media_type="text/markdown; charset=utf-8")
        page = (
            "<!doctype html><html lang=en><meta charset=utf-8>"
            f"<title>Model card: {html.escape(card.name)} {html.escape(card.version)}</title>"
            "<body><pre style='white-space:pre-wrap;font-family:system-ui,sans-serif'>"
            f"{html.escape(text)}</pre></body></html>"
        )
        return Response(page, media_type="text/html; charset=utf-8")

    return router


def install(app: FastAPI, ctx: EngineContext) -> None:
    """Mount the model card pages and the card icon."""
    from cds.fhir.outputs import shared_outputs

    app.include_router(build_router(shared_outputs(app, ctx).cards))
