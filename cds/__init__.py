"""cdsfusion outbound side and core.

``cds.core`` is the patient timeline (settings, storage models, repository functions, CLI);
the rest of ``cds`` is what goes back to the EHR: the HTTP API, CDS Hooks, FHIR
RiskAssessments and the audit review pages.
"""
