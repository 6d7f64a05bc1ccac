"""Pure parts of the review pages: passwords, PNG, charts, note highlights, OIDC helpers."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import zlib

import numpy as np
import pytest

from cds.core.db.models import AuditEntry, ReviewRole
from cds.fhir.validation import validate
from cds.review.charts import Mark, Point, series_svg, timeline_svg
from cds.review.detail import calibration_note
from cds.review.export import audit_event
from cds.review.imaging import colour_map, overlay, resize_bilinear, to_grey
from cds.review.listing import ListFilters
from cds.review.notes import highlight_tokens
from cds.review.oidc import OidcError, pkce_challenge, role_from_claims
from cds.review.passwords import WeakPasswordError, check_strength, hash_password, verify_password
from cds.review.png import encode_png
from cds.review.sessions import Signer, cookie_value, token_from_cookie


def test_password_hash_round_trip() -> None:
    stored = hash_password("a long enough secret", log2_n=10)
    assert stored.startswith("scrypt$10$") and "secret" not in stored
    assert verify_password("a long enough secret", stored)
    assert not verify_password("a long enough secreT", stored)
    assert not verify_password("anything", None)
    assert not verify_password("anything", "md5$abc")
    assert hash_password("same", log2_n=10) != hash_password("same", log2_n=10)  # salted
    with pytest.raises(WeakPasswordError):
        check_strength("short")


def test_png_encoder_writes_decodable_scanlines() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    png = encode_png(grey)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    start = png.index(b"IDAT") + 4
    raw = zlib.decompress(png[start : start + int.from_bytes(png[start - 8 : start - 4], "big")])
    assert raw == b"".join(b"\x00" + bytes(row) for row in grey.tolist())
    rgb = encode_png(np.zeros((2, 2, 3), np.uint8))
    assert rgb[25] == 2  # colour type RGB in IHDR
    with pytest.raises(ValueError):
        encode_png(np.zeros((2, 2), np.float32))


def test_heatmap_overlay_is_coloured_where_hot() -> None:
    grey = to_grey(np.tile(np.linspace(0, 1000, 600, dtype=np.float32), (300, 1)))
    assert grey.shape == (256, 512) and grey.dtype == np.uint8  # long side capped at 512
    heat = np.zeros((8, 16), np.float32)
    heat[:4, :8] = 1.0
    blended = overlay(grey, heat)
    assert blended.shape == (256, 512, 3)
    hot, cold = blended[10, 10], blended[200, 400]
    assert hot[0] > hot[2]  # red where the heatmap is 1
    assert cold[0] == cold[1] == cold[2]  # untouched grey where it is 0
    assert colour_map(np.array([0.0]))[0][2] > 0.4  # low values are blue


def test_heatmap_is_interpolated_not_blocky() -> None:
    ramp = np.array([[0.0, 1.0]], np.float32)
    wide = resize_bilinear(ramp, 1, 8)
    assert wide[0, 0] == 0.0 and wide[0, -1] == 1.0  # edges clamped
    assert np.all(np.diff(wide[0]) >= 0) and len(np.unique(wide)) > 2  # a ramp, not 2 blocks
    same = resize_bilinear(np.arange(12, dtype=np.float32).reshape(3, 4), 3, 4)
    assert np.array_equal(same, np.arange(12).reshape(3, 4))


def test_charts_escape_text_and_mark_the_anchor() -> None:
    svg = timeline_svg(
        [("labs", [Mark(-3600, "<script>alert(1)</script>", "observation")])],
        start_s=-7200,
        end_s=0,
    )
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert 'class="anchor"' in svg
    chart = series_svg(
        "WBC",
        "10*3/uL",
        [Point(-7200, 12.1, "a", 0.3), Point(-3600, 9.0, "b", -0.1)],
        start_s=-86400,
        end_s=0,
    )
    assert "<polyline" in chart and 'class="point up"' in chart and 'class="point down"' in chart


def test_note_tokens_join_word_pieces_and_shade_by_score() -> None:
    tokens = highlight_tokens(
        [
            {"token": "[CLS]", "score": 0.9},
            {"token": "consol", "score": 0.1},
            {"token": "##idation", "score": 0.5},
            {"token": "absent", "score": -0.25},
        ]
    )
    assert [(t.text, t.css) for t in tokens] == [("consolidation", "up-4"), ("absent", "down-2")]
    assert highlight_tokens(None) == []


def test_pkce_and_roles() -> None:
    # RFC 7636 Appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert role_from_claims({"roles": ["cdsfusion-clinician"]}, "roles") is ReviewRole.CLINICIAN
    assert role_from_claims({"roles": "clinician auditor"}, "roles") is ReviewRole.AUDITOR
    assert role_from_claims({"groups": ["review:admin"]}, "groups") is ReviewRole.ADMIN
    with pytest.raises(OidcError):
        role_from_claims({"roles": ["nurse"]}, "roles")


def test_session_cookie_is_signed() -> None:
    signer = Signer("k" * 40)
    value = cookie_value(signer, "token123")
    assert token_from_cookie(signer, value) == "token123"
    assert token_from_cookie(signer, "token124." + value.split(".")[1]) is None
    assert token_from_cookie(Signer("other" * 10), value) is None


def test_filters_round_trip_and_calibration_note() -> None:
    filters = ListFilters(patient_ids=("a",), risk="high", feedback="none")
    assert ListFilters.from_json(filters.to_json()) == filters
    assert ListFilters.from_json({"unknown": 1}) == ListFilters()
    assert "Not calibrated" in calibration_note({"calibrated": False, "coverage": 0.9})
    assert "at least 90%" in calibration_note({"calibrated": True, "coverage": 0.9})


def test_audit_event_is_valid_fhir() -> None:
    entry = AuditEntry(
        id=7,
        occurred_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        actor="user:1",
        action="review.login",
        entity_type="review-session",
        entity_id="s-1",
        details={"method": "local"},
        prev_hash="0" * 64,
        entry_hash="1" * 64,
    )
    event = validate(audit_event(entry))
    assert event["type"]["code"] == "110114" and event["subtype"][0]["code"] == "110122"


def test_review_pages_do_not_import_torch() -> None:
    code = "import cds.review.routes, sys; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {m.partition(".")[0] for m in out.stdout.split()}
    assert not loaded & {"torch", "transformers", "fusion"}
