"""Chest-radiograph-like images: two lung fields with opacities driven by the lung latent."""

from __future__ import annotations

import numpy as np

IMAGE_SIDE = 64
"""Side of the synthetic radiograph, pixels."""
MAX_PIXEL = 4095
"""12-bit detector range (BitsStored 12)."""


def render_chest_image(
    rng: np.random.Generator, opacity_burden: float, side: int = IMAGE_SIDE
) -> np.ndarray:
    """Render one frontal chest-radiograph-like image.

    Soft tissue is bright, the two lung fields dark; opacities are Gaussian blobs inside
    the lungs whose summed amplitude grows with ``opacity_burden``. Exposure, position and
    quantum noise vary per image so that the burden must be read from the lung fields.

    Args:
        rng: Random generator (consumed deterministically).
        opacity_burden: Non-negative total opacity, arbitrary units (0 = clear lungs).
        side: Image side, pixels. Defaults to 64.

    Returns:
        A (side, side) uint16 array, MONOCHROME2 (higher is brighter).
    """
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) / side
    shift_x, shift_y = rng.normal(0.0, 0.02, size=2)
    body = ((xx - 0.5 - shift_x) / 0.46) ** 2 + ((yy - 0.55 - shift_y) / 0.5) ** 2 < 1.0
    image = np.where(body, 0.62, 0.08)
    lungs = np.zeros_like(image, dtype=bool)
    for centre_x in (0.32, 0.68):
        lung = ((xx - centre_x - shift_x) / 0.14) ** 2 + ((yy - 0.5 - shift_y) / 0.28) ** 2 < 1
        lungs |= lung
    image = np.where(lungs, 0.22, image)
    n_blobs = 1 + int(rng.poisson(2.0))
    weights = rng.dirichlet(np.ones(n_blobs))
    lung_y, lung_x = np.nonzero(lungs)
    for weight in weights:
        k = int(rng.integers(len(lung_y)))
        cy, cx = lung_y[k] / side, lung_x[k] / side
        width = rng.uniform(0.04, 0.09)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * width**2))
        image += lungs * blob * weight * opacity_burden * 0.35
    image *= rng.uniform(0.9, 1.1)
    image += rng.normal(0.0, 0.025, size=image.shape)
    pixels = np.clip(image, 0.0, 1.0) * MAX_PIXEL
    return pixels.round().astype(np.uint16)
