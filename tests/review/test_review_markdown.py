"""Card details render as the EHR shows them, and never as live HTML."""

from __future__ import annotations

from cds.review.markdown import render


def test_card_detail_markdown_renders() -> None:
    out = str(render("**Probability:** 65% (high)\n\n- Heart rate 79 /min\n- Lactate \\[mmol/L\\]"))
    assert "<strong>Probability:</strong> 65% (high)" in out
    assert "<ul><li>Heart rate 79 /min</li><li>Lactate [mmol/L]</li></ul>" in out
    assert "**" not in out


def test_html_in_a_detail_is_escaped() -> None:
    out = str(render('<script>alert(1)</script> **<img src=x onerror="y">**'))
    assert "<script>" not in out and "<img" not in out
    assert "&lt;script&gt;" in out


def test_italics_and_plain_underscores() -> None:
    out = str(render("_Model trained on synthetic data only._ snake_case_name stays"))
    assert out.startswith("<p><em>Model trained on synthetic data only.</em>")
    assert "snake_case_name" in out
