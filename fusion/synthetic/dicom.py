"""DICOM DX (Digital X-Ray, For Presentation) datasets for a synthetic patient.

Attributes follow the DX Image IOD (PS3.3 A.26) with the Explicit VR Little Endian
transfer syntax (PS3.5 §A.2). UIDs are derived deterministically from the cohort seed and
patient index under the ``2.25`` root (PS3.5 §B.2).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from fusion.synthetic.hl7 import SENDING_FACILITY
from fusion.synthetic.images import MAX_PIXEL

if TYPE_CHECKING:
    from fusion.synthetic.cohort import SyntheticPatient


UID_NAMESPACE = uuid.UUID("6f1c3a52-2d2b-5d8e-9c57-1b0f4f0b7a11")
"""Namespace of the name-based (version 5) UUIDs behind the synthetic UIDs."""


def _uid(*parts: object) -> UID:
    """A UUID-derived UID (PS3.5 §B.2: ``2.25.`` + the UUID as an integer), deterministic."""
    name = "/".join(str(p) for p in parts)
    return UID(f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}")


def study_uids(patient: SyntheticPatient) -> tuple[UID, UID, UID]:
    """Deterministic (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of the image."""
    return (
        _uid(patient.seed, patient.index, "study"),
        _uid(patient.seed, patient.index, "series"),
        _uid(patient.seed, patient.index, "instance"),
    )


def accession_number(patient: SyntheticPatient) -> str:
    """The synthetic accession number of the chest study."""
    return f"ACC{patient.seed % 1000:03d}{patient.index:06d}"


def _patient_module(ds: Dataset, patient: SyntheticPatient) -> None:
    """The Patient Module (PS3.3 C.7.1.1)."""
    ds.PatientName = f"{patient.family_name}^{patient.given_name}"
    ds.PatientID = patient.patient_id
    # The same assigning authority as HL7 PID-3.4, so both land on one patient.
    ds.IssuerOfPatientID = SENDING_FACILITY
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = {"male": "M", "female": "F"}.get(patient.sex, "O")


def patient_to_dicom(patient: SyntheticPatient) -> list[Dataset]:
    """The patient's chest radiograph as one DX instance, or an empty list.

    Args:
        patient: A synthetic patient.

    Returns:
        Datasets ready for ``save_as(path, enforce_file_format=True)`` or C-STORE.
    """
    if patient.image is None:
        return []
    study_uid, series_uid, sop_uid = study_uids(patient)
    acquired = patient.absolute_time(patient.image_relative_seconds)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.Manufacturer = "cdsfusion synthetic"
    _patient_module(ds, patient)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = acquired.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = acquired.strftime("%H%M%S")
    ds.AccessionNumber = accession_number(patient)
    ds.StudyID = "1"
    ds.StudyDescription = "XR CHEST PA (synthetic)"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = patient.image.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = ds.ImagerPixelSpacing = [5.6, 5.6]
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = MAX_PIXEL // 2
    ds.WindowWidth = MAX_PIXEL
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = patient.image.astype("<u2").tobytes()
    return [ds]
