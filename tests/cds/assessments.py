"""Fixed :class:`Assessment` values for the pure builder and card tests (no database)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from cds.core.aligner.task import load_tasks
from cds.core.db.models import EventKind, PredictionStatus
from cds.fhir.assessment import Assessment, InputRef, PatientRef
from cds.modelcard import ModelCard
from tests.cds.support import ATTRIBUTIONS, EHR_BASE, MODEL_NAME, MODEL_SHA, MODEL_VERSION

ANCHOR = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)
PREDICTION = uuid.UUID("5b0c1d2e-3f40-4a51-8b62-7c8d9eaf0b1c")
NEWER = uuid.UUID("6c1d2e3f-4051-4b62-9c73-8d9eaf0b1c2d")
PATIENT = uuid.UUID("0d1e2f30-4152-4c63-8d74-9eaf0b1c2d3e")
STUDY = uuid.UUID("1e2f3041-5263-4d74-9e85-af0b1c2d3e4f")
LAB = uuid.UUID("2f304152-6374-4e85-af96-b0c1d2e3f405")
NOTE = uuid.UUID("30415263-7485-4f96-b0a7-c1d2e3f40516")

CARD = ModelCard(
    name=MODEL_NAME,
    version=MODEL_VERSION,
    sha256=MODEL_SHA,
    card={"training_data": {"kind": "synthetic"}},
)


def final_assessment(**changes: Any) -> Assessment:
    task = load_tasks()["cxr-deterioration"]
    base = Assessment(
        prediction_id=PREDICTION,
        status=PredictionStatus.FINAL,
        probability=0.6234,
        interval_low=0.4101,
        interval_high=0.8322,
        outputs={
            "coverage": 0.9,
            "attributions": ATTRIBUTIONS,
            "missing_modalities": [],
            "missingness_pattern": "image+notes+labs+vitals",
        },
        model_name=MODEL_NAME,
        model_version=MODEL_VERSION,
        model_sha256=MODEL_SHA,
        created_at=ANCHOR + dt.timedelta(minutes=2),
        task_id=task.id,
        task=task,
        anchor_at=ANCHOR,
        window_start=ANCHOR - dt.timedelta(days=7),
        window_end=ANCHOR + dt.timedelta(hours=2),
        patient=PatientRef(
            PATIENT,
            {EHR_BASE: "Patient/pat-42"},
            (("urn:oid:2.16.840.1.113883.3.9999", "MRN0042", "MR"),),
        ),
        inputs=(
            InputRef("image", EventKind.IMAGING_STUDY, ANCHOR, f"ImagingStudy/{STUDY}"),
            InputRef(
                "labs", EventKind.OBSERVATION, ANCHOR - dt.timedelta(hours=1), f"Observation/{LAB}"
            ),
            InputRef(
                "vitals",
                EventKind.OBSERVATION,
                ANCHOR - dt.timedelta(minutes=10),
                "Observation/x",
                EHR_BASE,
                "Observation/hr-7",
            ),
            InputRef(
                "notes",
                EventKind.NOTE,
                ANCHOR - dt.timedelta(hours=3),
                f"DocumentReference/{NOTE}",
            ),
        ),
        encounter=InputRef(
            "encounter", EventKind.ENCOUNTER, ANCHOR, None, EHR_BASE, "Encounter/enc-7"
        ),
        model_card=CARD,
        displays={
            ("http://loinc.org", "2524-7"): "Lactate",
            ("http://loinc.org", "8867-4"): "Heart rate",
        },
    )
    return dataclasses.replace(base, **changes)


def insufficient_assessment() -> Assessment:
    return final_assessment(
        status=PredictionStatus.INSUFFICIENT_DATA,
        probability=None,
        interval_low=None,
        interval_high=None,
        outputs={"missing": ["image"], "unreadable": {"image": "no pixel data"}},
    )
