"""The audit trail (export, chain check) for auditors and admins; user management for admins."""

from __future__ import annotations

import datetime as dt
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cds.core.db.models import ReviewRole
from cds.core.errors import ConflictError, MalformedInputError
from cds.core.repository.audit import verify_chain
from cds.review.access import Permission
from cds.review.export import bundle_chunks, csv_chunks, date_range
from cds.review.passwords import WeakPasswordError
from cds.review.sessions import ActiveSession
from cds.review.users import create_local_user, list_users, set_active
from cds.review.web import ReviewWeb, read_form

_FORMATS = {
    "fhir": ("application/fhir+json", "json", bundle_chunks),
    "csv": ("text/csv; charset=utf-8", "csv", csv_chunks),
}


def _day(value: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value or "")
    except ValueError:
        return None


def install_trail_routes(router: APIRouter, web: ReviewWeb) -> None:
    """``/audit/trail`` (+ ``/export``, ``/verify``) and ``/audit/admin/users``."""

    def trail_page(
        db: Session, state: ActiveSession, *, report: object = None, error: str = ""
    ) -> Response:
        today = dt.datetime.now(dt.UTC).date()
        web.audit(db, state, "review.trail", entity_type="audit-log")
        return web.render(
            "trail.html",
            {
                "report": report,
                "error": error,
                "default_from": (today - dt.timedelta(days=30)).isoformat(),
                "default_to": today.isoformat(),
            },
            active=state,
            status_code=400 if error else 200,
        )

    @router.get("/trail")
    def trail(request: Request) -> Response:
        return web.page(request, Permission.AUDIT_TRAIL, trail_page)

    @router.post("/trail/verify")
    async def verify(request: Request) -> Response:
        form = await read_form(request)

        def handler(db: Session, state: ActiveSession) -> Response:
            report = verify_chain(session=db)
            web.audit(
                db,
                state,
                "review.chain-verify",
                entity_type="audit-log",
                details={
                    "ok": report.ok,
                    "entries": report.entries,
                    "first_bad_id": report.first_bad_id,
                },
            )
            return trail_page(db, state, report=report)

        return await run_in_threadpool(
            web.page, request, Permission.AUDIT_TRAIL, handler, form=form
        )

    @router.post("/trail/export")
    async def export(request: Request) -> Response:
        form = await read_form(request)

        def handler(db: Session, state: ActiveSession) -> Response:
            start, end = _day(form.get("date_from")), _day(form.get("date_to"))
            kind = form.get("format", "")
            if start is None or end is None or end < start or kind not in _FORMATS:
                return trail_page(db, state, error="Give a valid date range and a format.")
            media_type, suffix, chunks = _FORMATS[kind]
            since, until = date_range(start, end)
            web.audit(
                db,
                state,
                "review.export",
                entity_type="audit-log",
                details={"from": start.isoformat(), "to": end.isoformat(), "format": kind},
            )
            name = f"cdsfusion-audit-{start.isoformat()}-{end.isoformat()}.{suffix}"
            return StreamingResponse(
                chunks(web.ctx.session_factory, since, until),
                media_type=media_type,
                headers={
                    "Content-Disposition": f'attachment; filename="{name}"',
                    "Cache-Control": "no-store",
                },
            )

        return await run_in_threadpool(
            web.page, request, Permission.AUDIT_TRAIL, handler, form=form
        )

    def users_page(
        db: Session, state: ActiveSession, *, error: str = "", notice: str = ""
    ) -> Response:
        web.audit(db, state, "review.users", entity_type="review-user")
        return web.render(
            "users.html",
            {
                "users": list_users(session=db),
                "roles": [r.value for r in ReviewRole],
                "error": error,
                "notice": notice,
            },
            active=state,
            status_code=400 if error else 200,
        )

    @router.get("/admin/users")
    def users(request: Request) -> Response:
        return web.page(request, Permission.MANAGE_USERS, users_page)

    @router.post("/admin/users")
    async def create_user(request: Request) -> Response:
        form = await read_form(request)

        def handler(db: Session, state: ActiveSession) -> Response:
            try:
                role = ReviewRole(form.get("role", ""))
                with db.begin_nested():
                    user = create_local_user(
                        session=db,
                        username=form.get("username", "").strip(),
                        password=form.get("password", ""),
                        role=role,
                        actor=f"user:{state.user.id}",
                    )
            except (ValueError, MalformedInputError, ConflictError, WeakPasswordError) as exc:
                return users_page(db, state, error=str(exc))
            return users_page(db, state, notice=f"Created {user.username} ({role.value}).")

        return await run_in_threadpool(
            web.page, request, Permission.MANAGE_USERS, handler, form=form
        )

    @router.post("/admin/users/{user_id}/active")
    async def toggle_user(request: Request, user_id: uuid.UUID) -> Response:
        form = await read_form(request)

        def handler(db: Session, state: ActiveSession) -> Response:
            if user_id == state.user.id:
                return users_page(db, state, error="You cannot disable your own account.")
            try:
                user = set_active(
                    session=db,
                    user_id=user_id,
                    active=form.get("active") == "true",
                    actor=f"user:{state.user.id}",
                )
            except MalformedInputError as exc:
                return users_page(db, state, error=str(exc))
            change = "enabled" if user.active else "disabled"
            return users_page(db, state, notice=f"{user.username} {change}.")

        return await run_in_threadpool(
            web.page, request, Permission.MANAGE_USERS, handler, form=form
        )
