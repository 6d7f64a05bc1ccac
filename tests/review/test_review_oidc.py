"""Sign-in through an OIDC provider (authorization code + PKCE) over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from cds.core.db.models import ReviewRole, ReviewUser
from tests.review.conftest import Live, serve_copy
from tests.review.oidc_double import OidcProvider
from tests.review.seed import Seeded

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    double = OidcProvider()
    double.start()
    yield double
    double.stop()


@pytest.fixture
def live_oidc(seeded: Seeded, tmp_path: Path, provider: OidcProvider) -> Iterator[Live]:
    yield from serve_copy(
        seeded,
        tmp_path,
        review_oidc_issuer=provider.issuer,
        review_oidc_client_id=provider.client_id,
        review_local_login=False,
    )


def _browse(client: httpx.Client, live: Live) -> httpx.Response:
    """The browser's part: app -> provider -> app callback."""
    start = client.get("/audit/oidc/login")
    assert start.status_code == 303
    authorize = start.headers["location"]
    assert "code_challenge_method=S256" in authorize and "nonce=" in authorize
    back = httpx.get(authorize, follow_redirects=False)
    assert back.status_code == 302
    return client.get(back.headers["location"].removeprefix(live.base))


def test_oidc_sign_in_with_pkce(live_oidc: Live, provider: OidcProvider) -> None:
    with live_oidc.client() as client:
        callback = _browse(client, live_oidc)
        assert callback.status_code == 200 and 'http-equiv="refresh"' in callback.text
        assert client.get("/audit/predictions").status_code == 200
        assert client.get("/audit/trail").status_code == 403  # a clinician
    assert provider.token_requests[0]["code_verifier"]
    with live_oidc.ctx.session_factory() as session:
        user = session.scalars(select(ReviewUser).where(ReviewUser.oidc_subject == "u-123")).one()
    assert user.role is ReviewRole.CLINICIAN and user.password_hash is None


def test_oidc_token_without_review_role_is_refused(live_oidc: Live, provider: OidcProvider) -> None:
    provider.claims["roles"] = ["nurse"]
    with live_oidc.client() as client:
        assert _browse(client, live_oidc).status_code == 401
        assert client.get("/audit/predictions").status_code == 303


def test_oidc_callback_with_forged_state_is_refused(live_oidc: Live) -> None:
    with live_oidc.client() as client:
        client.get("/audit/oidc/login")
        response = client.get("/audit/oidc/callback?code=x&state=forged")
        assert response.status_code == 401


def test_local_login_can_be_turned_off(live_oidc: Live) -> None:
    with live_oidc.client() as client:
        page = client.get("/audit/login")
        assert "Sign in with your organisation" in page.text and 'name="password"' not in page.text
