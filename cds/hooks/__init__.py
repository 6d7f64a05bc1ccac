"""CDS Hooks 2.0.1 service: stored predictions shown as cards in the EHR.

Modules: :mod:`~cds.hooks.models` (wire objects), :mod:`~cds.hooks.services` (discovery),
:mod:`~cds.hooks.auth` (the CDS Client's JWT), :mod:`~cds.hooks.prefetch` (which patient),
:mod:`~cds.hooks.cards` (card rules), :mod:`~cds.hooks.service` (a call, feedback),
:mod:`~cds.hooks.routes` (HTTP, CORS).

Endpoints: ``GET /cds-services``; ``POST /cds-services/{id}`` for ``patient-view``,
``order-select`` and ``order-sign`` (service ids ``{task}-{hook}``); ``POST
/cds-services/{id}/feedback`` (into the audit log, action ``cds.feedback``, entity the
card's uuid). Requests with the 3.0 ballot's additional fields are accepted.

Settings (``CDSFUSION_``):

* ``CDS_HOOKS_ISSUERS_FILE``: the trusted CDS Clients (see :mod:`cds.hooks.auth`);
  unset: every call is refused.
* ``CDS_HOOKS_AUTH_DISABLED`` (false): no JWT verification, for local demos; embedded mode
  only, and logged as a warning at start-up.
* ``CDS_HOOKS_JWKS_CACHE_S`` (300): how long fetched JWK Sets are used.
* ``CDS_HOOKS_FHIR_TIMEOUT_S`` (5): timeout for JWK Set fetches and for reading the
  Patient from the EHR's FHIR server when it was not prefetched.
* ``CDS_HOOKS_CORS_ORIGINS`` (``*``): comma-separated origins allowed by CORS.
* ``CDS_SMART_APP_URL``: a SMART app launch URL added to cards as a ``smart`` link.
* ``CDS_SUGGESTIONS_FILE``: JSON ``{indicator: [Suggestion, ...]}``; cards carry
  suggestions only when this is set.
* Thresholds and ``PUBLIC_BASE_URL``: see :mod:`cds.fhir`.
"""
