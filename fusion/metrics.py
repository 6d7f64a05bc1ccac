"""Evaluation metrics in numpy: AUROC, AUPRC, ECE, Brier, calibration curve, bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties).

    Args:
        labels: 0/1 outcomes.
        scores: Higher means more likely 1.

    Returns:
        AUROC, or NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mid = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mid, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision, step interpolation)."""
    labels = np.asarray(labels).astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / n_pos)


def brier(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    return float(np.mean((np.asarray(probabilities) - np.asarray(labels)) ** 2))


def calibration_curve(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10
) -> list[dict[str, float]]:
    """Equal-width reliability bins.

    Args:
        labels: 0/1 outcomes.
        probabilities: Predicted probabilities.
        n_bins: Number of bins on [0, 1]. Defaults to 10.

    Returns:
        Per non-empty bin: ``mean_predicted``, ``observed_rate`` and ``count``.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    bins = np.minimum((probabilities * n_bins).astype(int), n_bins - 1)
    points = []
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            points.append(
                {
                    "mean_predicted": float(probabilities[inside].mean()),
                    "observed_rate": float(labels[inside].mean()),
                    "count": int(inside.sum()),
                }
            )
    return points


def ece(labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error over equal-width bins (count-weighted |gap|)."""
    points = calibration_curve(labels, probabilities, n_bins)
    total = sum(p["count"] for p in points)
    if total == 0:
        return float("nan")
    return float(
        sum(p["count"] * abs(p["mean_predicted"] - p["observed_rate"]) for p in points) / total
    )


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    n_resamples: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a metric.

    Args:
        metric: ``metric(labels, scores) -> float``.
        labels: 0/1 outcomes.
        scores: Scores or probabilities.
        n_resamples: Bootstrap resamples. Defaults to 500.
        level: Confidence level. Defaults to 0.95.
        seed: Resampling seed. Defaults to 0.

    Returns:
        (low, high); NaN when every resample was degenerate.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    return _percentile_bootstrap(
        lambda idx: metric(labels[idx], scores[idx]),
        len(labels),
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )


def ece_sampling_floor(
    probabilities: np.ndarray, n_bins: int = 10, *, n_draws: int = 200, seed: int = 0
) -> float:
    """The ECE that sampling noise alone gives on this many points.

    The binned ECE of a finite sample is biased upward: even a perfectly calibrated
    forecaster shows a gap in every bin, of order ``sqrt(p (1 - p) / n_bin)``. This is the
    mean ECE of such a forecaster, with outcomes drawn from ``probabilities`` themselves,
    on the same points and bins: the part of a measured ECE that is noise, not
    miscalibration.

    Args:
        probabilities: Predicted probabilities of the evaluated sample.
        n_bins: Number of equal-width bins, as in :func:`ece`. Defaults to 10.
        n_draws: Monte Carlo draws of the outcomes. Defaults to 200.
        seed: Seed of the draws. Defaults to 0.

    Returns:
        The expected ECE of a calibrated forecaster (NaN for an empty sample).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if len(probabilities) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    draws = [
        ece(
            (rng.random(len(probabilities)) < probabilities).astype(np.int64), probabilities, n_bins
        )
        for _ in range(n_draws)
    ]
    return float(np.mean(draws))


def paired_bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    n_resamples: int = 500,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(a) - metric(b)`` on the same resamples.

    Args:
        metric: ``metric(labels, scores) -> float``.
        labels: 0/1 outcomes.
        scores_a, scores_b: Two models' scores of the same points.
        n_resamples: Bootstrap resamples. Defaults to 500.
        level: Confidence level. Defaults to 0.95.
        seed: Resampling seed. Defaults to 0.

    Returns:
        (low, high); NaN when every resample was degenerate or n_resamples is 0.
    """
    labels = np.asarray(labels)
    scores_a, scores_b = np.asarray(scores_a), np.asarray(scores_b)
    return _percentile_bootstrap(
        lambda idx: metric(labels[idx], scores_a[idx]) - metric(labels[idx], scores_b[idx]),
        len(labels),
        n_resamples=n_resamples,
        level=level,
        seed=seed,
    )


def _percentile_bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_resamples: int,
    level: float,
    seed: int,
) -> tuple[float, float]:
    """Percentile interval of ``statistic(resampled indices)``; NaN if all degenerate."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        value = statistic(rng.integers(0, n, size=n))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
