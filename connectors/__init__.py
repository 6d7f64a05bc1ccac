"""Inbound connectors: one module per protocol (DICOM, FHIR subscriptions, HL7v2 over MLLP).

Each connector stores an accepted item durably on the timeline before it acknowledges it.
"""
