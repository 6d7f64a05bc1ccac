"""DIMSE status codes the SCP answers with, named after the standard's meanings.

C-STORE (PS3.4 Annex B.2.3, "Status"): success ``0000``; warnings ``B000`` (coercion of
data elements), ``B006``, ``B007``; failures ``A7xx`` (refused: out of resources),
``A9xx`` (data set does not match SOP class) and ``Cxxx`` (cannot understand). PS3.7
Annex C adds the general statuses that any DIMSE service may return, such as ``0111``
(duplicate SOP instance) and ``0110`` (processing failure).

Storage commitment (PS3.4 Annex J.3.2, N-ACTION statuses; J.3.3, N-EVENT-REPORT): the
N-ACTION answers success once the request is recorded; each instance that cannot be
committed is listed in the report's Failed SOP Sequence with a Failure Reason from PS3.4
J.3.3.1.1.2 (``0112`` no such object instance, ``0110`` processing failure).

Within a range the low byte is ours; the values below are the whole vocabulary, so a
sender's log line maps back to one cause.
"""

from __future__ import annotations

#: PS3.4 B.2.3: the instance is stored durably and indexed.
SUCCESS = 0x0000

#: PS3.4 B.2.3 warning class ("coercion of data elements"): the SOPInstanceUID was stored
#: before with other bytes and the newer bytes replaced them (keep-newest policy). DICOM
#: has no dedicated code for a replacement; the Error Comment says what happened.
WARNING_REPLACED = 0xB000

#: PS3.7 C.4 general failure "duplicate SOP instance": same SOPInstanceUID, other bytes,
#: and the reject policy is configured.
DUPLICATE_REJECTED = 0x0111

#: PS3.4 B.2.3 "Refused: Out of Resources": the file store could not write durably.
OUT_OF_RESOURCES_STORAGE = 0xA700
#: ... the database could not commit the index (the sender should retry later).
OUT_OF_RESOURCES_DATABASE = 0xA701
#: ... an unexpected error in the SCP itself; nothing was acknowledged.
OUT_OF_RESOURCES_INTERNAL = 0xA7FF

#: PS3.4 B.2.3 "Error: Data Set does not match SOP Class": the data set's SOPClassUID
#: differs from the request's Affected SOP Class UID.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900

#: PS3.4 B.2.3 "Error: Cannot understand": the data set cannot be decoded.
CANNOT_UNDERSTAND = 0xC000
#: ... a UID needed to place the instance (SOP, Study, Series Instance UID) is missing or
#: not a valid UID.
CANNOT_UNDERSTAND_MISSING_UID = 0xC001
#: ... the data set's SOPInstanceUID differs from the request's Affected SOP Instance UID.
CANNOT_UNDERSTAND_UID_MISMATCH = 0xC002

#: PS3.4 J.3.3.1.1.2 Failure Reason: the instance is not stored here.
COMMITMENT_NO_SUCH_OBJECT_INSTANCE = 0x0112
#: PS3.4 J.3.3.1.1.2 Failure Reason: the stored file is missing or does not match.
COMMITMENT_PROCESSING_FAILURE = 0x0110
#: PS3.4 J.3.3.1.1.2 Failure Reason: the stored instance has another SOP Class.
COMMITMENT_CLASS_INSTANCE_CONFLICT = 0x0119

#: Event Type IDs of the storage commitment N-EVENT-REPORT (PS3.4 J.3.3).
COMMITMENT_EVENT_ALL_SUCCESS = 1
COMMITMENT_EVENT_SOME_FAILED = 2
