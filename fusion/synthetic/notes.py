"""Free-text progress notes: findings, negations ("no consolidation") and noise sentences."""

from __future__ import annotations

import numpy as np

SEVERE_LUNG = (
    "dense consolidation of the right lower lobe",
    "multifocal consolidation on exam",
    "extensive bilateral airspace opacities",
    "bronchial breath sounds and dullness at the right base",
)
MILD_LUNG = (
    "patchy opacity at the right base",
    "faint infiltrate in the left lower lobe",
    "scattered crackles at the bases",
    "possible early consolidation",
)
CLEAR_LUNG = (
    "no consolidation",
    "lungs clear to auscultation",
    "no focal opacity",
    "no infiltrate or effusion",
)
SYSTEMIC_POSITIVE = (
    "febrile overnight",
    "tachycardic and appears unwell",
    "rigors reported by nursing",
    "new confusion this morning",
)
SYSTEMIC_NEGATIVE = (
    "afebrile",
    "no fever",
    "appears comfortable",
    "denies chills",
)
NOISE = (
    "family at bedside",
    "tolerating diet",
    "ambulating in hallway",
    "plan discussed with patient",
    "pain controlled",
    "will continue current management",
    "follow up labs in the morning",
    "no acute distress overnight",
)


def write_note(rng: np.random.Generator, lung: float, inflammation: float) -> str:
    """Write one progress note whose findings are noisy reports of the latent state.

    The lung latent chooses between severe findings, mild findings and negated findings
    (thresholds 1.0 and 0.2 on the latent plus N(0, 0.5) noise); the inflammation latent
    chooses between systemic findings and their negations (threshold 0.3, same noise).
    One or two noise sentences are added and the sentences shuffled.

    Args:
        rng: Random generator.
        lung: Lung-involvement latent (standard normal in the population).
        inflammation: Inflammation latent (standard normal in the population).

    Returns:
        The note text.
    """
    lung_seen = lung + rng.normal(0.0, 0.5)
    if lung_seen > 1.0:
        lung_sentence = SEVERE_LUNG[rng.integers(len(SEVERE_LUNG))]
    elif lung_seen > 0.2:
        lung_sentence = MILD_LUNG[rng.integers(len(MILD_LUNG))]
    else:
        lung_sentence = CLEAR_LUNG[rng.integers(len(CLEAR_LUNG))]
    systemic = (
        SYSTEMIC_POSITIVE if inflammation + rng.normal(0.0, 0.5) > 0.3 else (SYSTEMIC_NEGATIVE)
    )
    sentences = [lung_sentence, systemic[rng.integers(len(systemic))]]
    n_noise = 1 + int(rng.integers(2))
    sentences += [NOISE[i] for i in rng.choice(len(NOISE), size=n_noise, replace=False)]
    order = rng.permutation(len(sentences))
    body = ". ".join(sentences[i].capitalize() for i in order)
    return f"Progress note. {body}."
