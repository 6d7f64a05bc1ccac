"""The review pages in headless Chromium (Playwright): the clinician's whole visit.

Chromium is Debian's ``chromium`` (``/usr/bin/chromium``), launched by path; the test
skips with a visible reason where it or the ``playwright`` package is absent. Screenshots
of the main pages at 1280 and 1920 px go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cds.core.db.models import ReviewSession
from tests.review.conftest import Live, serve_copy
from tests.review.seed import PASSWORD, Seeded

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = os.environ.get("CDSFUSION_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (Debian package: chromium)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def live_short_idle(seeded: Seeded, tmp_path: Path) -> Iterator[Live]:
    yield from serve_copy(seeded, tmp_path)


def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/audit/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


@pytest.mark.parametrize("width", [1280, 1920])
def test_clinician_visit_in_chromium(browser: Any, live: Live, width: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(f"{live.base}/audit/")
        assert page.url.startswith(f"{live.base}/audit/login")
        _shot(page, f"login-{width}")
        _sign_in(page, live.base, "clin")
        page.wait_for_url("**/audit/predictions")
        assert page.locator("[data-testid=prediction-row]").count() == 3
        assert page.locator("[data-testid=current-user]").inner_text() == "clin"
        _shot(page, f"list-{width}")

        page.fill("input[name=patient_identifier]", live.seeded.mrn_a)
        page.select_option("select[name=status]", "final")
        page.click("button[value=apply]")
        page.wait_for_load_state()
        assert page.locator("[data-testid=prediction-row]").count() == 1
        assert live.seeded.mrn_a not in page.url
        _shot(page, f"list-filtered-{width}")

        page.locator("[data-testid=prediction-row] a").first.click()
        page.wait_for_url(f"**/audit/predictions/{live.seeded.current}")
        assert page.locator("[data-testid=probability]").is_visible()
        assert page.locator("[data-testid=calibration-note]").inner_text()
        assert page.locator("[data-testid=timeline] svg circle").count() >= 5
        assert page.locator("[data-testid=charts] svg polyline").count() >= 1
        heatmap = page.locator("img[data-testid=heatmap]")
        heatmap.scroll_into_view_if_needed()
        page.wait_for_function(
            "document.querySelector('img[data-testid=heatmap]').naturalWidth > 0"
        )
        assert page.locator("img[data-testid=image]").evaluate("i => i.naturalWidth") > 0
        assert page.locator("[data-testid=note-tokens] .tok").count() > 3
        assert "overridden" in page.locator("[data-testid=feedback]").inner_text()
        _shot(page, f"prediction-{width}")

        page.check("input[name=verdict][value=agree]")
        page.fill("textarea[name=comment]", "Consistent with the film.")
        page.click("[data-testid=verdict-form] button[type=submit]")
        page.wait_for_load_state()
        assert "Consistent with the film." in page.locator("[data-testid=verdicts]").inner_text()

        page.goto(f"{live.base}/audit/predictions/{live.seeded.insufficient}")
        assert page.locator("[data-testid=insufficient]").is_visible()
        _shot(page, f"insufficient-{width}")

        page.click("[data-testid=logout]")
        page.wait_for_url("**/audit/login?ended=logout")
        page.goto(f"{live.base}/audit/predictions")
        assert "/audit/login" in page.url
    finally:
        context.close()
    assert all(url.startswith(live.base) for url in requests), "a page reached outside the engine"


def test_expired_session_sends_the_browser_to_login(browser: Any, live: Live) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        _sign_in(page, live.base, "audi")
        page.wait_for_url("**/audit/predictions")
        with live.ctx.session_factory() as session, session.begin():
            row = session.scalars(select(ReviewSession)).one()
            row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        page.goto(f"{live.base}/audit/predictions/{live.seeded.current}")
        assert "/audit/login" in page.url and "ended=absolute" in page.url
        assert page.locator("[data-testid=login-message]").is_visible()
        _shot(page, "expired-1280")
    finally:
        context.close()


def test_auditor_trail_and_admin_users_pages(browser: Any, live: Live) -> None:
    for username, path, name in (
        ("audi", "/audit/trail", "trail"),
        ("boss", "/audit/admin/users", "users"),
    ):
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        try:
            _sign_in(page, live.base, username)
            page.wait_for_load_state()
            page.goto(f"{live.base}{path}")
            if name == "trail":
                page.click("text=Verify the chain now")
                page.wait_for_load_state()
                assert "intact" in page.locator("[data-testid=chain-result]").inner_text()
            _shot(page, f"{name}-1280")
        finally:
            context.close()
