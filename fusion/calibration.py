"""Post-hoc calibration: temperature scaling and split-conformal intervals per pattern.

Temperature scaling (Guo et al., 2017) divides the logit by one scalar fitted by maximum
likelihood on a held-out split. The conformal interval is split-conformal (Vovk;
Angelopoulos & Bates, 2021) with the absolute residual ``|y - p|`` as nonconformity score,
calibrated separately for every missingness pattern (Mondrian conformal), so coverage
holds per pattern and not only on average: with probability at least ``coverage`` the
observed outcome (0 or 1) lies in ``[p - q, p + q]`` clipped to [0, 1].

The plain split-conformal quantile (the ``ceil((n + 1) coverage)``-th smallest score)
over-covers by up to ``1 / (n + 1)``, about half of that on average. The randomized
(smoothed) quantile draws its rank as ``floor((n + 1) coverage + u)`` with ``u`` uniform on
[0, 1), once per pattern at fit time from a seeded generator, so that the expected coverage
is exactly ``coverage`` while every later prediction stays deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``sigmoid(logit / T)``.

    A golden-section search over log T in [log 0.05, log 20].

    Args:
        logits: Held-out logits.
        labels: Their 0/1 outcomes.

    Returns:
        T > 0 (1.0 for an empty split).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if len(logits) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    low, high = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(80):
        a = high - ratio * (high - low)
        b = low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2.0)


def conformal_quantile(scores: np.ndarray, coverage: float, *, u: float | None = None) -> float:
    """The split-conformal quantile of nonconformity scores.

    Without ``u``: the ``ceil((n + 1) coverage)``-th smallest score, whose coverage is at
    least ``coverage`` (and at most ``coverage + 1 / (n + 1)`` for distinct scores). With
    ``u``: the ``floor((n + 1) coverage + u)``-th smallest score, a randomized rank whose
    coverage, averaged over ``u`` uniform on [0, 1), is exactly ``coverage`` (rank 0 gives
    0.0, an interval that covers nothing but the point itself).

    Args:
        scores: Calibration nonconformity scores.
        coverage: Nominal coverage in (0, 1).
        u: Optional uniform draw in [0, 1) for the randomized (smoothed) rank.

    Returns:
        The quantile; 1.0 (the whole [0, 1] range) when n is too small for the rank to
        exist.

    Raises:
        ValueError: When ``u`` lies outside [0, 1).
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    target = (len(scores) + 1) * coverage
    if u is None:
        rank = math.ceil(target)
    elif 0.0 <= u < 1.0:
        rank = math.floor(target + u)
    else:
        raise ValueError(f"u must lie in [0, 1), not {u}")
    if rank > len(scores):
        return 1.0
    if rank < 1:
        return 0.0
    return float(scores[rank - 1])


@dataclass
class Calibration:
    """Fitted post-hoc calibration, stored in the checkpoint.

    Attributes:
        temperature: Logit divisor. 1.0 when not fitted.
        coverage: Nominal coverage of the intervals.
        quantiles: Conformal quantile per missingness pattern key.
        pooled_quantile: Quantile over all calibration points (rare patterns).
        counts: Calibration points per pattern.
        fitted: Whether this came from a held-out split.
        randomized: Whether the quantiles use the randomized rank (exact expected
            coverage) rather than the conservative one.
    """

    temperature: float = 1.0
    coverage: float = 0.9
    quantiles: dict[str, float] = field(default_factory=dict)
    pooled_quantile: float = 1.0
    counts: dict[str, int] = field(default_factory=dict)
    fitted: bool = False
    randomized: bool = False

    def probability(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw logits."""
        return _sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature)

    def interval(self, probability: float, pattern: str) -> tuple[float, float]:
        """The conformal interval of one calibrated probability under a pattern."""
        q = self.quantiles.get(pattern, self.pooled_quantile)
        return max(0.0, probability - q), min(1.0, probability + q)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state."""
        return {
            "temperature": self.temperature,
            "coverage": self.coverage,
            "quantiles": dict(self.quantiles),
            "pooled_quantile": self.pooled_quantile,
            "counts": dict(self.counts),
            "fitted": self.fitted,
            "randomized": self.randomized,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`."""
        return cls(
            temperature=float(data["temperature"]),
            coverage=float(data["coverage"]),
            quantiles={k: float(v) for k, v in data["quantiles"].items()},
            pooled_quantile=float(data["pooled_quantile"]),
            counts={k: int(v) for k, v in data["counts"].items()},
            fitted=bool(data["fitted"]),
            randomized=bool(data.get("randomized", False)),
        )


def fit_calibration(
    *,
    temperature_logits: np.ndarray,
    temperature_labels: np.ndarray,
    conformal_logits: np.ndarray,
    conformal_labels: np.ndarray,
    conformal_patterns: list[str],
    coverage: float,
    min_pattern_count: int,
    randomized: bool = True,
    seed: int = 0,
) -> Calibration:
    """Fit the temperature, then the conformal quantile of each missingness pattern.

    Args:
        temperature_logits, temperature_labels: Held-out points as they occur (natural
            missingness) for the temperature.
        conformal_logits, conformal_labels, conformal_patterns: Held-out points for the
            conformal quantiles, each with its pattern key (``fusion.inputs.pattern_key``).
        coverage: Nominal coverage, e.g. 0.9.
        min_pattern_count: Points a pattern needs for its own quantile.
        randomized: Use the randomized rank of :func:`conformal_quantile` (expected
            coverage exactly ``coverage``) instead of the conservative one. Defaults to
            True.
        seed: Seed of the uniform draws of the randomized ranks (one per pattern, in
            sorted pattern order, then one for the pooled quantile). Defaults to 0.

    Returns:
        The fitted Calibration.
    """
    temperature = fit_temperature(temperature_logits, temperature_labels)
    probabilities = _sigmoid(np.asarray(conformal_logits, dtype=np.float64) / temperature)
    scores = np.abs(np.asarray(conformal_labels, dtype=np.float64) - probabilities)
    patterns = np.asarray(conformal_patterns)
    rng = np.random.default_rng([seed, 9001])

    def quantile(values: np.ndarray) -> float:
        draw = float(rng.random())
        return conformal_quantile(values, coverage, u=draw if randomized else None)

    quantiles: dict[str, float] = {}
    counts: dict[str, int] = {}
    for key in sorted(set(conformal_patterns)):
        inside = patterns == key
        counts[key] = int(inside.sum())
        if counts[key] >= min_pattern_count:
            quantiles[key] = quantile(scores[inside])
    return Calibration(
        temperature=temperature,
        coverage=coverage,
        quantiles=quantiles,
        pooled_quantile=quantile(scores),
        counts=counts,
        fitted=True,
        randomized=randomized,
    )
