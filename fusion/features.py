"""BundleInput -> numeric arrays: observation vocabulary, value normalisation, image resize.

A :class:`Featurizer` is fitted once on the training inputs (observation codes, per-code
mean and standard deviation, the note vocabulary when no pretrained tokenizer is given)
and stored in the checkpoint, so inference featurises exactly as training did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from fusion.config import FusionConfig
from fusion.errors import InputError
from fusion.inputs import BundleInput
from fusion.text import build_word_vocab, encode_notes, pretrained_tokenizer, word_tokenizer

logger = logging.getLogger(__name__)

SEX_CODES: tuple[str, ...] = ("unknown", "male", "female", "other")
"""Index 0 also stands for a missing sex."""
AGE_MEAN_YEARS = 60.0
AGE_SD_YEARS = 20.0
PAD_CODE, UNKNOWN_CODE = 0, 1
CATEGORY_INDEX: dict[str, int] = {"labs": 0, "vitals": 1}
HOUR_SECONDS = 3600.0


@dataclass
class EncodedBundle:
    """One BundleInput as arrays (times in hours relative to the anchor).

    Attributes:
        image: (S, S) float32 image scaled to about [-0.5, 0.5], or None.
        image_shape: Original (rows, columns) of the image, or None.
        note_ids, note_times: Token ids and per-token note time (hours); empty when no
            notes.
        note_tokens: Token strings (for saliency).
        obs_codes, obs_values, obs_times, obs_category: One entry per kept observation:
            code index, normalised value, time (hours), 0 labs / 1 vitals.
        obs_source: Index of each kept observation in ``BundleInput.observations``.
        age_z: Standardised age ((age - 60) / 20), NaN when unknown.
        sex: Index into :data:`SEX_CODES`.
        has_demographics: Whether demographics were given.
    """

    image: np.ndarray | None
    image_shape: tuple[int, int] | None
    note_ids: np.ndarray
    note_times: np.ndarray
    note_tokens: list[str]
    obs_codes: np.ndarray
    obs_values: np.ndarray
    obs_times: np.ndarray
    obs_category: np.ndarray
    obs_source: np.ndarray
    age_z: float
    sex: int
    has_demographics: bool
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Token count used to bucket similar bundles into one batch."""
        return len(self.note_ids) + len(self.obs_codes)


def resize_image(image: np.ndarray, side: int) -> np.ndarray:
    """Scale a 2-D image to ``side`` x ``side`` and its 1st-99th percentiles to [-0.5, 0.5].

    Args:
        image: 2-D array, any numeric dtype.
        side: Output side, pixels.

    Returns:
        (side, side) float32 array.
    """
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise InputError("image must be a 2-D array of at least 2x2 pixels")
    low, high = np.percentile(pixels, [1.0, 99.0])
    pixels = np.clip((pixels - low) / max(float(high - low), 1e-6), 0.0, 1.0) - 0.5
    tensor = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]
    resized = F.interpolate(tensor, size=(side, side), mode="bilinear", antialias=True)
    return resized[0, 0].numpy().astype(np.float32)


