"""The synthetic cohort: a documented generative process with a known true risk.

Generative process for patient ``i`` (all draws from ``numpy.random.default_rng([seed, i])``,
so a patient does not depend on the cohort size):

1. Demographics: age ~ U(18, 95) years, sex male/female with probability 1/2; the anchor
   (assessment time) is a random day of 2024 at 08:00 UTC.
2. Latent state: (inflammation, lung) ~ N(0, [[1, 0.3], [0.3, 1]]).
3. True risk: ``sigmoid(-1.3 + 0.9 inflammation + 0.9 lung + 0.5 age_z
   + 1.2 max(inflammation, 0) max(lung, 0))`` with ``age_z = (age - 60) / 20``. The last
   term is the interaction: inflammation shows in labs and vitals, lung involvement in the
   image and notes, so only a model that combines them can use it.
4. Label ~ Bernoulli(true risk). The oracle AUROC is the AUROC of the true risk.
5. Labs: 1 + Poisson(0.8) draws at U(-72 h, -0.5 h), each code of
   :data:`~fusion.synthetic.codes.LAB_SPECS` present with probability 0.85. Vitals:
   1 + Poisson(2) sets at U(-48 h, 0), each code present with probability 0.9. A value is
   ``mean + sd * (w(t) (a inflammation + b lung) + c age_z + N(0, 0.6))`` with
   ``w(t) = 0.5 + 0.5 exp(t / 24 h)``: recent values carry more signal (irregular sampling).
6. Image: a 64x64 uint16 radiograph with opacity burden
   ``softplus(1.8 (lung + N(0, 0.3)) - 0.5)`` (:func:`render_chest_image`).
7. Notes: one or two progress notes at U(-48 h, 0) (:func:`write_note`).
8. Missingness, completely at random: each modality is removed with its rate in
   ``missing_rates`` (defaults: image 0.3, notes 0.3, labs 0.2, vitals 0.1).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusion.inputs import (
    LOINC_SYSTEM,
    MODALITIES,
    BundleInput,
    Demographics,
    NoteItem,
    ObsItem,
)
from fusion.synthetic.codes import LAB_SPECS, VITAL_SPECS, ObservationSpec
from fusion.synthetic.images import render_chest_image
from fusion.synthetic.notes import write_note

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

DEFAULT_MISSING_RATES: dict[str, float] = {"image": 0.3, "notes": 0.3, "labs": 0.2, "vitals": 0.1}
HOUR = 3600.0


@dataclass
class SyntheticPatient:
    """One invented patient with everything the engine can receive about them.

    Attributes:
        index: Position in the cohort.
        seed: Cohort seed (with ``index`` it determines every UID).
        patient_id: Medical record number, e.g. ``SYN000042`` (synthetic).
        family_name, given_name: Synthetic name.
        sex: FHIR AdministrativeGender code.
        birth_date: Date of birth.
        age_years: Age at the anchor, years.
        anchor: Assessment time (UTC).
        inflammation, lung: The latent state.
        true_risk: Probability of the outcome given the latent state and age.
        label: Sampled outcome (0 or 1).
        image: 64x64 uint16 radiograph, or None when missing.
        image_relative_seconds: Acquisition time relative to the anchor.
        notes: Progress notes (relative times).
        observations: Labs and vitals (relative times, LOINC codes, UCUM units).
    """

    index: int
    seed: int
    patient_id: str
    family_name: str
    given_name: str
    sex: str
    birth_date: dt.date
    age_years: float
    anchor: dt.datetime
    inflammation: float
    lung: float
    true_risk: float
    label: int
    image: np.ndarray | None
    image_relative_seconds: float
    notes: list[NoteItem] = field(default_factory=list)
    observations: list[ObsItem] = field(default_factory=list)

    def absolute_time(self, relative_seconds: float) -> dt.datetime:
        """The UTC datetime of a time relative to the anchor."""
        return self.anchor + dt.timedelta(seconds=float(relative_seconds))

    def to_bundle_input(self) -> BundleInput:
        """The model input the engine would build for this patient at the anchor."""
        return BundleInput(
            image=None if self.image is None else self.image.copy(),
            notes=list(self.notes),
            observations=list(self.observations),
            demographics=Demographics(age_years=self.age_years, sex=self.sex),
            bundle_id=f"synthetic-{self.seed}-{self.index}",
        )

    def present_modalities(self) -> list[str]:
        """The modalities this patient has, in MODALITIES order."""
        return self.to_bundle_input().present_modalities()

    def to_dicom_datasets(self) -> list[Dataset]:
        """The radiograph as DICOM DX datasets (empty when the image is missing)."""
        from fusion.synthetic.dicom import patient_to_dicom

        return patient_to_dicom(self)

    def to_fhir_resources(self) -> list[dict[str, Any]]:
        """FHIR R4 JSON resources: Patient, Observations, DocumentReferences, ImagingStudy."""
        from fusion.synthetic.fhir import patient_to_fhir

        return patient_to_fhir(self)

    def to_hl7_messages(self) -> list[str]:
        """HL7 v2.5 messages (ADT^A01, ORU^R01, MDM^T02), segments separated by ``\\r``."""
        from fusion.synthetic.hl7 import patient_to_hl7

        return patient_to_hl7(self)


def true_risk(inflammation: float, lung: float, age_years: float) -> float:
    """The true outcome probability of the generative process (step 3 above)."""
    age_z = (age_years - 60.0) / 20.0
    logit = (
        -1.3
        + 0.9 * inflammation
        + 0.9 * lung
        + 0.5 * age_z
        + 1.2 * max(inflammation, 0.0) * max(lung, 0.0)
    )
    return float(1.0 / (1.0 + np.exp(-logit)))


def _observations(
    rng: np.random.Generator,
    specs: tuple[ObservationSpec, ...],
    times_hours: np.ndarray,
    presence: float,
    latent: tuple[float, float, float],
) -> list[ObsItem]:
    inflammation, lung, age_z = latent
    items = []
    for t_hours in np.sort(times_hours):
        weight = 0.5 + 0.5 * np.exp(t_hours / 24.0)
        for spec in specs:
            if rng.random() > presence:
                continue
            z = weight * (spec.inflammation * inflammation + spec.lung * lung)
            z += spec.age * age_z + rng.normal(0.0, 0.6)
            value = max(spec.low, spec.mean + spec.sd * z)
            items.append(
                ObsItem(
                    code_system=LOINC_SYSTEM,
                    code=spec.loinc,
                    value=round(float(value), spec.decimals),
                    unit=spec.unit,
                    relative_seconds=round(float(t_hours * HOUR)),
                    category=spec.category,
                )
            )
    return items


def _patient(index: int, seed: int, missing_rates: dict[str, float]) -> SyntheticPatient:
    rng = np.random.default_rng([seed, index])
    age = float(rng.uniform(18.0, 95.0))
    sex = "male" if rng.random() < 0.5 else "female"
    anchor = dt.datetime(2024, 1, 1, 8, tzinfo=dt.UTC) + dt.timedelta(days=int(rng.integers(365)))
    birth_date = (anchor - dt.timedelta(days=age * 365.25)).date()
    inflammation, lung = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.3], [0.3, 1.0]])
    inflammation, lung = float(inflammation), float(lung)
    risk = true_risk(inflammation, lung, age)
    label = int(rng.random() < risk)
    age_z = (age - 60.0) / 20.0
    latent = (inflammation, lung, age_z)
    labs = _observations(
        rng, LAB_SPECS, rng.uniform(-72.0, -0.5, size=1 + rng.poisson(0.8)), 0.85, latent
    )
    vitals = _observations(
        rng, VITAL_SPECS, rng.uniform(-48.0, 0.0, size=1 + rng.poisson(2.0)), 0.9, latent
    )
    burden = float(np.log1p(np.exp(1.8 * (lung + rng.normal(0.0, 0.3)) - 0.5)))
    image: np.ndarray | None = render_chest_image(rng, burden)
    image_time = round(float(rng.uniform(-24.0, 0.0) * HOUR))
    note_times = np.sort(rng.uniform(-48.0, 0.0, size=1 + int(rng.random() < 0.4)))
    notes = [
        NoteItem(write_note(rng, lung, inflammation), round(float(t * HOUR))) for t in note_times
    ]
    missing = {m: bool(rng.random() < missing_rates.get(m, 0.0)) for m in MODALITIES}
    return SyntheticPatient(
        index=index,
        seed=seed,
        patient_id=f"SYN{seed % 1000:03d}{index:06d}",
        family_name="Synthetic",
        given_name=f"Patient{index:06d}",
        sex=sex,
        birth_date=birth_date,
        age_years=round(age, 2),
        anchor=anchor,
        inflammation=inflammation,
        lung=lung,
        true_risk=risk,
        label=label,
        image=None if missing["image"] else image,
        image_relative_seconds=image_time,
        notes=[] if missing["notes"] else notes,
        observations=(([] if missing["labs"] else labs) + ([] if missing["vitals"] else vitals)),
    )


def generate_cohort(
    n_patients: int, seed: int = 0, missing_rates: dict[str, float] | None = None
) -> list[SyntheticPatient]:
    """Generate a deterministic synthetic cohort.

    Args:
        n_patients: Number of patients.
        seed: Cohort seed; the same seed gives the same patients. Defaults to 0.
        missing_rates: Probability that each modality (``image``, ``notes``, ``labs``,
            ``vitals``) is missing, independently per patient; keys left out are never
            missing. Defaults to :data:`DEFAULT_MISSING_RATES`.

    Returns:
        The patients, ``index`` 0 to ``n_patients - 1``.
    """
    rates = DEFAULT_MISSING_RATES if missing_rates is None else missing_rates
    return [_patient(i, seed, rates) for i in range(n_patients)]
