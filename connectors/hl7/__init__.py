"""HL7v2 over MLLP: the listener, framing, parsing (hl7apy), normalization, ACKs.

Data path: :mod:`~connectors.hl7.listener` (sockets, asyncio) ->
:mod:`~connectors.hl7.mllp` (framing) -> :mod:`~connectors.hl7.handler` (one frame, one
ACK) -> :mod:`~connectors.hl7.parse` (header, hl7apy validation) ->
:mod:`~connectors.hl7.normalize` (pure: message -> ``ItemIn``) ->
:mod:`~connectors.hl7.store` (one transaction, ADT^A40 merges) -> :mod:`~connectors.hl7.ack`.

Settings: ``CDSFUSION_MLLP_PORT`` (0 disables), ``CDSFUSION_MLLP_MAX_MESSAGE_BYTES``
(default 1 MiB; larger frames get AR), ``CDSFUSION_MLLP_IDLE_TIMEOUT_S`` (default 600),
``CDSFUSION_MLLP_WORKERS`` (default 4 threads parsing and storing), ``CDSFUSION_SITE_TIMEZONE``
(HL7 TS without offset), ``CDSFUSION_ISSUER_MAP`` (PID-3 assigning authority -> system).
"""
