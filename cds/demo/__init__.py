"""``cdsfusion demo``: a synthetic patient sent through a running engine's real listeners.

The demo plays the hospital: a modality or PACS (DICOM C-STORE), the lab and ADT systems
(HL7v2 over MLLP) and an EHR making a CDS Hooks call. Everything it sends is synthetic.
"""
