"""Top contributing factors: only things a clinician can read as evidence."""

from __future__ import annotations

from cds.fhir.factors import top_factors


def test_punctuation_tokens_are_not_factors() -> None:
    """Regression: the demo's card listed note tokens "." as top factors."""
    attributions = {
        "notes": [
            {"token": ".", "score": 0.9},
            {"token": ",", "score": -0.8},
            {"token": "consolidation", "score": 0.3},
            {"token": "[CLS]", "score": 0.7},
        ]
    }
    labels = [f.label for f in top_factors(attributions)]
    assert labels == ['note: "consolidation"']
