"""Sign-in and sign-out: local users (login form) and the OIDC provider (code flow + PKCE)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from cds.core.db.models import ReviewUser
from cds.core.db.session import transaction
from cds.core.db.types import utcnow
from cds.core.errors import ConfigurationError
from cds.core.repository.audit import append_audit
from cds.review.access import home
from cds.review.oidc import FLOW_COOKIE, FLOW_MAX_AGE_S, Flow, OidcClient, OidcError
from cds.review.sessions import (
    COOKIE_NAME,
    ActiveSession,
    EndReason,
    end_session,
    resume_session,
    start_session,
    token_from_cookie,
)
from cds.review.users import authenticate_local, find_user, oidc_user
from cds.review.web import PREFIX, ReviewWeb, read_form, safe_next

logger = logging.getLogger(__name__)

LOGIN_COOKIE = "cdsfusion_review_login"
_ENDED = {
    "idle": "Your session ended after a period without activity. Please sign in again.",
    "absolute": "Your session reached its maximum length. Please sign in again.",
    "disabled": "Your account is disabled.",
    "logout": "You are signed out.",
}


class AuthPages:
    """Sign-in pages of one app.

    Args:
        web: the shared request plumbing.
    """

    def __init__(self, web: ReviewWeb) -> None:
        self.web = web
        self.settings = web.settings
        self._oidc: OidcClient | None = None

    def client(self) -> OidcClient | None:
        if not self.settings.review_oidc_issuer:
            return None
        if self._oidc is None:
            self._oidc = OidcClient(self.settings)
        return self._oidc

    def redirect_uri(self, request: Request) -> str:
        base = self.settings.public_base_url or str(request.base_url).rstrip("/")
        return f"{base}{PREFIX}/oidc/callback"

    def login_page(
        self, request: Request, *, message: str = "", error: str = "", status_code: int = 200
    ) -> Response:
        web = self.web
        nonce, new = web.login_nonce(request)
        response = web.render(
            "login.html",
            {
                "message": message,
                "error": error,
                "login_token": web.login_token(nonce),
                "next": safe_next(request.query_params.get("next")) or "",
                "local_login": self.settings.review_local_login,
                "oidc": bool(self.settings.review_oidc_issuer),
            },
            status_code=status_code,
        )
        if new:
            response.set_cookie(
                LOGIN_COOKIE,
                nonce,
                httponly=True,
                samesite="strict",
                secure=web.secure(request),
                path=f"{PREFIX}/login",
                max_age=3600,
            )
        return response

    def login_form(self, request: Request) -> Response:
        ended = request.query_params.get("ended", "")
        return self.login_page(request, message=_ENDED.get(ended, ""))

    def login(self, request: Request, form: dict[str, str]) -> Response:
        web = self.web
        nonce, _ = web.login_nonce(request)
        if not self.settings.review_local_login:
            return web.error(404, "Local sign-in is turned off; use your organisation's sign-in.")
        if not secrets.compare_digest(form.get("login_token", ""), web.login_token(nonce)):
            return self.login_page(request, error="The form expired; try again.", status_code=400)
        username = form.get("username", "").strip()[:128]
        password = form.get("password", "")[:1024]
        token: str | None = None
        target = ""
        with transaction(web.ctx.session_factory) as db:
            user = authenticate_local(session=db, username=username, password=password)
            if user is None:
                known = find_user(session=db, username=username) if username else None
                append_audit(
                    session=db,
                    actor=f"user:{known.id}" if known else "anonymous",
                    action="review.login-failed",
                    occurred_at=utcnow(),
                    entity_type="review-user" if known else "",
                    entity_id=str(known.id) if known else "",
                    details={"method": "local"},
                )
            else:
                token = start_session(session=db, user=user, method="local", settings=self.settings)
                target = safe_next(form.get("next")) or home(user.role)
        if token is None:
            return self.login_page(
                request, error="Unknown username or wrong password.", status_code=401
            )
        response = web.redirect(target)
        web.set_session_cookie(response, request, token)
        return response

    def logout(self, request: Request, form: dict[str, str]) -> Response:
        web = self.web
        token = token_from_cookie(web.signer, request.cookies.get(COOKIE_NAME))
        if token:
            with transaction(web.ctx.session_factory) as db:
                state = resume_session(
                    session=db, token=token, settings=self.settings, signer=web.signer
                )
                if isinstance(state, ActiveSession):
                    if not secrets.compare_digest(form.get("csrf", ""), state.csrf):
                        return web.error(403, "The form expired; open the page again.")
                    end_session(session=db, row=state.row, reason=EndReason.LOGOUT)
        response = web.redirect(f"{PREFIX}/login?ended=logout")
        web.clear_session_cookie(response, request)
        return response

    def oidc_login(self, request: Request) -> Response:
        web = self.web
        provider = self.client()
        if provider is None:
            return web.error(404, "No identity provider is configured.")
        try:
            url, flow = provider.start(self.redirect_uri(request))
        except (OidcError, ConfigurationError) as exc:
            logger.warning("OIDC sign-in could not start: %s", exc)
            return web.error(503, "The identity provider is not available.")
        response = web.redirect(url)
        response.set_cookie(
            FLOW_COOKIE,
            flow.to_cookie(web.signer),
            httponly=True,
            samesite="lax",  # the provider's redirect back is a cross-site navigation
            secure=web.secure(request),
            path=f"{PREFIX}/oidc",
            max_age=FLOW_MAX_AGE_S,
        )
        return response

    def oidc_callback(self, request: Request) -> Response:
        web = self.web
        provider = self.client()
        if provider is None:
            return web.error(404, "No identity provider is configured.")
        params: dict[str, Any] = dict(request.query_params)
        flow = Flow.from_cookie(web.signer, request.cookies.get(FLOW_COOKIE))
        try:
            if "error" in params or "code" not in params:
                raise OidcError("the identity provider did not sign you in")
            identity = provider.finish(
                code=str(params["code"]),
                state=str(params.get("state", "")),
                flow=flow,
                redirect_uri=self.redirect_uri(request),
            )
        except OidcError as exc:
            logger.info("OIDC sign-in refused: %s", exc)
            with transaction(web.ctx.session_factory) as db:
                append_audit(
                    session=db,
                    actor="anonymous",
                    action="review.login-failed",
                    occurred_at=utcnow(),
                    details={"method": "oidc"},
                )
            return web.error(401, "Sign-in with the identity provider failed.")
        with transaction(web.ctx.session_factory) as db:
            user: ReviewUser = oidc_user(
                session=db,
                issuer=identity.issuer,
                subject=identity.subject,
                username=identity.username,
                role=identity.role,
            )
            if not user.active:
                return web.error(403, "Your account is disabled.")
            token = start_session(session=db, user=user, method="oidc", settings=self.settings)
            target = home(user.role)
        # A SameSite=Strict cookie set during a cross-site redirect chain would not be sent
        # on the next redirect; a same-site page that moves on by itself gets it sent.
        response = web.render("continue.html", {"target": target})
        web.set_session_cookie(response, request, token)
        response.delete_cookie(FLOW_COOKIE, path=f"{PREFIX}/oidc")
        return response


async def _guarded(web: ReviewWeb, work: Callable[..., Response], *args: Any) -> Response:
    """Run ``work`` in the thread pool; a database failure answers a 503 page."""
    try:
        return await run_in_threadpool(work, *args)
    except SQLAlchemyError as exc:
        logger.error("sign-in page failed on the database: %s", type(exc).__name__)
        return web.error(503, "The database is not available; try again shortly.")


def install_auth_routes(router: APIRouter, web: ReviewWeb) -> None:
    """``/audit/login``, ``/audit/logout``, ``/audit/oidc/login``, ``/audit/oidc/callback``."""
    pages = AuthPages(web)
    router.add_api_route("/login", pages.login_form, methods=["GET"])

    @router.post("/login")
    async def login(request: Request) -> Response:
        return await _guarded(web, pages.login, request, await read_form(request))

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        return await _guarded(web, pages.logout, request, await read_form(request))

    @router.get("/oidc/login")
    async def oidc_login(request: Request) -> Response:
        return await _guarded(web, pages.oidc_login, request)

    @router.get("/oidc/callback")
    async def oidc_callback(request: Request) -> Response:
        return await _guarded(web, pages.oidc_callback, request)