class Featurizer:
    """Turns BundleInputs into :class:`EncodedBundle` arrays.

    Args:
        config: The model configuration.
        codes: Observation keys ``system|code``; index = position + 2 (0 pad, 1 unknown).
        stats: Per key (mean, sd) of the value in training data.
        vocab: Word vocabulary of the from-scratch note tokenizer; None with a pretrained
            tokenizer directory.
    """

    def __init__(
        self,
        config: FusionConfig,
        codes: list[str],
        stats: dict[str, tuple[float, float]],
        vocab: list[str] | None,
    ) -> None:
        self.config = config
        self.codes = list(codes)
        self.code_index = {key: i + 2 for i, key in enumerate(self.codes)}
        self.stats = {key: (float(m), float(s)) for key, (m, s) in stats.items()}
        self.vocab = vocab
        if config.text.pretrained_dir is not None:
            self.tokenizer = pretrained_tokenizer(config.text.pretrained_dir)
        elif vocab is not None:
            self.tokenizer = word_tokenizer(vocab)
        else:
            raise InputError("a word vocabulary is required without text.pretrained_dir")

    @property
    def n_codes(self) -> int:
        """Size of the observation code table, including pad and unknown."""
        return len(self.codes) + 2

    @property
    def vocab_size(self) -> int:
        """Size of the note vocabulary."""
        return len(self.tokenizer)

    @classmethod
    def fit(cls, config: FusionConfig, inputs: list[BundleInput]) -> Featurizer:
        """Fit codes, value statistics and (from scratch) the word vocabulary.

        Args:
            config: The model configuration.
            inputs: Training inputs.

        Returns:
            A fitted Featurizer.
        """
        values: dict[str, list[float]] = {}
        for item in inputs:
            for obs in item.observations:
                if obs.modality is not None and np.isfinite(obs.value):
                    values.setdefault(f"{obs.code_system}|{obs.code}", []).append(obs.value)
        stats = {k: (float(np.mean(v)), float(np.std(v)) or 1.0) for k, v in values.items()}
        vocab = None
        if config.text.pretrained_dir is None:
            vocab = build_word_vocab(note.text for item in inputs for note in item.notes)
        return cls(config, sorted(stats), stats, vocab)

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state for the checkpoint."""
        return {
            "codes": self.codes,
            "stats": {k: list(v) for k, v in self.stats.items()},
            "vocab": self.vocab,
        }

    @classmethod
    def from_state(cls, config: FusionConfig, state: dict[str, Any]) -> Featurizer:
        """Inverse of :meth:`state`."""
        stats = {k: (float(v[0]), float(v[1])) for k, v in state["stats"].items()}
        return cls(config, list(state["codes"]), stats, state.get("vocab"))

    def encode(self, item: BundleInput) -> EncodedBundle:
        """Featurise one bundle.

        Args:
            item: The bundle.

        Returns:
            Its arrays. Observations beyond ``max_obs_tokens`` are dropped, oldest first.
        """
        present = set(item.present_modalities())
        image = image_shape = None
        if "image" in present and item.image is not None:
            image = resize_image(item.image, self.config.image.image_size)
            image_shape = (int(item.image.shape[0]), int(item.image.shape[1]))
        note_ids: list[int] = []
        note_times: list[float] = []
        if "notes" in present:
            pairs = [(n.text, n.relative_seconds) for n in item.notes if n.text.strip()]
            note_ids, note_times = encode_notes(self.tokenizer, pairs, self.config.text.max_tokens)
        kept = [
            i
            for i, obs in enumerate(item.observations)
            if obs.modality is not None and np.isfinite(obs.value)
        ]
        kept = sorted(kept, key=lambda i: -item.observations[i].relative_seconds)
        kept = kept[: self.config.max_obs_tokens]
        codes, values, times, category = [], [], [], []
        for i in kept:
            obs = item.observations[i]
            key = f"{obs.code_system}|{obs.code}"
            codes.append(self.code_index.get(key, UNKNOWN_CODE))
            mean, sd = self.stats.get(key, (obs.value, 1.0))
            values.append(float(np.clip((obs.value - mean) / sd, -8.0, 8.0)))
            times.append(obs.relative_seconds / HOUR_SECONDS)
            category.append(CATEGORY_INDEX[str(obs.modality)])
        demographics = item.demographics
        age_z = float("nan")
        sex = 0
        if demographics is not None:
            if demographics.age_years is not None:
                age_z = (float(demographics.age_years) - AGE_MEAN_YEARS) / AGE_SD_YEARS
            if demographics.sex in SEX_CODES:
                sex = SEX_CODES.index(demographics.sex)
        return EncodedBundle(
            image=image,
            image_shape=image_shape,
            note_ids=np.asarray(note_ids, dtype=np.int64),
            note_times=np.asarray(note_times, dtype=np.float32) / HOUR_SECONDS,
            note_tokens=list(self.tokenizer.convert_ids_to_tokens(note_ids)),
            obs_codes=np.asarray(codes, dtype=np.int64),
            obs_values=np.asarray(values, dtype=np.float32),
            obs_times=np.asarray(times, dtype=np.float32),
            obs_category=np.asarray(category, dtype=np.int64),
            obs_source=np.asarray(kept, dtype=np.int64),
            age_z=age_z,
            sex=sex,
            has_demographics=demographics is not None,
        )
