"""FHIR R4 subscriptions in, upstream FHIR client out.

Data path: :mod:`~connectors.fhir.routes` (the ``/fhir/notify/...`` endpoints) ->
:mod:`~connectors.fhir.receiver` (validation, resolution of empty and id-only payloads,
recovery, one transaction per notification) -> :mod:`~connectors.fhir.normalize` (pure:
resource -> ``ItemIn``) -> :mod:`~connectors.fhir.store` (ingest). Around it:
:mod:`~connectors.fhir.notification` (Backport IG bundles), :mod:`~connectors.fhir.monitor`
(heartbeats), :mod:`~connectors.fhir.client` and :mod:`~connectors.fhir.auth` (upstream
server, SMART Backend Services), :mod:`~connectors.fhir.subscribe` and
:mod:`~connectors.fhir.backfill` (the ``cdsfusion fhir`` commands in :mod:`~connectors.fhir.cli`).

Settings: ``CDSFUSION_FHIR_SERVER_URL``, ``CDSFUSION_FHIR_BEARER_TOKEN``,
``CDSFUSION_FHIR_CLIENT_ID`` / ``_PRIVATE_KEY_FILE`` / ``_PRIVATE_KEY_ID`` /
``_JWT_ALGORITHM`` / ``_TOKEN_URL`` / ``_SCOPE`` (SMART Backend Services),
``CDSFUSION_FHIR_CA_BUNDLE``, ``CDSFUSION_FHIR_TIMEOUT_S``, ``CDSFUSION_FHIR_NOTIFY_BASE_URL``,
``CDSFUSION_FHIR_NOTIFY_MAX_BYTES``, ``CDSFUSION_FHIR_WEBHOOK_SECRET`` (Medplum HMAC),
``CDSFUSION_FHIR_MISSED_HEARTBEATS``, ``CDSFUSION_SITE_TIMEZONE``, ``CDSFUSION_ISSUER_MAP``.
"""
