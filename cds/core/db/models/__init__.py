"""Stored models of the patient timeline, imported together so the metadata is complete.

Tables, in the order data flows through them:

* ``patients``, ``patient_identifiers``, ``patient_merges``: one patient across sources.
* ``source_items``: every accepted inbound item (DICOM instance, HL7 message, FHIR resource
  version) with its provenance; unique per protocol, namespace, id and version.
* ``timeline_events``: the clinical events derived from source items (observations, notes,
  imaging studies, encounters, demographics, reports), indexed for the aligner's query
  (patient, kind, time).
* ``imaging_studies``, ``imaging_series``, ``imaging_instances``: the DICOM hierarchy;
  ``dicom_study_versions``: when each version of a study opened and completed.
* ``bundles``, ``bundle_members``, ``scoring_jobs``, ``predictions``: the pipeline.
* ``outbox``: outbound deliveries, written in the same transaction as what they announce.
* ``audit_log``: append-only, hash-chained record of who did what.
* ``fhir_subscriptions``: upstream FHIR subscriptions and their event-number state.
* ``cds_hook_token_uses``: JWT ids already seen on CDS Hooks calls (replay protection).
* ``review_users``, ``review_sessions``, ``review_verdicts``: the audit review pages.
"""

from cds.core.db.base import Base
from cds.core.db.models.audit import AuditEntry
from cds.core.db.models.cds import HookTokenUse
from cds.core.db.models.dicom import DicomStudyVersion
from cds.core.db.models.events import EventKind, EventStatus, TimelineEvent
from cds.core.db.models.feeds import FhirSubscription, PayloadContent, SubscriptionChannel
from cds.core.db.models.imaging import ImagingInstance, ImagingSeries, ImagingStudy, StudyState
from cds.core.db.models.outbox import OutboxMessage, OutboxState
from cds.core.db.models.patients import Patient, PatientIdentifier, PatientMerge
from cds.core.db.models.pipeline import (
    Bundle,
    BundleMember,
    BundleStatus,
    JobState,
    Prediction,
    PredictionStatus,
    ScoringJob,
)
from cds.core.db.models.review import ReviewRole, ReviewSession, ReviewUser, ReviewVerdict, Verdict
from cds.core.db.models.sources import Protocol, SourceItem

__all__ = [
    "AuditEntry",
    "Base",
    "Bundle",
    "BundleMember",
    "BundleStatus",
    "DicomStudyVersion",
    "EventKind",
    "EventStatus",
    "FhirSubscription",
    "HookTokenUse",
    "ImagingInstance",
    "ImagingSeries",
    "ImagingStudy",
    "JobState",
    "OutboxMessage",
    "OutboxState",
    "Patient",
    "PatientIdentifier",
    "PatientMerge",
    "PayloadContent",
    "Prediction",
    "PredictionStatus",
    "Protocol",
    "ReviewRole",
    "ReviewSession",
    "ReviewUser",
    "ReviewVerdict",
    "ScoringJob",
    "SourceItem",
    "StudyState",
    "SubscriptionChannel",
    "TimelineEvent",
    "Verdict",
]
