"""The observations of the synthetic cohort: real LOINC codes with UCUM units.

Each entry says how the observation depends on the two latent states of the generative
process (see :mod:`fusion.synthetic.cohort`): ``inflammation`` (systemic) and ``lung``
(pulmonary involvement). Effects are in units of the population standard deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusion.inputs import CATEGORY_LABORATORY, CATEGORY_VITAL_SIGNS


@dataclass(frozen=True)
class ObservationSpec:
    """One observation type.

    Attributes:
        loinc: LOINC code.
        display: LOINC long common name (shortened).
        unit: UCUM unit code.
        category: ``laboratory`` or ``vital-signs``.
        mean: Population mean in ``unit``.
        sd: Population standard deviation in ``unit``.
        inflammation: Effect of the inflammation latent, population SDs per unit.
        lung: Effect of the lung latent, population SDs per unit.
        age: Effect of standardised age, population SDs per unit.
        decimals: Decimals reported.
        low: Physiological floor (values are clipped).
    """

    loinc: str
    display: str
    unit: str
    category: str
    mean: float
    sd: float
    inflammation: float
    lung: float
    age: float
    decimals: int
    low: float


LAB_SPECS: tuple[ObservationSpec, ...] = (
    ObservationSpec(
        "6690-2",
        "Leukocytes [#/volume] in Blood by Automated count",
        "10*3/uL",
        CATEGORY_LABORATORY,
        8.0,
        2.5,
        0.9,
        0.0,
        0.0,
        1,
        0.5,
    ),
    ObservationSpec(
        "1988-5",
        "C reactive protein [Mass/volume] in Serum or Plasma",
        "mg/L",
        CATEGORY_LABORATORY,
        20.0,
        15.0,
        1.0,
        0.2,
        0.0,
        1,
        0.1,
    ),
    ObservationSpec(
        "2524-7",
        "Lactate [Moles/volume] in Serum or Plasma",
        "mmol/L",
        CATEGORY_LABORATORY,
        1.6,
        0.6,
        0.7,
        0.0,
        0.0,
        1,
        0.3,
    ),
    ObservationSpec(
        "2160-0",
        "Creatinine [Mass/volume] in Serum or Plasma",
        "mg/dL",
        CATEGORY_LABORATORY,
        1.0,
        0.3,
        0.3,
        0.0,
        0.4,
        2,
        0.3,
    ),
    ObservationSpec(
        "718-7",
        "Hemoglobin [Mass/volume] in Blood",
        "g/dL",
        CATEGORY_LABORATORY,
        13.5,
        1.6,
        0.0,
        0.0,
        -0.3,
        1,
        5.0,
    ),
    ObservationSpec(
        "2951-2",
        "Sodium [Moles/volume] in Serum or Plasma",
        "mmol/L",
        CATEGORY_LABORATORY,
        139.0,
        3.0,
        -0.2,
        0.0,
        0.0,
        0,
        115.0,
    ),
)

VITAL_SPECS: tuple[ObservationSpec, ...] = (
    ObservationSpec(
        "8867-4", "Heart rate", "/min", CATEGORY_VITAL_SIGNS, 82.0, 12.0, 0.8, 0.2, 0.0, 0, 35.0
    ),
    ObservationSpec(
        "9279-1", "Respiratory rate", "/min", CATEGORY_VITAL_SIGNS, 17.0, 3.0, 0.4, 0.6, 0.0, 0, 6.0
    ),
    ObservationSpec(
        "8310-5", "Body temperature", "Cel", CATEGORY_VITAL_SIGNS, 37.1, 0.5, 0.8, 0.0, 0.0, 1, 34.0
    ),
    ObservationSpec(
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "%",
        CATEGORY_VITAL_SIGNS,
        96.5,
        2.0,
        0.0,
        -0.8,
        -0.2,
        0,
        70.0,
    ),
    ObservationSpec(
        "8480-6",
        "Systolic blood pressure",
        "mm[Hg]",
        CATEGORY_VITAL_SIGNS,
        124.0,
        15.0,
        -0.3,
        0.0,
        0.3,
        0,
        60.0,
    ),
)

ALL_SPECS: tuple[ObservationSpec, ...] = LAB_SPECS + VITAL_SPECS
SPEC_BY_LOINC: dict[str, ObservationSpec] = {spec.loinc: spec for spec in ALL_SPECS}
