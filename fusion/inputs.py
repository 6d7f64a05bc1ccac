"""The model's input and output types: plain, JSON-friendly dataclasses.

The rest of the engine builds a :class:`BundleInput` from a database bundle (the temporal
aligner chooses what goes in); :class:`fusion.predictor.Predictor` turns a list of them into
:class:`PredictionOutput` objects. This module imports numpy only, never torch, so that
light processes can build inputs and read outputs.

Times are seconds relative to the anchor (the moment the risk is assessed): negative
values lie before the anchor.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MODALITIES: tuple[str, ...] = ("image", "notes", "labs", "vitals")
"""The four modalities whose absence the model handles and reports, in a fixed order."""

CATEGORY_LABORATORY = "laboratory"
"""FHIR ``observation-category`` code for laboratory results (the ``labs`` modality)."""
CATEGORY_VITAL_SIGNS = "vital-signs"
"""FHIR ``observation-category`` code for vital signs (the ``vitals`` modality)."""

LOINC_SYSTEM = "http://loinc.org"
UCUM_SYSTEM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class NoteItem:
    """One clinical note.

    Attributes:
        text: Plain text of the note (UTF-8).
        relative_seconds: When the note was written, seconds relative to the anchor.
            Defaults to 0.
    """

    text: str
    relative_seconds: float = 0.0


@dataclass(frozen=True)
class ObsItem:
    """One numeric observation (a lab result or a vital sign).

    Attributes:
        code_system: Code system URI, e.g. ``http://loinc.org``.
        code: Code in that system, e.g. LOINC ``6690-2`` (leukocytes).
        value: Numeric value in ``unit``.
        unit: UCUM unit code, e.g. ``10*3/uL``.
        relative_seconds: Effective time, seconds relative to the anchor.
        category: FHIR observation category: ``laboratory`` or ``vital-signs``; other
            categories are ignored by the model.
    """

    code_system: str
    code: str
    value: float
    unit: str
    relative_seconds: float
    category: str

    @property
    def modality(self) -> str | None:
        """``labs``, ``vitals`` or None for a category the model does not use."""
        if self.category == CATEGORY_LABORATORY:
            return "labs"
        if self.category == CATEGORY_VITAL_SIGNS:
            return "vitals"
        return None


@dataclass(frozen=True)
class Demographics:
    """Demographics at the anchor.

    Attributes:
        age_years: Age in years, or None when unknown.
        sex: FHIR ``AdministrativeGender`` code (``male``, ``female``, ``other``,
            ``unknown``) or None.
    """

    age_years: float | None
    sex: str | None


@dataclass
class BundleInput:
    """Everything the model may see about one patient at one anchor time.

    Attributes:
        image: A 2-D pixel array (rows, columns) of a chest radiograph, any size and any
            numeric dtype (uint16 from DICOM is typical, after the rescale slope and
            intercept); None when there is no image. The model resizes it.
        notes: Clinical notes, any order. Empty when there are none.
        observations: Labs and vital signs, any order. Empty when there are none.
        demographics: Age and sex, or None.
        bundle_id: An opaque, non-PHI identifier carried through to logs; optional.
    """

    image: np.ndarray | None = None
    notes: list[NoteItem] = field(default_factory=list)
    observations: list[ObsItem] = field(default_factory=list)
    demographics: Demographics | None = None
    bundle_id: str | None = None

    def present_modalities(self) -> list[str]:
        """The modalities with usable content, in :data:`MODALITIES` order."""
        present = []
        if self.image is not None and self.image.ndim == 2 and self.image.size > 0:
            present.append("image")
        if any(note.text.strip() for note in self.notes):
            present.append("notes")
        kinds = {obs.modality for obs in self.observations if np.isfinite(obs.value)}
        present.extend(m for m in ("labs", "vitals") if m in kinds)
        return present

    def missing_modalities(self) -> list[str]:
        """The modalities without usable content, in :data:`MODALITIES` order."""
        present = set(self.present_modalities())
        return [m for m in MODALITIES if m not in present]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; the image is base64 of its raw bytes."""
        image = None
        if self.image is not None:
            array = np.ascontiguousarray(self.image)
            image = {
                "shape": list(array.shape),
                "dtype": array.dtype.str,
                "data": base64.b64encode(array.tobytes()).decode("ascii"),
            }
        return {
            "image": image,
            "notes": [asdict(n) for n in self.notes],
            "observations": [asdict(o) for o in self.observations],
            "demographics": None if self.demographics is None else asdict(self.demographics),
            "bundle_id": self.bundle_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BundleInput:
        """Inverse of :meth:`to_dict`."""
        image = None
        if data.get("image") is not None:
            raw = base64.b64decode(data["image"]["data"])
            image = np.frombuffer(raw, dtype=np.dtype(data["image"]["dtype"]))
            image = image.reshape(data["image"]["shape"]).copy()
        demographics = data.get("demographics")
        return cls(
            image=image,
            notes=[NoteItem(**n) for n in data.get("notes", [])],
            observations=[ObsItem(**o) for o in data.get("observations", [])],
            demographics=None if demographics is None else Demographics(**demographics),
            bundle_id=data.get("bundle_id"),
        )


@dataclass
class PredictionOutput:
    """One prediction, ready for the worker to store and a review page to show.

    Attributes:
        probability: Calibrated probability of the outcome (temperature-scaled model
            output), in [0, 1].
        logit: The model's raw logit before temperature scaling.
        interval_low: Lower end of the split-conformal interval, in [0, 1].
        interval_high: Upper end of the split-conformal interval, in [0, 1]. With
            probability ``coverage`` the observed outcome (0 or 1) lies in the interval.
        coverage: Nominal coverage of the interval, e.g. 0.9.
        calibrated: True when a temperature and conformal quantiles were fitted on a
            held-out split; False means the probability is the raw sigmoid.
        attributions: JSON-serialisable explanation; see ``fusion/README.md``.
        missing_modalities: Modalities absent from the input (subset of MODALITIES).
        missingness_pattern: The present modalities joined by ``+`` (``none`` if empty),
            the key under which the conformal quantile was calibrated.
        model_name: Checkpoint model name.
        model_version: Checkpoint model version.
        model_sha256: sha256 of the checkpoint weights file.
    """

    probability: float
    logit: float
    interval_low: float
    interval_high: float
    coverage: float
    calibrated: bool
    attributions: dict[str, Any]
    missing_modalities: list[str]
    missingness_pattern: str
    model_name: str
    model_version: str
    model_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


def pattern_key(present: list[str] | tuple[str, ...] | frozenset[str]) -> str:
    """The canonical name of a missingness pattern, e.g. ``image+labs`` or ``none``.

    Args:
        present: The modalities present (any order, any iterable of MODALITIES).

    Returns:
        The present modalities in MODALITIES order joined by ``+``.
    """
    ordered = [m for m in MODALITIES if m in set(present)]
    return "+".join(ordered) if ordered else "none"
