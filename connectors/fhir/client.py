"""The upstream FHIR R4 server over HTTPS: read, search with paging, create, operations.

Used to resolve empty and id-only notifications, for recovery (``$status``, ``$events``,
search by ``_lastUpdated``), ``cdsfusion fhir subscribe`` and ``cdsfusion fhir backfill``.
TLS verification is always on (``CDSFUSION_FHIR_CA_BUNDLE`` adds a private CA); paging
follows ``next`` links only on the same base, so a token never leaves for another host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from cds.core.errors import ConfigurationError, StorageError
from cds.core.settings import Settings
from connectors.fhir.auth import Authorization, authorization_from_settings

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
#: Upper bound on pages followed by one search (protects against a server looping).
MAX_PAGES = 1000


class FhirServerError(StorageError):
    """The upstream server failed or refused; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class FhirClient:
    """A small synchronous FHIR client.

    Args:
        base: the server's base URL.
        authorization: gives the Authorization header; ``None`` sends none.
        timeout_s: per-request timeout. Defaults to 30.
        verify: TLS verification (True, or a CA bundle path). Never False in production.
        http: an existing httpx client to use (its settings win).
    """

    def __init__(
        self,
        base: str,
        *,
        authorization: Authorization | None = None,
        timeout_s: float = 30.0,
        verify: bool | str = True,
        http: httpx.Client | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self._auth = authorization
        self._http = http or httpx.Client(timeout=timeout_s, verify=verify)

    @classmethod
    def from_settings(cls, settings: Settings, *, base: str | None = None) -> FhirClient:
        """A client for ``base`` (default ``CDSFUSION_FHIR_SERVER_URL``) with configured auth.

        Raises:
            ConfigurationError: no server URL, or an unreadable private key.
        """
        server = base or settings.fhir_server_url
        if not server:
            raise ConfigurationError("CDSFUSION_FHIR_SERVER_URL is not set")
        verify: bool | str = str(settings.fhir_ca_bundle) if settings.fhir_ca_bundle else True
        http = httpx.Client(timeout=settings.fhir_timeout_s, verify=verify)
        authorization = authorization_from_settings(settings, http, server=server)
        return cls(server, authorization=authorization, http=http)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str | list[str]] | None = None,
        json: Any = None,
    ) -> httpx.Response:
        headers = {"Accept": FHIR_JSON}
        if self._auth is not None:
            value = self._auth.header()
            if value:
                headers["Authorization"] = value
        if json is not None:
            headers["Content-Type"] = FHIR_JSON
        try:
            return self._http.request(method, url, params=params, json=json, headers=headers)
        except httpx.HTTPError as exc:
            logger.warning("FHIR server request failed: %s", type(exc).__name__)
            raise FhirServerError("FHIR server unreachable") from exc

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise FhirServerError(
                f"FHIR server answered HTTP {response.status_code}", response.status_code
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise FhirServerError("FHIR server answered with invalid JSON") from exc
        if not isinstance(body, dict):
            raise FhirServerError("FHIR server answered with a non-object")
        return body

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The current version, or ``None`` when gone (404/410)."""
        response = self._request("GET", f"{self.base}/{resource_type}/{resource_id}")
        if response.status_code in (404, 410):
            return None
        return self._json(response)

    def search(
        self, query: str, params: Mapping[str, str | list[str]] | None = None
    ) -> Iterator[dict[str, Any]]:
        """Resources matched by ``query`` (``Observation?category=laboratory``), all pages.

        Only ``search.mode = match`` entries are returned (included resources are not).
        """
        path, _, query_string = query.partition("?")
        merged: dict[str, str | list[str]] = dict(httpx.QueryParams(query_string).multi_items())
        merged.update(params or {})
        url: str | None = f"{self.base}/{path}"
        request_params: Mapping[str, str | list[str]] | None = merged
        for _page in range(MAX_PAGES):
            if url is None:
                return
            bundle = self._json(self._request("GET", url, params=request_params))
            for entry in bundle.get("entry") or ():
                mode = (entry.get("search") or {}).get("mode", "match")
                if mode == "match" and isinstance(entry.get("resource"), dict):
                    yield entry["resource"]
            url = self._next_link(bundle)
            request_params = None
        logger.warning("search stopped after %d pages", MAX_PAGES)

    def _next_link(self, bundle: dict[str, Any]) -> str | None:
        for link in bundle.get("link") or ():
            if link.get("relation") == "next" and isinstance(link.get("url"), str):
                if link["url"].startswith(self.base + "/") or link["url"].startswith(
                    self.base + "?"
                ):
                    return str(link["url"])
                logger.warning("next link to another host ignored")
        return None

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        """POST a new resource; the server's stored version."""
        response = self._request("POST", f"{self.base}/{resource['resourceType']}", json=resource)
        return self._json(response)

    def operation(
        self, path: str, params: Mapping[str, str | list[str]] | None = None
    ) -> dict[str, Any]:
        """GET ``{base}/{path}`` (``Subscription/1/$status``); raises with the HTTP status."""
        return self._json(self._request("GET", f"{self.base}/{path}", params=params))
