"""Metrics and calibration against brute force and known answers."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.calibration import conformal_quantile, fit_calibration, fit_temperature
from fusion.metrics import auprc, auroc, brier, calibration_curve, ece


def _auroc_brute(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=30).filter(
        lambda rows: len({r[0] for r in rows}) == 2
    )
)
def test_auroc_matches_pairwise_definition(rows: list[tuple[int, int]]) -> None:
    labels = np.array([r[0] for r in rows])
    scores = np.array([r[1] for r in rows], dtype=float)
    assert np.isclose(auroc(labels, scores), _auroc_brute(labels, scores))


def test_auroc_extremes_and_degenerate() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auroc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auroc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert np.isnan(auroc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_auprc_perfect_and_random() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auprc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    rng = np.random.default_rng(0)
    labels = rng.random(20000) < 0.3
    assert abs(auprc(labels, rng.random(20000)) - 0.3) < 0.02


def test_ece_and_brier_of_a_calibrated_forecaster() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(50000)
    y = (rng.random(50000) < p).astype(int)
    assert ece(y, p) < 0.01
    assert abs(brier(y, p) - 1 / 6) < 0.005
    assert sum(point["count"] for point in calibration_curve(y, p)) == 50000


def test_temperature_recovers_the_true_temperature() -> None:
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0.0, 2.0, 40000)
    y = (rng.random(40000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    assert abs(fit_temperature(true_logits * 2.5, y) - 2.5) < 0.15


def test_conformal_quantile_gives_coverage() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(999)
    assert conformal_quantile(scores, 0.9) == np.sort(scores)[899]
    covered = [
        np.mean(rng.random(200) <= conformal_quantile(rng.random(49), 0.9)) for _ in range(400)
    ]
    assert abs(np.mean(covered) - 0.9) < 0.01
    assert conformal_quantile(np.array([0.1, 0.2]), 0.9) == 1.0


def test_calibration_is_per_pattern_with_pooled_fallback() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=600)
    y = (rng.random(600) < 0.3).astype(int)
    patterns = ["labs"] * 500 + ["image"] * 100
    fitted = fit_calibration(
        temperature_logits=logits,
        temperature_labels=y,
        conformal_logits=logits,
        conformal_labels=y,
        conformal_patterns=patterns,
        coverage=0.9,
        min_pattern_count=200,
    )
    assert "labs" in fitted.quantiles
    assert "image" not in fitted.quantiles
    assert fitted.counts == {"labs": 500, "image": 100}
    low, high = fitted.interval(0.5, "image")
    assert np.isclose(
        high - low, min(1.0, 0.5 + fitted.pooled_quantile) - max(0.0, 0.5 - fitted.pooled_quantile)
    )
