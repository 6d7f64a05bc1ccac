"""Helpers for pipeline tests: a tiny real model checkpoint and a seeded patient.

The seeding writes what the connectors write (a stored DICOM file indexed as study, series
and instance, the study-completion anchor event, labs, vitals, a note, demographics)
through the same repository functions, so the pipeline under test sees real rows.
"""

from __future__ import annotations

import datetime as dt
import io
import uuid
from pathlib import Path

import torch
from sqlalchemy.orm import Session

from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    EventKind,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    Protocol,
    StudyState,
    TimelineEvent,
)
from cds.core.repository.ingest import IngestResult, ingest_item
from fusion.calibration import Calibration
from fusion.checkpoint import default_model_card, save_checkpoint
from fusion.config import FusionConfig, preset
from fusion.features import Featurizer
from fusion.synthetic import SyntheticPatient, generate_cohort
from fusion.training import build_model
from worker.scoring import Scorer


def tiny_checkpoint(
    directory: Path, config: FusionConfig | None = None, version: str = "0.0.1-pipeline-test"
) -> Path:
    """An untrained model (tiny unless ``config``) saved as a verified checkpoint.

    For pipeline tests and benchmarks: its predictions mean nothing.
    """
    config = config or preset("tiny")
    cohort = generate_cohort(16, seed=5)
    featurizer = Featurizer.fit(config, [p.to_bundle_input() for p in cohort])
    torch.manual_seed(0)
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    save_checkpoint(
        directory,
        model=model,
        featurizer=featurizer,
        calibration=Calibration(quantiles={}, pooled_quantile=0.5),
        model_card=default_model_card(model.config, {"kind": "synthetic", "n_patients": 16}),
        version=version,
    )
    return directory


def synthetic_patient(index: int = 0, seed: int = 21) -> SyntheticPatient:
    """A patient with every modality present."""
    none_missing = {"image": 0.0, "notes": 0.0, "labs": 0.0, "vitals": 0.0}
    return generate_cohort(index + 1, seed=seed, missing_rates=none_missing)[index]


def _item(
    patient: SyntheticPatient,
    protocol: Protocol,
    namespace: str,
    item_id: str,
    body: bytes,
    events: tuple[EventIn, ...],
    received: dt.datetime,
    storage_key: str | None = None,
    item_version: str = "",
) -> ItemIn:
    return ItemIn(
        source=SourceItemIn(
            protocol=protocol,
            namespace=namespace,
            item_id=item_id,
            item_version=item_version,
            content_sha256=SourceItemIn.sha256(body),
            size_bytes=len(body),
            storage_key=storage_key,
            payload=None if storage_key else body,
            received_at=received,
        ),
        identifiers=(IdentifierIn("urn:oid:2.16.840.1.113883.3.9999", patient.patient_id, "MR"),),
        events=events,
    )


def seed_context(
    session: Session, patient: SyntheticPatient, *, anchor_offset_h: float = 0
) -> None:
    """Labs, vitals, notes and demographics around the patient's anchor."""
    anchor = patient.anchor + dt.timedelta(hours=anchor_offset_h)
    for n, obs in enumerate(patient.observations):
        at = anchor + dt.timedelta(seconds=obs.relative_seconds)
        body = f"{patient.patient_id}|{obs.code}|{obs.value}|{at.isoformat()}".encode()
        ingest_item(
            session=session,
            item=_item(
                patient,
                Protocol.HL7V2,
                "LAB^SYN",
                f"{patient.patient_id}-OBX-{n}",
                body,
                (
                    EventIn(
                        kind=EventKind.OBSERVATION,
                        lineage_key=f"test|{patient.patient_id}|obs|{n}",
                        event_key="1",
                        effective_at=at,
                        category=obs.category,
                        code_system=obs.code_system,
                        code=obs.code,
                        value_num=obs.value,
                        unit=obs.unit,
                    ),
                ),
                at,
            ),
        )
    for n, note in enumerate(patient.notes):
        at = anchor + dt.timedelta(seconds=note.relative_seconds)
        ingest_item(
            session=session,
            item=_item(
                patient,
                Protocol.HL7V2,
                "MDM^SYN",
                f"{patient.patient_id}-MDM-{n}",
                note.text.encode(),
                (
                    EventIn(
                        kind=EventKind.NOTE,
                        lineage_key=f"test|{patient.patient_id}|note|{n}",
                        effective_at=at,
                        code_system="http://loinc.org",
                        code="11506-3",
                        value_text=note.text,
                    ),
                ),
                at,
            ),
        )
    birth = (anchor - dt.timedelta(days=365.25 * patient.age_years)).date().isoformat()
    ingest_item(
        session=session,
        item=_item(
            patient,
            Protocol.HL7V2,
            "ADT^SYN",
            f"{patient.patient_id}-ADT",
            birth.encode(),
            (
                EventIn(
                    kind=EventKind.DEMOGRAPHICS,
                    lineage_key=f"test|{patient.patient_id}|demo",
                    effective_at=anchor - dt.timedelta(days=1),
                    details={"birthDate": birth, "gender": patient.sex},
                ),
            ),
            anchor - dt.timedelta(days=1),
        ),
    )


