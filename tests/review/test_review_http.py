"""The review pages over real HTTP against a live engine: sign-in, pages, access, audit."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from sqlalchemy import select

from cds.core.db.models import AuditEntry, ReviewSession, ReviewVerdict
from cds.fhir.validation import validate
from tests.review.conftest import Live
from tests.review.helpers import csrf, field, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _actions(live: Live) -> list[str]:
    with live.ctx.session_factory() as session:
        return list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)))


def test_sign_in_list_page_and_sign_out(live: Live) -> None:
    with live.client() as client:
        assert client.get("/audit/predictions").headers["location"].startswith("/audit/login")
        response = sign_in(client, "clin")
        assert response.status_code == 303
        assert response.headers["location"] == "/audit/predictions"
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/audit" in cookie

        listing = client.get("/audit/predictions")
        assert listing.status_code == 200
        assert listing.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in listing.headers["content-security-policy"]
        assert listing.text.count('data-testid="prediction-row"') == 3
        assert live.seeded.mrn_a in listing.text  # identifiers in the page body only

        page = client.get(f"/audit/predictions/{live.seeded.current}")
        assert page.status_code == 200
        for testid in ("timeline", "charts", "image-section", "provenance", "cds-card", "history"):
            assert f'data-testid="{testid}"' in page.text, testid
        assert "overridden" in page.text  # the EHR's feedback on the card
        assert "hl7v2" in page.text and "LAB^SYN" in page.text  # provenance
        image = client.get(f"/audit/predictions/{live.seeded.current}/heatmap.png")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

        thin = client.get(f"/audit/predictions/{live.seeded.insufficient}")
        assert 'data-testid="insufficient"' in thin.text and "image" in thin.text

        token = field(page.text, "csrf")
        out = client.post("/audit/logout", data={"csrf": token})
        assert out.headers["location"] == "/audit/login?ended=logout"
        assert client.get("/audit/predictions").status_code == 303
    actions = _actions(live)
    for action in ("review.login", "review.list", "review.view", "review.image", "review.logout"):
        assert action in actions, action


def test_wrong_password_is_refused_and_audited(live: Live) -> None:
    with live.client() as client:
        response = sign_in(client, "clin", "not the password at all")
        assert response.status_code == 401
        assert (
            "set-cookie" not in response.headers
            or "cdsfusion_review=" not in response.headers.get("set-cookie", "")
        )
    assert "review.login-failed" in _actions(live)


def test_login_form_without_its_token_is_refused(live: Live) -> None:
    with live.client() as client:
        client.get("/audit/login")
        response = client.post(
            "/audit/login", data={"login_token": "x", "username": "clin", "password": "y" * 20}
        )
        assert response.status_code == 400


FORBIDDEN = {
    "clin": [
        ("GET", "/audit/trail"),
        ("GET", "/audit/admin/users"),
        ("POST", "/audit/trail/export"),
    ],
    "audi": [("GET", "/audit/admin/users"), ("POST", "/audit/predictions/{id}/verdict")],
    "boss": [
        ("GET", "/audit/predictions"),
        ("GET", "/audit/predictions/{id}"),
        ("GET", "/audit/predictions/{id}/image.png"),
    ],
}


@pytest.mark.parametrize("username", sorted(FORBIDDEN))
def test_each_role_gets_403_on_its_forbidden_pages(live: Live, username: str) -> None:
    with live.client() as client:
        sign_in(client, username)
        token = csrf(client)
        for method, path in FORBIDDEN[username]:
            url = path.format(id=live.seeded.current)
            response = (
                client.get(url)
                if method == "GET"
                else client.post(url, data={"csrf": token, "verdict": "agree"})
            )
            assert response.status_code == 403, (username, method, url)
    assert "review.forbidden" in _actions(live)


def test_a_form_without_the_csrf_token_is_refused(live: Live) -> None:
    with live.client() as client:
        sign_in(client, "clin")
        response = client.post(
            f"/audit/predictions/{live.seeded.current}/verdict", data={"verdict": "agree"}
        )
        assert response.status_code == 403
    with live.ctx.session_factory() as session:
        assert session.scalar(select(ReviewVerdict.id)) is None


def test_verdict_is_kept_with_its_hash_in_the_audit_chain(live: Live) -> None:
    with live.client() as client:
        sign_in(client, "clin")
        token = csrf(client)
        response = client.post(
            f"/audit/predictions/{live.seeded.current}/verdict",
            data={"csrf": token, "verdict": "disagree", "comment": "Lactate was a lab error."},
        )
        assert response.status_code == 303
        page = client.get(f"/audit/predictions/{live.seeded.current}")
        assert "Lactate was a lab error." in page.text
    with live.ctx.session_factory() as session:
        verdict = session.scalars(select(ReviewVerdict)).one()
        entry = session.get(AuditEntry, verdict.audit_entry_id)
    assert entry is not None and entry.action == "review.disagree"
    assert "Lactate" not in json.dumps(entry.details)  # free text stays out of the log
    import hashlib

    assert (
        entry.details["comment_sha256"] == hashlib.sha256(b"Lactate was a lab error.").hexdigest()
    )


def test_patient_filter_is_posted_never_in_a_url(live: Live) -> None:
    with live.client() as client:
        sign_in(client, "audi")
        token = csrf(client, "/audit/predictions")
        response = client.post(
            "/audit/predictions",
            data={"csrf": token, "action": "apply", "patient_identifier": live.seeded.mrn_b},
        )
        assert response.status_code == 303
        assert live.seeded.mrn_b not in response.headers["location"]
        listing = client.get(response.headers["location"])
        rows = listing.text.count('data-testid="prediction-row"')
        assert rows == 1 and str(live.seeded.insufficient) in listing.text
        client.post("/audit/predictions", data={"csrf": token, "action": "clear"})
        assert client.get("/audit/predictions").text.count('data-testid="prediction-row"') == 3
    with live.ctx.session_factory() as session:
        details = json.dumps(
            list(
                session.scalars(
                    select(AuditEntry.details).where(AuditEntry.action == "review.list")
                )
            )
        )
    assert live.seeded.mrn_b not in details


def test_idle_session_expires_and_login_page_says_so(live: Live) -> None:
    with live.client() as client:
        sign_in(client, "clin")
        assert client.get("/audit/predictions").status_code == 200
        with live.ctx.session_factory() as session, session.begin():
            row = session.scalars(select(ReviewSession)).one()
            row.last_seen_at = row.last_seen_at.replace(year=row.last_seen_at.year - 1)
        expired = client.get("/audit/predictions")
        assert expired.status_code == 303
        assert "ended=idle" in expired.headers["location"]
        login = client.get(expired.headers["location"])
        assert 'data-testid="login-message"' in login.text
        assert client.get("/audit/predictions").status_code == 303  # stays ended
    with live.ctx.session_factory() as session:
        row = session.scalars(select(ReviewSession)).one()
    assert row.end_reason == "idle"
    assert "review.session-expired" in _actions(live)


def test_audit_export_as_fhir_bundle_and_csv(live: Live) -> None:
    with live.client() as client:
        sign_in(client, "audi")
        token = csrf(client, "/audit/trail")
        client.get(f"/audit/predictions/{live.seeded.current}")
        form = {"csrf": token, "date_from": "2000-01-01", "date_to": "2100-01-01"}
        fhir = client.post("/audit/trail/export", data={**form, "format": "fhir"})
        assert fhir.status_code == 200
        assert fhir.headers["content-type"].startswith("application/fhir+json")
        bundle = json.loads(fhir.content)
        assert bundle["resourceType"] == "Bundle" and bundle["entry"]
        for entry in bundle["entry"]:
            validate(entry["resource"])
        views = [
            e["resource"]
            for e in bundle["entry"]
            if {"system": "urn:cdsfusion:audit-action", "code": "review.view"}
            in e["resource"]["subtype"]
        ]
        assert views and views[0]["entity"][0]["what"]["identifier"]["value"] == str(
            live.seeded.current
        )
        table = client.post("/audit/trail/export", data={**form, "format": "csv"})
        rows = list(csv.DictReader(io.StringIO(table.text)))
        assert {"review.login", "review.view", "cds.feedback"} <= {r["action"] for r in rows}
        assert len(rows) == len(bundle["entry"]) or len(rows) == len(bundle["entry"]) + 1
    assert "review.export" in _actions(live)


def test_no_phi_in_urls_of_any_page(live: Live) -> None:
    with live.client() as client:
        sign_in(client, "clin")
        page = client.get(f"/audit/predictions/{live.seeded.current}").text
        listing = client.get("/audit/predictions").text
    for html in (page, listing):
        for url in re.findall(r'(?:href|src|action)="([^"]+)"', html):
            assert live.seeded.mrn_a not in url and live.seeded.mrn_b not in url
