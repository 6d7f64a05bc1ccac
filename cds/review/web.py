"""Request plumbing of the review pages: templates, headers, cookies, sessions, CSRF, errors.

Every page runs :meth:`ReviewWeb.page`: one database transaction that resumes the session
(or sends the browser to the login page, saying when it expired), checks the role and,
for forms, the CSRF token, runs the page and writes its audit entry. Database failures
answer a 503 page; nothing raises out of a handler.

Responses carry ``Cache-Control: no-store`` (pages hold patient data), a
Content-Security-Policy that allows only this origin's scripts, styles and images (no
CDN, no inline script or style) and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cds.core.db.session import transaction
from cds.core.db.types import utcnow
from cds.core.repository.audit import append_audit
from cds.core.runtime import EngineContext
from cds.review.access import Permission, allowed
from cds.review.markdown import render as render_markdown
from cds.review.sessions import (
    COOKIE_NAME,
    ActiveSession,
    EndedSession,
    Signer,
    cookie_value,
    resume_session,
    token_from_cookie,
)

logger = logging.getLogger(__name__)

PREFIX = "/audit"
MAX_FORM_BYTES = 64 * 1024
_NEXT = re.compile(r"^/audit/[A-Za-z0-9/_.-]*$")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

PageHandler = Callable[[Session, ActiveSession], Response]


def safe_next(value: str | None) -> str | None:
    """A same-site path under /audit/ to return to after login, else ``None``."""
    return value if value and _NEXT.match(value) and ".." not in value else None


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (at most 64 KiB; first value wins)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    form: dict[str, str] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        form.setdefault(key, value)
    return form


class ReviewWeb:
    """Templates, signer and the page runner shared by the routes of one app.

    Args:
        ctx: the process context (settings, sessions, database).
    """

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.signer = Signer(ctx.settings.secret_key.get_secret_value())
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["utc"] = lambda v: v.strftime("%Y-%m-%d %H:%M UTC") if v else ""
        self.env.filters["pct"] = lambda v: "" if v is None else f"{v * 100:.1f}%"
        self.env.filters["card_markdown"] = render_markdown
        self.env.globals["idle_seconds"] = int(ctx.settings.review_session_idle_timeout_s)

    # --- responses -------------------------------------------------------------------
    def render(
        self,
        name: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
        active: ActiveSession | None = None,
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(
            **context,
            me=active.user if active else None,
            csrf=active.csrf if active else "",
            permissions={p.value for p in Permission if active and allowed(active.user.role, p)},
        )
        return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)

    def redirect(self, url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)

    def error(
        self, status_code: int, message: str, *, active: ActiveSession | None = None
    ) -> HTMLResponse:
        return self.render(
            "error.html",
            {"status": status_code, "message": message},
            status_code=status_code,
            active=active,
        )

    def secure(self, request: Request) -> bool:
        """Whether cookies get ``Secure``: the request or the public base URL is https."""
        base = self.settings.public_base_url or ""
        return request.url.scheme == "https" or base.startswith("https://")

    def set_session_cookie(self, response: Response, request: Request, token: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            cookie_value(self.signer, token),
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
            path=PREFIX,
        )

    def clear_session_cookie(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            COOKIE_NAME, path=PREFIX, httponly=True, samesite="strict", secure=self.secure(request)
        )

    # --- login form CSRF (before there is a session) ----------------------------------
    def login_nonce(self, request: Request) -> tuple[str, bool]:
        """The login form's nonce from its cookie, or a new one (then ``True``)."""
        nonce = request.cookies.get("cdsfusion_review_login")
        if nonce and re.fullmatch(r"[A-Za-z0-9_-]{20,64}", nonce):
            return nonce, False
        return secrets.token_urlsafe(24), True

    def login_token(self, nonce: str) -> str:
        return self.signer.sign("login", nonce)

    # --- the page runner ----------------------------------------------------------------
    def page(
        self,
        request: Request,
        permission: Permission | None,
        handler: PageHandler,
        *,
        form: Mapping[str, str] | None = None,
    ) -> Response:
        """Run ``handler`` for a signed-in user allowed ``permission`` (POST: CSRF checked)."""
        token = token_from_cookie(self.signer, request.cookies.get(COOKIE_NAME))
        try:
            with transaction(self.ctx.session_factory) as db:
                state = (
                    resume_session(
                        session=db, token=token, settings=self.settings, signer=self.signer
                    )
                    if token
                    else None
                )
                if not isinstance(state, ActiveSession):
                    response = self._to_login(request, state)
                elif form is not None and not secrets.compare_digest(
                    form.get("csrf", ""), state.csrf
                ):
                    self._audit_refusal(db, state, request, "csrf")
                    response = self.error(
                        403, "The form expired; open the page again.", active=state
                    )
                elif permission is not None and not allowed(state.user.role, permission):
                    self._audit_refusal(db, state, request, "role")
                    response = self.error(
                        403, "Your role does not give access to this page.", active=state
                    )
                else:
                    response = handler(db, state)
        except SQLAlchemyError as exc:
            logger.error("review page failed on the database: %s", type(exc).__name__)
            return self.error(503, "The database is not available; try again shortly.")
        if token and not isinstance(state, ActiveSession):
            self.clear_session_cookie(response, request)
        return response

    def _to_login(self, request: Request, state: EndedSession | None) -> Response:
        if request.method != "GET":
            return self.error(401, "Please sign in again.")
        target = f"{PREFIX}/login"
        params = []
        if isinstance(state, EndedSession):
            params.append(f"ended={state.reason.value}")
        if safe_next(request.url.path):
            params.append(f"next={quote(request.url.path, safe='/')}")
        return self.redirect(target + ("?" + "&".join(params) if params else ""))

    def _audit_refusal(
        self, db: Session, state: ActiveSession, request: Request, reason: str
    ) -> None:
        route = request.scope.get("route")
        append_audit(
            session=db,
            actor=f"user:{state.user.id}",
            action="review.forbidden",
            occurred_at=utcnow(),
            entity_type="route",
            entity_id=str(getattr(route, "path", "unmatched"))[:128],
            details={"method": request.method, "reason": reason, "role": state.user.role.value},
        )

    def audit(
        self,
        db: Session,
        state: ActiveSession,
        action: str,
        *,
        entity_type: str = "",
        entity_id: str = "",
        details: dict[str, Any] | None = None,
    ) -> int:
        """Append this user's action to the audit chain; returns the entry id."""
        entry = append_audit(
            session=db,
            actor=f"user:{state.user.id}",
            action=action,
            occurred_at=utcnow(),
            entity_type=entity_type,
            entity_id=entity_id,
            details={"session": str(state.row.id), **(details or {})},
        )
        return entry.id
