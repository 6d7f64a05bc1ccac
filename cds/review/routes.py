"""HTTP routes of the review pages, all under ``/audit/`` (see ``cds/review/__init__.py``)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cds.core.db.models import Prediction, ReviewVerdict, Verdict
from cds.core.errors import CdsFusionError
from cds.core.runtime import EngineContext
from cds.fhir.levels import RiskLevels
from cds.review import listing
from cds.review.access import Permission, home
from cds.review.auth_routes import install_auth_routes
from cds.review.detail import load_view
from cds.review.imaging import ImageUnavailableError, image_storage_key, prediction_png
from cds.review.sessions import ActiveSession
from cds.review.trail_routes import install_trail_routes
from cds.review.web import PREFIX, ReviewWeb, read_form

logger = logging.getLogger(__name__)

STATIC_FILES = {"review.css": "text/css", "review.js": "text/javascript"}
MAX_COMMENT_CHARS = 4000


def install(app: FastAPI, ctx: EngineContext) -> None:
    """Mount the review pages under ``/audit/``."""
    web = ReviewWeb(ctx)
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    install_auth_routes(router, web)
    install_list_routes(router, web, app)
    install_page_routes(router, web, app)
    install_trail_routes(router, web)
    app.include_router(router)


def _card_for(app: FastAPI, web: ReviewWeb, db: Session, prediction: Prediction) -> Any:
    """The CDS Hooks card the EHR was given for this prediction (built by ``cds.hooks``)."""
    from cds.fhir.outputs import shared_outputs
    from cds.fhir.urls import model_card_url, public_base, review_url
    from cds.hooks.cards import CardSettings, prediction_card
    from cds.hooks.models import dump
    from cds.hooks.service import load_suggestions

    settings = web.settings
    outputs = shared_outputs(app, web.ctx)
    cfg = CardSettings(
        levels=outputs.levels,
        review_url=lambda pid: review_url(settings, pid),
        model_card_url=lambda name, version: model_card_url(settings, name, version),
        icon_url=f"{public_base(settings)}/models/icon.png",
        smart_app_url=settings.cds_smart_app_url,
    )
    try:
        cfg = replace(cfg, suggestions=load_suggestions(settings.cds_suggestions_file))
        card = prediction_card(outputs.assessment(db, prediction), cfg)
    except (LookupError, ValueError, CdsFusionError) as exc:
        logger.warning("card for prediction %s not built: %s", prediction.id, type(exc).__name__)
        return None
    return dump(card), outputs.cards.find(prediction.model_name, prediction.model_version)


def _has_image(web: ReviewWeb, db: Session, prediction: Prediction) -> bool:
    from cds.review.imaging import storage_path

    try:
        key = image_storage_key(session=db, prediction=prediction)
        return storage_path(web.settings.data_dir, key).is_file()
    except ImageUnavailableError:
        return False


def install_list_routes(router: APIRouter, web: ReviewWeb, app: FastAPI) -> None:
    """Static files, the start page and the prediction list with its filters."""
    levels = RiskLevels.from_settings(web.settings)

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        from pathlib import Path

        if name not in STATIC_FILES:
            return web.error(404, "No such file.")
        body = (Path(__file__).parent / "static" / name).read_bytes()
        return Response(
            body, media_type=STATIC_FILES[name], headers={"Cache-Control": "max-age=3600"}
        )

    @router.get("/")
    def root(request: Request) -> Response:
        return web.page(request, None, lambda _db, state: web.redirect(home(state.user.role)))

    @router.get("/predictions")
    def predictions(
        request: Request, after: uuid.UUID | None = None, before: uuid.UUID | None = None
    ) -> Response:
        def handler(db: Session, state: ActiveSession) -> Response:
            filters = listing.ListFilters.from_json(state.row.filters)
            page = listing.list_page(
                session=db,
                filters=filters,
                levels=levels,
                page_size=web.settings.review_page_size,
                after=after,
                before=before,
            )
            ids = [p.id for p in page.rows]
            feedback = listing.feedback_summaries(session=db, prediction_ids=ids)
            shown = listing.first_identifiers(
                session=db, patient_ids=[p.patient_id for p in page.rows]
            )
            filtered_patient = None
            if filters.patient_ids:
                filtered_patient = listing.first_identifiers(
                    session=db, patient_ids=[uuid.UUID(filters.patient_ids[0])]
                ).get(uuid.UUID(filters.patient_ids[0]))
            web.audit(
                db,
                state,
                "review.list",
                entity_type="prediction-list",
                details={
                    "filters": filters.audit_details(),
                    "after": str(after) if after else None,
                    "before": str(before) if before else None,
                    "shown": len(ids),
                },
            )
            from cds.fhir.outputs import shared_outputs

            return web.render(
                "list.html",
                {
                    "page": page,
                    "filters": filters,
                    "filtered_patient": filtered_patient,
                    "feedback": feedback,
                    "identifiers": shown,
                    "levels": levels,
                    "tasks": sorted(shared_outputs(app, web.ctx).tasks),
                    "statuses": ["final", "insufficient-data", "superseded", "cancelled"],
                    "risks": listing.RISK_LEVELS,
                    "outcomes": listing.FEEDBACK_OUTCOMES,
                },
                active=state,
            )

        return web.page(request, Permission.VIEW_PREDICTIONS, handler)

    @router.post("/predictions")
    async def set_filters(request: Request) -> Response:
        form = await read_form(request)

        def handler(db: Session, state: ActiveSession) -> Response:
            if form.get("action") == "clear":
                state.row.filters = None
            else:
                chosen = listing.parse_filters(form, session=db)
                before = listing.ListFilters.from_json(state.row.filters)
                if chosen.patient_ids is None and before.patient_ids is not None:
                    chosen = replace(chosen, patient_ids=before.patient_ids)
                state.row.filters = chosen.to_json() or None
            return web.redirect(f"{PREFIX}/predictions")

        return await run_in_threadpool(
            web.page, request, Permission.VIEW_PREDICTIONS, handler, form=form
        )


def install_page_routes(router: APIRouter, web: ReviewWeb, app: FastAPI) -> None:
    """The prediction page, its images and the reviewer's verdict."""
    levels = RiskLevels.from_settings(web.settings)

    @router.get("/predictions/{prediction_id}")
    def prediction_page(request: Request, prediction_id: uuid.UUID) -> Response:
        def handler(db: Session, state: ActiveSession) -> Response:
            prediction = db.get(Prediction, prediction_id)
            if prediction is None:
                return web.error(404, "No prediction with this id.", active=state)
            view = load_view(
                session=db,
                prediction=prediction,
                levels=levels,
                has_image=_has_image(web, db, prediction),
            )
            built = _card_for(app, web, db, prediction)
            web.audit(
                db, state, "review.view", entity_type="prediction", entity_id=str(prediction.id)
            )
            return web.render(
                "prediction.html",
                {
                    "v": view,
                    "card": built[0] if built else None,
                    "model_card": built[1] if built else None,
                    "model_card_path": _model_card_path(prediction),
                },
                active=state,
            )

        return web.page(request, Permission.VIEW_PREDICTIONS, handler)

    def image(request: Request, prediction_id: uuid.UUID, with_heatmap: bool) -> Response:
        def handler(db: Session, state: ActiveSession) -> Response:
            try:
                png = prediction_png(
                    session=db,
                    prediction_id=prediction_id,
                    data_dir=web.settings.data_dir,
                    with_heatmap=with_heatmap,
                )
            except ImageUnavailableError as exc:
                return web.error(404, str(exc), active=state)
            web.audit(
                db,
                state,
                "review.image",
                entity_type="prediction",
                entity_id=str(prediction_id),
                details={"heatmap": with_heatmap},
            )
            return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

        return web.page(request, Permission.VIEW_PREDICTIONS, handler)

    @router.get("/predictions/{prediction_id}/image.png")
    def image_plain(request: Request, prediction_id: uuid.UUID) -> Response:
        return image(request, prediction_id, with_heatmap=False)

    @router.get("/predictions/{prediction_id}/heatmap.png")
    def image_heatmap(request: Request, prediction_id: uuid.UUID) -> Response:
        return image(request, prediction_id, with_heatmap=True)

    @router.post("/predictions/{prediction_id}/verdict")
    async def verdict(request: Request, prediction_id: uuid.UUID) -> Response:
        form = await read_form(request)

        def handler(db: Session, state: ActiveSession) -> Response:
            choice = form.get("verdict", "")
            if choice not in (Verdict.AGREE.value, Verdict.DISAGREE.value):
                return web.error(400, "Choose agree or disagree.", active=state)
            if db.get(Prediction, prediction_id) is None:
                return web.error(404, "No prediction with this id.", active=state)
            comment = form.get("comment", "").strip()[:MAX_COMMENT_CHARS]
            entry_id = web.audit(
                db,
                state,
                f"review.{choice}",
                entity_type="prediction",
                entity_id=str(prediction_id),
                details={
                    "verdict": choice,
                    "comment_sha256": hashlib.sha256(comment.encode()).hexdigest(),
                    "comment_chars": len(comment),
                },
            )
            db.add(
                ReviewVerdict(
                    prediction_id=prediction_id,
                    user_id=state.user.id,
                    verdict=Verdict(choice),
                    comment=comment,
                    audit_entry_id=entry_id,
                )
            )
            return web.redirect(f"{PREFIX}/predictions/{prediction_id}#feedback")

        return await run_in_threadpool(
            web.page, request, Permission.GIVE_VERDICT, handler, form=form
        )


def _model_card_path(prediction: Prediction) -> str:
    from cds.modelcard import model_card_path

    return model_card_path(prediction.model_name, prediction.model_version)
