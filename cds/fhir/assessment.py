"""One prediction with what the outputs need to say about it, read from the database.

:func:`load_assessment` gathers the prediction, its bundle and members (the inputs, with
where each came from), the patient's identifiers and upstream FHIR ids, the encounter of
the anchor when known, the task definition and the model card. The builders
(:mod:`cds.fhir.riskassessment`, :mod:`cds.fhir.provenance`, :mod:`cds.hooks.cards`) take
the resulting plain :class:`Assessment` and touch no database.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import (
    Bundle,
    BundleMember,
    EventKind,
    EventStatus,
    Patient,
    PatientIdentifier,
    Prediction,
    PredictionStatus,
    Protocol,
    SourceItem,
    TimelineEvent,
)
from cds.modelcard import ModelCard

#: Prefix of the pseudo-identifier that ties a patient to ``Patient/{id}`` on a FHIR server
#: (written by connectors/fhir: ``urn:cdsfusion:fhir:{base}`` | ``Patient/{id}``).
FHIR_PATIENT_SYSTEM_PREFIX = "urn:cdsfusion:fhir:"

#: Event kinds that have a read-only FHIR view on this engine, and its resource type.
VIEW_TYPES = {
    EventKind.OBSERVATION: "Observation",
    EventKind.NOTE: "DocumentReference",
}


@dataclass(frozen=True)
class InputRef:
    """One input of a prediction and where it can be read.

    Attributes:
        modality: the task's modality name (``image``, ``labs``, ...).
        kind: the timeline event kind.
        effective_at: the input's clinical time.
        local: the engine's own view, e.g. ``Observation/{event uuid}`` (``None``: no view).
        origin_base: the FHIR server the input came from (``None``: not from FHIR).
        origin_ref: its id there, e.g. ``Observation/123``.
    """

    modality: str
    kind: EventKind
    effective_at: dt.datetime
    local: str | None = None
    origin_base: str | None = None
    origin_ref: str | None = None

    @property
    def key(self) -> str:
        """What makes two inputs the same resource (components of one Observation are one)."""
        if self.origin_base and self.origin_ref:
            return f"{self.origin_base}/{self.origin_ref}"
        return self.local or ""


@dataclass(frozen=True)
class PatientRef:
    """The subject of a prediction.

    Attributes:
        id: the engine's patient UUID (``Patient/{id}`` among the views).
        fhir_ids: FHIR server base -> ``Patient/{id}`` there.
        identifiers: (system, value, type code) of the patient's business identifiers.
    """

    id: uuid.UUID
    fhir_ids: Mapping[str, str] = field(default_factory=dict)
    identifiers: tuple[tuple[str, str, str | None], ...] = ()


@dataclass(frozen=True)
class Assessment:
    """Everything the outbound builders need about one prediction (no database objects).

    Attributes:
        prediction_id, status, probability, interval_low, interval_high, outputs: from the
            prediction row (``outputs`` holds coverage, attributions, missing modalities).
        model_name, model_version, model_sha256: the model's identity.
        created_at: when the prediction was made (``occurrenceDateTime``).
        task_id: the prediction task; ``task`` its definition when still loaded.
        anchor_at, window_start, window_end: the bundle's anchor and window.
        patient: the subject.
        inputs: the bundle's members, one per distinct resource.
        encounter: the encounter around the anchor, when known.
        superseded_by: the newer prediction's id when this one is superseded.
        supersedes: ids of the older predictions this one replaced.
        model_card: the card when the model is the one being served.
        displays: (code system, code) -> display, for readable factor labels.
    """

    prediction_id: uuid.UUID
    status: PredictionStatus
    probability: float | None
    interval_low: float | None
    interval_high: float | None
    outputs: Mapping[str, Any]
    model_name: str
    model_version: str
    model_sha256: str | None
    created_at: dt.datetime
    task_id: str
    task: TaskDefinition | None
    anchor_at: dt.datetime
    window_start: dt.datetime
    window_end: dt.datetime
    patient: PatientRef
    inputs: tuple[InputRef, ...] = ()
    encounter: InputRef | None = None
    superseded_by: uuid.UUID | None = None
    supersedes: tuple[uuid.UUID, ...] = ()
    model_card: ModelCard | None = None
    displays: Mapping[tuple[str, str], str] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        """What was missing: required data for insufficient predictions, else modalities."""
        key = (
            "missing"
            if self.status is PredictionStatus.INSUFFICIENT_DATA
            else ("missing_modalities")
        )
        value = self.outputs.get(key)
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def title(self) -> str:
        return self.task.title if self.task else self.task_id

    def latest_by_modality(self) -> dict[str, dt.datetime]:
        """The most recent input time of each modality (the card's data timestamps)."""
        latest: dict[str, dt.datetime] = {}
        for item in self.inputs:
            if item.modality not in latest or item.effective_at > latest[item.modality]:
                latest[item.modality] = item.effective_at
        return latest


def _origin(source: SourceItem) -> tuple[str | None, str | None]:
    if source.protocol is Protocol.FHIR and "/" in source.item_id:
        return source.namespace.rstrip("/"), source.item_id.split("#", 1)[0]
    return None, None


def _input_ref(
    modality: str, event: TimelineEvent, source: SourceItem, effective_at: dt.datetime
) -> InputRef:
    origin_base, origin_ref = _origin(source)
    if event.kind is EventKind.IMAGING_STUDY and event.imaging_study_id is not None:
        local: str | None = f"ImagingStudy/{event.imaging_study_id}"
    elif event.kind is EventKind.DEMOGRAPHICS and event.patient_id is not None:
        local = f"Patient/{event.patient_id}"
    elif event.kind in VIEW_TYPES:
        local = f"{VIEW_TYPES[event.kind]}/{event.id}"
    else:
        local = None
    return InputRef(modality, event.kind, effective_at, local, origin_base, origin_ref)


def load_patient_ref(*, session: Session, patient_id: uuid.UUID) -> PatientRef:
    """The patient's identifiers and FHIR ids (merged-away patients' included)."""
    merged = select(Patient.id).where(Patient.merged_into_id == patient_id)
    rows = session.execute(
        select(PatientIdentifier.system, PatientIdentifier.value, PatientIdentifier.type_code)
        .where(
            or_(
                PatientIdentifier.patient_id == patient_id, PatientIdentifier.patient_id.in_(merged)
            )
        )
        .order_by(PatientIdentifier.created_at)
    ).all()
    fhir_ids: dict[str, str] = {}
    identifiers: list[tuple[str, str, str | None]] = []
    for system, value, type_code in rows:
        if system.startswith(FHIR_PATIENT_SYSTEM_PREFIX):
            fhir_ids.setdefault(system.removeprefix(FHIR_PATIENT_SYSTEM_PREFIX), value)
        else:
            identifiers.append((system, value, type_code))
    return PatientRef(patient_id, fhir_ids, tuple(identifiers))


def _encounter(session: Session, patient_id: uuid.UUID, at: dt.datetime) -> InputRef | None:
    row = session.execute(
        select(TimelineEvent, SourceItem)
        .join(SourceItem, SourceItem.id == TimelineEvent.source_item_id)
        .where(
            TimelineEvent.patient_id == patient_id,
            TimelineEvent.kind == EventKind.ENCOUNTER,
            TimelineEvent.status == EventStatus.CURRENT,
            TimelineEvent.effective_at <= at,
            or_(TimelineEvent.effective_end.is_(None), TimelineEvent.effective_end >= at),
        )
        .order_by(TimelineEvent.effective_at.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    event, source = row
    origin_base, origin_ref = _origin(source)
    if origin_ref is None:
        return None  # only FHIR encounters can be referenced; HL7 visits have no view
    return InputRef("encounter", event.kind, event.effective_at, None, origin_base, origin_ref)


def load_assessment(
    *,
    session: Session,
    prediction: Prediction,
    tasks: Mapping[str, TaskDefinition],
    model_card: ModelCard | None = None,
    brief: bool = False,
) -> Assessment:
    """Gather what the builders need about ``prediction``.

    Args:
        session: an open session (read only).
        prediction: the prediction row.
        tasks: task definitions by id (``cds.core.pipeline.compose.tasks_for``).
        model_card: the serving model's card; used when it is this prediction's model.
        brief: skip what only FHIR resources use (the patient's identifiers, the
            encounter, the predictions this one superseded): enough for a card, three
            queries fewer on the CDS Hooks path.
    """
    bundle = session.get(Bundle, prediction.bundle_id)
    if bundle is None:
        raise LookupError(f"prediction {prediction.id} has no bundle")
    rows = session.execute(
        select(BundleMember, TimelineEvent, SourceItem)
        .join(TimelineEvent, TimelineEvent.id == BundleMember.event_id)
        .join(SourceItem, SourceItem.id == TimelineEvent.source_item_id)
        .where(BundleMember.bundle_id == bundle.id)
        .order_by(BundleMember.modality, BundleMember.relative_seconds)
    ).all()
    inputs: dict[str, InputRef] = {}
    displays: dict[tuple[str, str], str] = {}
    for member, event, source in rows:
        at = bundle.anchor_at + dt.timedelta(seconds=member.relative_seconds)
        ref = _input_ref(member.modality, event, source, at)
        if ref.key:
            inputs.setdefault(ref.key, ref)
        if event.code_system and event.code and event.display:
            displays.setdefault((event.code_system, event.code), event.display)
    supersedes: tuple[uuid.UUID, ...] = ()
    if not brief:
        supersedes = tuple(
            session.scalars(
                select(Prediction.id)
                .where(Prediction.superseded_by_id == prediction.id)
                .order_by(Prediction.created_at)
            )
        )
    card = model_card
    if card is not None and (card.name, card.version) != (
        prediction.model_name,
        prediction.model_version,
    ):
        card = None
    return Assessment(
        prediction_id=prediction.id,
        status=prediction.status,
        probability=prediction.probability,
        interval_low=prediction.interval_low,
        interval_high=prediction.interval_high,
        outputs=dict(prediction.outputs or {}),
        model_name=prediction.model_name,
        model_version=prediction.model_version,
        model_sha256=prediction.model_sha256,
        created_at=prediction.created_at,
        task_id=prediction.task_id,
        task=tasks.get(prediction.task_id),
        anchor_at=bundle.anchor_at,
        window_start=bundle.window_start,
        window_end=bundle.window_end,
        patient=PatientRef(prediction.patient_id)
        if brief
        else load_patient_ref(session=session, patient_id=prediction.patient_id),
        inputs=tuple(inputs.values()),
        encounter=None if brief else _encounter(session, prediction.patient_id, bundle.anchor_at),
        superseded_by=prediction.superseded_by_id,
        supersedes=supersedes,
        model_card=card,
        displays=displays,
    )
