"""Results back to the EHR as FHIR R4: RiskAssessment, Provenance, Device and views.

Modules, in the order a result flows through them:

* :mod:`cds.fhir.assessment`: reads one prediction with its bundle, inputs, patient and
  model card from the database into a plain :class:`~cds.fhir.assessment.Assessment`.
* :mod:`cds.fhir.riskassessment`, :mod:`cds.fhir.provenance`: pure builders of the
  resources (validated with ``fhir.resources``; its R4B models equal R4 for these).
* :mod:`cds.fhir.references`: where a reference points, locally or on the upstream server.
* :mod:`cds.fhir.views`: read-only FHIR views of the timeline that ``basis`` points to.
* :mod:`cds.fhir.routes`: ``GET /fhir/RiskAssessment...``, the views, ``/fhir/Device``,
  ``/fhir/Provenance``.
* :mod:`cds.fhir.upstream`: the outbox handler that writes results to
  ``CDSFUSION_FHIR_SERVER_URL``.

Status mapping (prediction -> ``RiskAssessment.status``, R4 ObservationStatus):

=================  =========================================================
``final``          ``final``
``superseded``     ``amended``; the newer prediction is its own RiskAssessment,
                   whose Provenance names the older one as ``revision`` entity
                   and the amended one carries a note pointing at the newer one
``cancelled``      ``cancelled``
``insufficient``   **no RiskAssessment at all.** A RiskAssessment without a number
                   is too easily read as a risk; instead ``GET`` by id answers 404
                   with an OperationOutcome saying which data is missing, searches
                   add an OperationOutcome entry (``search.mode = outcome``), and
                   CDS Hooks shows a "Not enough data" card. Nothing is written
                   upstream. ``preliminary`` is therefore never emitted.
=================  =========================================================

The conformal interval goes in ``prediction.extension`` (see
:data:`cds.fhir.codes.INTERVAL_EXTENSION`): R4 ``prediction.probability[x]`` is a choice,
so ``probabilityDecimal`` and ``probabilityRange`` cannot both be present in one
prediction; the point estimate is the decimal and the interval a ``valueRange``.

Settings (``CDSFUSION_``):

* ``PUBLIC_BASE_URL``: this engine's absolute base for links and references. Defaults to
  ``http://127.0.0.1:{HTTP_PORT}``.
* ``CDS_MODERATE_RISK_THRESHOLD`` (0.2), ``CDS_HIGH_RISK_THRESHOLD`` (0.5): probability
  at or above which ``qualitativeRisk`` is ``moderate`` / ``high`` (and the card indicator
  ``warning`` / ``critical``); below the moderate one it is ``low``.
* ``FHIR_WRITE_TIMEOUT_S`` (10): timeout of one upstream write.
"""
