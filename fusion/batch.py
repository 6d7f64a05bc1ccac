"""Collation: padded tensors with masks, modality hiding, and length bucketing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from fusion.features import EncodedBundle
from fusion.inputs import MODALITIES


@dataclass
class Batch:
    """Padded tensors of B bundles. Masks are True where a token is real.

    Attributes:
        image: (B, 1, S, S) float; zeros where ``image_present`` is False.
        image_present: (B,) bool.
        note_ids, note_times, note_mask: (B, Ln) token ids, times (hours), validity.
        obs_codes, obs_values, obs_times, obs_category, obs_mask: (B, Lo) observation
            tokens: code index, normalised value, time (hours), 0 labs / 1 vitals, validity.
        age_z: (B,) standardised age; 0 where unknown (``age_known`` False).
        age_known: (B,) bool.
        sex: (B,) index into ``SEX_CODES``.
        demographics_present: (B,) bool.
    """

    image: torch.Tensor
    image_present: torch.Tensor
    note_ids: torch.Tensor
    note_times: torch.Tensor
    note_mask: torch.Tensor
    obs_codes: torch.Tensor
    obs_values: torch.Tensor
    obs_times: torch.Tensor
    obs_category: torch.Tensor
    obs_mask: torch.Tensor
    age_z: torch.Tensor
    age_known: torch.Tensor
    sex: torch.Tensor
    demographics_present: torch.Tensor

    @property
    def size(self) -> int:
        """Number of bundles B."""
        return int(self.image_present.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device``."""
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def presence(self) -> torch.Tensor:
        """(B, 4) bool: which of MODALITIES each bundle has, in MODALITIES order."""
        labs = (self.obs_mask & (self.obs_category == 0)).any(dim=1)
        vitals = (self.obs_mask & (self.obs_category == 1)).any(dim=1)
        notes = self.note_mask.any(dim=1)
        return torch.stack([self.image_present, notes, labs, vitals], dim=1)

    def hide(self, hidden: torch.Tensor) -> Batch:
        """A copy in which the modalities flagged in ``hidden`` are absent.

        Args:
            hidden: (B, 4) bool in MODALITIES order, True = treat as missing.

        Returns:
            The masked batch (tensors are shared where unchanged).
        """
        hidden = hidden.to(self.image_present.device)
        hide_obs = ((self.obs_category == 0) & hidden[:, 2:3]) | (
            (self.obs_category == 1) & hidden[:, 3:4]
        )
        return replace(
            self,
            image_present=self.image_present & ~hidden[:, 0],
            note_mask=self.note_mask & ~hidden[:, 1:2],
            obs_mask=self.obs_mask & ~hide_obs,
        )

    def keep_only(self, modalities: Sequence[str]) -> Batch:
        """A copy in which every modality not in ``modalities`` is absent."""
        keep = torch.tensor([m in modalities for m in MODALITIES], device=self.obs_mask.device)
        return self.hide((~keep).expand(self.size, len(MODALITIES)))


def _pad(rows: list[np.ndarray], length: int, dtype: torch.dtype, fill: float = 0) -> torch.Tensor:
    out = torch.full((len(rows), length), fill, dtype=dtype)
    for i, row in enumerate(rows):
        if len(row):
            out[i, : len(row)] = torch.as_tensor(row, dtype=dtype)
    return out


def collate(items: Sequence[EncodedBundle], image_size: int) -> Batch:
    """Pad encoded bundles into one :class:`Batch`.

    Args:
        items: Encoded bundles (at least one).
        image_size: Side S of the model image input, pixels.

    Returns:
        The batch; sequence lengths are the longest in the batch (at least 1).
    """
    n = len(items)
    image = torch.zeros((n, 1, image_size, image_size), dtype=torch.float32)
    for i, item in enumerate(items):
        if item.image is not None:
            image[i, 0] = torch.from_numpy(item.image)
    note_len = max(1, *(len(it.note_ids) for it in items))
    obs_len = max(1, *(len(it.obs_codes) for it in items))
    return Batch(
        image=image,
        image_present=torch.tensor([it.image is not None for it in items]),
        note_ids=_pad([it.note_ids for it in items], note_len, torch.long),
        note_times=_pad([it.note_times for it in items], note_len, torch.float32),
        note_mask=_pad([np.ones(len(it.note_ids)) for it in items], note_len, torch.bool),
        obs_codes=_pad([it.obs_codes for it in items], obs_len, torch.long),
        obs_values=_pad([it.obs_values for it in items], obs_len, torch.float32),
        obs_times=_pad([it.obs_times for it in items], obs_len, torch.float32),
        obs_category=_pad([it.obs_category for it in items], obs_len, torch.long),
        obs_mask=_pad([np.ones(len(it.obs_codes)) for it in items], obs_len, torch.bool),
        age_z=torch.tensor([0.0 if np.isnan(it.age_z) else it.age_z for it in items]),
        age_known=torch.tensor([not np.isnan(it.age_z) for it in items]),
        sex=torch.tensor([it.sex for it in items], dtype=torch.long),
        demographics_present=torch.tensor([it.has_demographics for it in items]),
    )


def bucket_by_length(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None = None
) -> list[list[int]]:
    """Group indices of similar token length into batches to limit padding.

    Args:
        lengths: Token length of each item (e.g. :attr:`EncodedBundle.length`).
        batch_size: Maximum items per batch.
        rng: When given, items of equal length and the batch order are shuffled
            (training); otherwise the order is deterministic (inference).

    Returns:
        Lists of indices into ``lengths``; every index appears exactly once.
    """
    keys = np.asarray(lengths, dtype=np.float64)
    if rng is not None:
        keys = keys + rng.random(len(keys))
    order = np.argsort(keys, kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches
