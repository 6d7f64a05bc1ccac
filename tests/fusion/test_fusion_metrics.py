"""Metrics and calibration against brute force and known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion.calibration import Calibration, conformal_quantile, fit_calibration, fit_temperature
from fusion.metrics import (
    auprc,
    auroc,
    brier,
    calibration_curve,
    ece,
    ece_sampling_floor,
    paired_bootstrap_ci,
)


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


def _mean_quantile(n: int, randomized: bool, reps: int = 4000) -> float:
    """Mean conformal quantile of n uniform scores: the coverage of uniform test scores."""
    rng = np.random.default_rng(5)
    draws = [
        conformal_quantile(rng.random(n), 0.9, u=float(rng.random()) if randomized else None)
        for _ in range(reps)
    ]
    return float(np.mean(draws))


def test_randomized_conformal_quantile_has_exact_expected_coverage() -> None:
    # (n + 1) * 0.9 = 41.4: the conservative rank 42 covers 42/46 = 0.913 on average,
    # the randomized rank (41 or 42) covers 0.9 exactly.
    assert abs(_mean_quantile(45, randomized=True) - 0.9) < 0.003
    assert _mean_quantile(45, randomized=False) - 0.9 > 0.008


def test_randomized_conformal_quantile_ranks() -> None:
    scores = np.arange(1, 46) / 46.0
    assert conformal_quantile(scores, 0.9, u=0.0) == scores[40]
    assert conformal_quantile(scores, 0.9, u=0.99) == scores[41]
    assert conformal_quantile(scores[:1], 0.3, u=0.0) == 0.0
    assert conformal_quantile(scores[:2], 0.9, u=0.5) == 1.0
    with pytest.raises(ValueError):
        conformal_quantile(scores, 0.9, u=1.0)


def test_randomized_calibration_is_seeded_and_recorded() -> None:
    rng = np.random.default_rng(6)
    logits = rng.normal(size=400)
    y = (rng.random(400) < 0.3).astype(int)
    patterns = ["labs", "image"] * 200

    def fitted(seed: int, randomized: bool = True) -> Calibration:
        return fit_calibration(
            temperature_logits=logits,
            temperature_labels=y,
            conformal_logits=logits,
            conformal_labels=y,
            conformal_patterns=patterns,
            coverage=0.9,
            min_pattern_count=50,
            randomized=randomized,
            seed=seed,
        )

    assert fitted(1).quantiles == fitted(1).quantiles
    assert fitted(1).randomized and not fitted(1, randomized=False).randomized
    restored = Calibration.from_dict(fitted(1).to_dict())
    assert restored == fitted(1)
    old = fitted(1).to_dict()
    del old["randomized"]
    assert Calibration.from_dict(old).randomized is False
    conservative = fitted(1, randomized=False).quantiles
    assert all(fitted(1).quantiles[k] <= conservative[k] for k in conservative)


def test_ece_sampling_floor_is_the_ece_of_a_calibrated_forecaster() -> None:
    rng = np.random.default_rng(7)
    p = rng.beta(1.5, 3.0, 2000)
    measured = np.mean([ece((rng.random(2000) < p).astype(int), p) for _ in range(100)])
    floor = ece_sampling_floor(p)
    assert abs(floor - measured) < 0.1 * measured
    large = rng.beta(1.5, 3.0, 20000)
    assert ece_sampling_floor(large) < floor / 2.5
    assert np.isnan(ece_sampling_floor(np.array([])))


def test_ece_sampling_floor_is_below_a_miscalibrated_ece() -> None:
    rng = np.random.default_rng(8)
    p = rng.beta(1.5, 3.0, 5000)
    y = (rng.random(5000) < np.clip(p - 0.08, 0.0, 1.0)).astype(int)
    assert ece(y, p) > 0.05 > 2 * ece_sampling_floor(p)


def test_paired_bootstrap_ci() -> None:
    rng = np.random.default_rng(9)
    y = (rng.random(500) < 0.4).astype(int)
    good = y + rng.normal(0.0, 0.5, 500)
    noise = rng.random(500)
    assert paired_bootstrap_ci(auroc, y, good, good, n_resamples=50) == (0.0, 0.0)
    low, high = paired_bootstrap_ci(auroc, y, good, noise, n_resamples=100)
    assert 0.0 < low < auroc(y, good) - auroc(y, noise) < high
    assert np.isnan(paired_bootstrap_ci(auroc, y, good, noise, n_resamples=0)[0])
