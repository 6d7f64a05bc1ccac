"""The HTTP API: one FastAPI app on ``CDSFUSION_HTTP_PORT``.

Routers from the connectors (FHIR notifications) and from ``cds`` (CDS Hooks, FHIR views,
audit pages) are mounted here. This process never imports torch.
"""
