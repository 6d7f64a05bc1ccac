"""Clinician audit review pages: why a card appeared, and what was done with it.

Everything is served under ``/audit/`` on the HTTP port, rendered on the server (Jinja2
templates with autoescape, inline SVG charts, PNG images made here); the pages load
nothing from outside the engine.

Modules, in the order a request meets them:

* :mod:`~cds.review.routes`, :mod:`~cds.review.auth_routes`, :mod:`~cds.review.trail_routes`:
  the endpoints below; :mod:`~cds.review.web`: sessions, CSRF, headers, errors per page.
* :mod:`~cds.review.access`: the role table (clinician, auditor, admin).
* :mod:`~cds.review.sessions`, :mod:`~cds.review.passwords`, :mod:`~cds.review.users`,
  :mod:`~cds.review.oidc`: sign-in (local scrypt users, OIDC code flow with PKCE),
  server-side sessions with idle and absolute expiry.
* :mod:`~cds.review.listing`: the filtered, keyset-paginated prediction list.
* :mod:`~cds.review.detail`, :mod:`~cds.review.charts`, :mod:`~cds.review.notes`,
  :mod:`~cds.review.imaging`, :mod:`~cds.review.png`: the prediction page.
* :mod:`~cds.review.export`: the audit trail as a FHIR AuditEvent Bundle or CSV.

Endpoints (``GET`` unless said):

* ``/audit/`` (to the user's start page), ``/audit/login`` (+ ``POST``), ``POST
  /audit/logout``, ``/audit/oidc/login``, ``/audit/oidc/callback``.
* ``/audit/predictions`` (``?after=`` / ``?before=`` a prediction id), ``POST
  /audit/predictions`` (filters, kept in the session: a patient identifier never
  appears in a URL).
* ``/audit/predictions/{id}``, ``/audit/predictions/{id}/image.png`` and
  ``/heatmap.png``, ``POST /audit/predictions/{id}/verdict``.
* ``/audit/trail``, ``POST /audit/trail/export`` (FHIR or CSV), ``POST
  /audit/trail/verify``; ``/audit/admin/users`` (+ ``POST``), ``POST
  /audit/admin/users/{id}/active``.

Every page view and action is an audit entry (``review.list``, ``review.view``,
``review.image``, ``review.agree`` / ``review.disagree``, ``review.export``,
``review.login`` / ``review.logout`` / ``review.session-expired`` /
``review.login-failed``, ``review.forbidden``, ...), with internal ids only. A reviewer's
comment is stored in ``review_verdicts``; its audit entry holds the comment's sha256.

Settings (``CDSFUSION_``):

* ``REVIEW_SESSION_IDLE_TIMEOUT_S`` (900): a session unused this long ends (automatic
  logoff); the page also leaves itself after this time.
* ``REVIEW_SESSION_ABSOLUTE_TIMEOUT_S`` (43200): a session ends this long after sign-in.
* ``REVIEW_LOCAL_LOGIN`` (true): the login form for local users; turn off where OIDC is
  the only way in.
* ``REVIEW_PAGE_SIZE`` (50): predictions per list page.
* ``REVIEW_OIDC_ISSUER``, ``REVIEW_OIDC_CLIENT_ID``, ``REVIEW_OIDC_CLIENT_SECRET``
  (secret; unset for a public client, PKCE either way): the OIDC provider.
* ``REVIEW_OIDC_SCOPE`` (``openid profile``), ``REVIEW_OIDC_ROLE_CLAIM`` (``roles``),
  ``REVIEW_OIDC_TIMEOUT_S`` (10), ``REVIEW_OIDC_CA_BUNDLE`` (unset).
* ``SECRET_KEY`` signs session cookies, CSRF tokens and the OIDC flow cookie.

The first admin is made with ``cdsfusion users create-admin`` (no default password).
"""
