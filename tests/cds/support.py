"""Seeding a patient with a scored bundle, and an engine app with the CDS outputs mounted.

The timeline rows go through ``ingest_item`` (as connectors write them); the bundle and
prediction rows are written directly, as the aligner and worker would, so these tests need
no model and no torch.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cds.api.app import create_app
from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    Bundle,
    BundleMember,
    BundleStatus,
    EventKind,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    Prediction,
    PredictionStatus,
    Protocol,
    SourceItem,
    StudyState,
    TimelineEvent,
)
from cds.core.db.session import make_session_factory, transaction
from cds.core.repository.ingest import ingest_item
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from cds.fhir import routes as fhir_routes
from cds.hooks import routes as hook_routes
from cds.modelcard import routes as model_card_routes

MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999"
EHR_BASE = "http://ehr.example.org/fhir"
MODEL_NAME = "cxr-fusion-demo"
MODEL_VERSION = "1.2.0"
MODEL_SHA = "ab" * 32
ANCHOR = dt.datetime(2026, 3, 2, 9, 30, tzinfo=dt.UTC)

ATTRIBUTIONS: dict[str, Any] = {
    "method": "gradient_x_input on the logit",
    "image": {"method": "gradient_x_input", "heatmap": [[0.1, 0.9]], "shape": [1, 2]},
    "notes": [
        {"token": "[CLS]", "score": 0.9},
        {"token": "consolidation", "score": 0.21},
        {"token": "no", "score": -0.05},
    ],
    "observations": [
        {
            "index": 0,
            "code_system": "http://loinc.org",
            "code": "2524-7",
            "value": 4.8,
            "unit": "mmol/L",
            "relative_seconds": -3600,
            "category": "laboratory",
            "contribution": 0.34,
        },
        {
            "index": 1,
            "code_system": "http://loinc.org",
            "code": "8867-4",
            "value": 118,
            "unit": "/min",
            "relative_seconds": -600,
            "category": "vital-signs",
            "contribution": 0.12,
        },
    ],
    "demographics": {"age": 0.03, "sex": -0.01},
}


def write_model_dir(directory: Path, *, synthetic: bool = True) -> Path:
    """A checkpoint directory's manifest and card (no weights: the web never loads them)."""
    directory.mkdir(parents=True, exist_ok=True)
    card = {
        "model_name": MODEL_NAME,
        "intended_use": "Demonstration only.",
        "training_data": {"kind": "synthetic" if synthetic else "clinical", "n_patients": 3000},
    }
    manifest = {
        "format_version": 1,
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "sha256": MODEL_SHA,
        "config": {},
        "model_card": card,
    }
    (directory / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    (directory / "MODEL_CARD.md").write_text(
        f"# Model card: {MODEL_NAME} {MODEL_VERSION}\n\nTrained on synthetic data <only>.\n",
        encoding="utf-8",
    )
    return directory


def settings_for(engine: Engine, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": engine.url.render_as_string(hide_password=False),
        "data_dir": tmp_path,
        "model_dir": write_model_dir(tmp_path / "model"),
        "public_base_url": "https://cds.example.org",
        "cds_hooks_auth_disabled": True,
    }
    values.update(overrides)
    return Settings(**values)


def engine_context(engine: Engine, settings: Settings) -> EngineContext:
    return EngineContext(
        settings=settings, engine=engine, session_factory=make_session_factory(engine)
    )


def output_app(ctx: EngineContext) -> FastAPI:
    """The HTTP app with the FHIR outputs, CDS Hooks and model card mounted."""
    return create_app(
        ctx,
        installers=[fhir_routes.install, hook_routes.install, model_card_routes.install],
    )


@dataclass
class Seeded:
    """Ids of what :func:`seed` wrote."""

    patient_id: uuid.UUID
    mrn: str
    fhir_patient_id: str
    bundle_id: uuid.UUID
    prediction_id: uuid.UUID
    study_id: uuid.UUID
    lab_event_id: uuid.UUID
    vital_event_id: uuid.UUID
    note_event_id: uuid.UUID


def _ingest(
    session: Session,
    *,
    protocol: Protocol,
    namespace: str,
    item_id: str,
    identifiers: tuple[IdentifierIn, ...],
    events: tuple[EventIn, ...],
    received: dt.datetime,
    storage_key: str | None = None,
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    body = f"{protocol}|{namespace}|{item_id}".encode()
    result = ingest_item(
        session=session,
        item=ItemIn(
            source=SourceItemIn(
                protocol=protocol,
                namespace=namespace,
                item_id=item_id,
                content_sha256=SourceItemIn.sha256(body),
                size_bytes=len(body),
                storage_key=storage_key,
                payload=None if storage_key else body,
                received_at=received,
            ),
            identifiers=identifiers,
            events=events,
        ),
    )
    assert result.patient_id is not None
    return result.patient_id, list(result.event_ids)


def _study(
    session: Session, patient_id: uuid.UUID, source_item_id: uuid.UUID, tag: str
) -> uuid.UUID:
    study = ImagingStudy(
        StudyInstanceUID=f"1.2.826.0.1.3680043.10.9999.{tag}",
        patient_id=patient_id,
        AccessionNumber="ACC" + tag[-6:],
        study_datetime=ANCHOR,
        StudyDescription="XR CHEST 1 VIEW",
        state=StudyState.COMPLETE,
        first_received_at=ANCHOR,
        last_received_at=ANCHOR,
        completed_at=ANCHOR,
    )
    session.add(study)
    session.flush()
    series = ImagingSeries(
        study_id=study.id,
        SeriesInstanceUID=f"{study.StudyInstanceUID}.1",
        Modality="DX",
        BodyPartExamined="CHEST",
        SeriesNumber=1,
    )
    session.add(series)
    session.flush()
    session.add(
        ImagingInstance(
            series_id=series.id,
            source_item_id=source_item_id,
            SOPInstanceUID=f"{series.SeriesInstanceUID}.1",
            SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1",
            TransferSyntaxUID="1.2.840.10008.1.2.1",
            InstanceNumber=1,
            storage_key=f"dicom/{tag}.dcm",
            size_bytes=100,
            received_at=ANCHOR,
        )
    )
    session.flush()
    return study.id


def seed(
    session: Session,
    *,
    status: PredictionStatus = PredictionStatus.FINAL,
    probability: float | None = 0.62,
    bundle_status: BundleStatus = BundleStatus.SCORED,
    with_prediction: bool = True,
    anchor: dt.datetime = ANCHOR,
) -> Seeded:
    """A patient with a lab (HL7), a vital (FHIR), a note, demographics, a DX chest study,
    an encounter (FHIR) around the anchor, a bundle of them all and its prediction."""
    tag = uuid.uuid4().hex[:12]
    mrn, fhir_pid = f"MRN{tag}", f"pat-{tag}"
    ids = (IdentifierIn(MRN_SYSTEM, mrn, "MR"),)
    fhir_ids = (*ids, IdentifierIn(f"urn:cdsfusion:fhir:{EHR_BASE}", f"Patient/{fhir_pid}"))
    patient_id, (lab,) = _ingest(
        session,
        protocol=Protocol.HL7V2,
        namespace="LAB^HOSP",
        item_id=f"{tag}-1",
        identifiers=ids,
        received=anchor,
        events=(
            EventIn(
                kind=EventKind.OBSERVATION,
                lineage_key=f"t|{tag}|lab",
                effective_at=anchor - dt.timedelta(hours=1),
                category="laboratory",
                code_system="http://loinc.org",
                code="2524-7",
                display="Lactate",
                value_num=4.8,
                unit="mmol/L",
            ),
        ),
    )
    _, (vital,) = _ingest(
        session,
        protocol=Protocol.FHIR,
        namespace=EHR_BASE,
        item_id=f"Observation/hr-{tag}",
        identifiers=fhir_ids,
        received=anchor,
        events=(
            EventIn(
                kind=EventKind.OBSERVATION,
                lineage_key=f"fhir|{EHR_BASE}|Observation/hr-{tag}",
                effective_at=anchor - dt.timedelta(minutes=10),
                category="vital-signs",
                code_system="http://loinc.org",
                code="8867-4",
                display="Heart rate",
                value_num=118,
                unit="/min",
            ),
        ),
    )
    _, (note,) = _ingest(
        session,
        protocol=Protocol.HL7V2,
        namespace="MDM^HOSP",
        item_id=f"{tag}-2",
        identifiers=ids,
        received=anchor,
        events=(
            EventIn(
                kind=EventKind.NOTE,
                lineage_key=f"t|{tag}|note",
                effective_at=anchor - dt.timedelta(hours=3),
                code_system="http://loinc.org",
                code="11506-3",
                value_text="Short of breath. Possible consolidation.",
            ),
        ),
    )
    _, (demo,) = _ingest(
        session,
        protocol=Protocol.HL7V2,
        namespace="ADT^HOSP",
        item_id=f"{tag}-3",
        identifiers=ids,
        received=anchor,
        events=(
            EventIn(
                kind=EventKind.DEMOGRAPHICS,
                lineage_key=f"t|{tag}|demo",
                effective_at=anchor - dt.timedelta(days=1),
                details={"birthDate": "1950-04-01", "gender": "female"},
            ),
        ),
    )
    _ingest(
        session,
        protocol=Protocol.FHIR,
        namespace=EHR_BASE,
        item_id=f"Encounter/enc-{tag}",
        identifiers=fhir_ids,
        received=anchor,
        events=(
            EventIn(
                kind=EventKind.ENCOUNTER,
                lineage_key=f"fhir|{EHR_BASE}|Encounter/enc-{tag}",
                effective_at=anchor - dt.timedelta(days=2),
                effective_end=None,
            ),
        ),
    )
    dicom_patient, _ = _ingest(
        session,
        protocol=Protocol.DICOM,
        namespace="",
        item_id=f"1.2.826.0.1.3680043.10.9999.{tag}.1.1",
        identifiers=ids,
        received=anchor,
        events=(),
        storage_key=f"dicom/{tag}.dcm",
    )
    dicom_item = session.scalar(
        select(SourceItem.id).where(SourceItem.item_id == f"1.2.826.0.1.3680043.10.9999.{tag}.1.1")
    )
    assert dicom_item is not None and dicom_patient == patient_id
    study_id = _study(session, patient_id, dicom_item, tag)
    _, (anchor_event,) = _ingest(
        session,
        protocol=Protocol.INTERNAL,
        namespace="dicom-study",
        item_id=f"1.2.826.0.1.3680043.10.9999.{tag}",
        identifiers=ids,
        received=anchor,
        events=(
            EventIn(
                kind=EventKind.IMAGING_STUDY,
                lineage_key=f"dicom-study|{tag}",
                event_key="study",
                effective_at=anchor,
                code_system="http://dicom.nema.org/resources/ontology/DCM",
                code="DX",
                details={"modalities": ["DX"], "body_parts": ["CHEST"], "anchor": True},
            ),
        ),
    )
    event = session.get(TimelineEvent, anchor_event)
    assert event is not None
    event.imaging_study_id = study_id
    bundle = Bundle(
        task_id="cxr-deterioration",
        task_version="1",
        patient_id=patient_id,
        anchor_event_id=anchor_event,
        anchor_key=f"dicom-study|{tag}",
        anchor_at=anchor,
        window_start=anchor - dt.timedelta(days=7),
        window_end=anchor + dt.timedelta(hours=2),
        version=1,
        content_hash="0" * 64,
        status=bundle_status,
        late_until=anchor + dt.timedelta(hours=26),
        missing=["image"] if status is PredictionStatus.INSUFFICIENT_DATA else None,
    )
    session.add(bundle)
    session.flush()
    members = [
        ("image", anchor_event, 0.0),
        ("labs", lab, -3600.0),
        ("vitals", vital, -600.0),
        ("notes", note, -10800.0),
        ("demographics", demo, -86400.0),
    ]
    for modality, event_id, seconds in members:
        session.add(
            BundleMember(
                bundle_id=bundle.id, event_id=event_id, modality=modality, relative_seconds=seconds
            )
        )
    prediction_id = uuid.uuid4()
    if with_prediction:
        session.add(make_prediction(prediction_id, bundle, status=status, probability=probability))
    session.flush()
    return Seeded(patient_id, mrn, fhir_pid, bundle.id, prediction_id, study_id, lab, vital, note)


def make_prediction(
    prediction_id: uuid.UUID,
    bundle: Bundle,
    *,
    status: PredictionStatus = PredictionStatus.FINAL,
    probability: float | None = 0.62,
    created_at: dt.datetime | None = None,
) -> Prediction:
    if status is PredictionStatus.INSUFFICIENT_DATA:
        outputs: dict[str, Any] = {"missing": ["image"], "unreadable": {"image": "no pixels"}}
        probability = None
    else:
        outputs = {
            "logit": 0.49,
            "coverage": 0.9,
            "calibrated": True,
            "attributions": ATTRIBUTIONS,
            "missing_modalities": [],
            "missingness_pattern": "image+notes+labs+vitals",
        }
    return Prediction(
        id=prediction_id,
        bundle_id=bundle.id,
        patient_id=bundle.patient_id,
        task_id=bundle.task_id,
        model_name=MODEL_NAME,
        model_version=MODEL_VERSION,
        model_sha256=MODEL_SHA,
        status=status,
        probability=probability,
        interval_low=None if probability is None else 0.41,
        interval_high=None if probability is None else 0.83,
        outputs=outputs,
        created_at=created_at or bundle.anchor_at + dt.timedelta(minutes=2),
    )


def seed_committed(engine: Engine, **kwargs: Any) -> Seeded:
    with transaction(make_session_factory(engine)) as session:
        return seed(session, **kwargs)