def seed_study(
    session: Session,
    patient: SyntheticPatient,
    data_dir: Path,
    *,
    version: int = 1,
    write_file: bool = True,
) -> IngestResult:
    """Store the patient's radiograph, index it, and complete the study (the anchor)."""
    (dataset,) = patient.to_dicom_datasets()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    sha = SourceItemIn.sha256(data)
    key = f"dicom/{sha[:2]}/{sha[2:4]}/{sha}.dcm"
    if write_file:
        (data_dir / key).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / key).write_bytes(data)
    received = patient.anchor
    instance = ingest_item(
        session=session,
        item=_item(
            patient,
            Protocol.DICOM,
            "",
            str(dataset.SOPInstanceUID),
            data,
            (),
            received,
            storage_key=key,
        ),
    )
    study = ImagingStudy(
        StudyInstanceUID=str(dataset.StudyInstanceUID),
        patient_id=instance.patient_id,
        state=StudyState.COMPLETE,
        version=version,
        first_received_at=received,
        last_received_at=received,
        completed_at=received,
    )
    session.add(study)
    session.flush()
    series = ImagingSeries(
        study_id=study.id,
        SeriesInstanceUID=str(dataset.SeriesInstanceUID),
        Modality=str(dataset.Modality),
        BodyPartExamined="CHEST",
    )
    session.add(series)
    session.flush()
    session.add(
        ImagingInstance(
            series_id=series.id,
            source_item_id=instance.source_item_id,
            SOPInstanceUID=str(dataset.SOPInstanceUID),
            SOPClassUID=str(dataset.SOPClassUID),
            TransferSyntaxUID=str(dataset.file_meta.TransferSyntaxUID),
            ViewPosition=str(getattr(dataset, "ViewPosition", "") or ""),
            storage_key=key,
            size_bytes=len(data),
            received_at=received,
        )
    )
    completion = ingest_item(
        session=session,
        item=_item(
            patient,
            Protocol.INTERNAL,
            "dicom-study",
            str(dataset.StudyInstanceUID),
            f"complete v{version}".encode(),
            (
                EventIn(
                    kind=EventKind.IMAGING_STUDY,
                    lineage_key=f"dicom-study|{dataset.StudyInstanceUID}",
                    event_key="study",
                    effective_at=patient.anchor,
                    code_system="http://dicom.nema.org/resources/ontology/DCM",
                    code=str(dataset.Modality),
                    details={
                        "modalities": [str(dataset.Modality)],
                        "body_parts": ["CHEST"],
                        "version": version,
                        "anchor": True,
                    },
                ),
            ),
            received,
            item_version=str(version),
        ),
    )
    anchor_event = session.get(TimelineEvent, completion.event_ids[0])
    assert anchor_event is not None
    anchor_event.imaging_study_id = study.id
    session.flush()
    return completion


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class DelegatingScorer:
    """A test double that is the real model (``inner``) except where a subclass says."""

    def __init__(self, inner: Scorer) -> None:
        self.inner = inner

    @property
    def model_name(self) -> str:
        return self.inner.model_name

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    @property
    def sha256(self) -> str:
        return self.inner.sha256
