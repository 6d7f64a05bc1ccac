"""A FHIR R4 server test double that notifies the engine the way real products do.

No FHIR server with subscriptions installs on the test machine, so this double plays the
upstream EHR over real HTTP on loopback: it stores resources, answers reads and searches,
creates Subscriptions, issues SMART tokens, and delivers notifications to the engine's real
endpoints. What each part copies:

* **Storage, read, search** (FHIR R4 RESTful API §3.1.0): every write gets a new
  ``meta.versionId`` and ``meta.lastUpdated``; ``GET [base]/[Type]/[id]``; search by
  ``_lastUpdated``, ``patient``/``subject``, ``date`` (``started`` for ImagingStudy),
  ``identifier``, paging with ``_count`` and a ``next`` link (as HAPI FHIR pages with
  ``_getpagesoffset``).
* **HAPI FHIR rest-hook delivery** (``SubscriptionDeliveringRestHookSubscriber``): with a
  payload, create/update is ``PUT {endpoint}/{Type}/{id}`` with the resource as body, delete
  is ``DELETE {endpoint}/{Type}/{id}``; without ``channel.payload`` it is a ``POST
  {endpoint}`` with an empty body (``sendNotification``). :meth:`hapi_notify`,
  :meth:`hapi_delete`.
* **Medplum rest-hook delivery** (``buildRestHookHeaders`` in Medplum's subscription
  worker): ``POST {endpoint}`` with the bare resource, headers ``X-Medplum-Subscription``,
  ``X-Medplum-Interaction``; ``X-Signature`` is the hex HMAC-SHA256 of the body keyed with
  the ``subscription-secret`` extension; a delete posts ``{}`` with
  ``X-Medplum-Deleted-Resource: Type/id``. :meth:`medplum_notify`, :meth:`medplum_delete`.
* **Subscriptions R5 Backport IG STU 1.1 server** (R4 profile): ``history`` Bundles whose
  first entry is the ``backport-subscription-status-r4`` Parameters (``subscription``,
  ``topic``, ``status``, ``type``, ``events-since-subscription-start``,
  ``notification-event`` with ``event-number``/``timestamp``/``focus``); payload per the
  Subscription's ``backport-payload-content`` (``empty``: status only; ``id-only``: entries
  with ``fullUrl`` only; ``full-resource``). Handshake, heartbeat, numbered events;
  ``deliver=False`` loses a notification (a gap), :meth:`backport_resend` delivers one
  again (a duplicate). ``$status`` (type ``query-status``) and ``$events`` (type
  ``query-event``, ``eventsSinceNumber``/``eventsUntilNumber``) are served unless
  switched off, as on servers that do not implement them.
* **SMART Backend Services** (SMART App Launch 2.0): ``.well-known/smart-configuration``
  with ``token_endpoint``; the token endpoint checks the ``private_key_jwt`` assertion
  (signature with the registered public key, ``iss``/``sub``, ``aud``, ``exp``) and issues
  bearer tokens that every FHIR request must then carry when ``require_auth`` is on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cds.api.server import HttpServer
from tests.conftest import free_port

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
MEDPLUM = "https://www.medplum.com/fhir/StructureDefinition"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass
class SubscriptionState:
    """A Subscription the double delivers for."""

    resource: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return str(self.resource["channel"]["endpoint"])

    @property
    def content(self) -> str:
        payload_ext = (self.resource["channel"].get("_payload") or {}).get("extension") or []
        for ext in payload_ext:
            if ext["url"].endswith("backport-payload-content"):
                return str(ext["valueCode"])
        return "full-resource" if self.resource["channel"].get("payload") else "empty"

    @property
    def secret(self) -> str | None:
        for ext in self.resource.get("extension") or ():
            if ext["url"] == f"{MEDPLUM}/subscription-secret":
                return str(ext["valueString"])
        return None


class FhirServerDouble:
    """The upstream FHIR server, on ``127.0.0.1`` (see the module docstring).

    Args:
        require_auth: FHIR requests need a bearer token issued by the token endpoint.
        public_keys: ``kid -> PEM public key`` accepted for client assertions.
        static_token: a bearer token accepted without the token endpoint.
        supports_events: serve ``$events``. Defaults to True.
        supports_status: serve ``$status``. Defaults to True.
        token_lifetime_s: ``expires_in`` of issued tokens.
    """

    def __init__(
        self,
        *,
        require_auth: bool = False,
        public_keys: dict[str, bytes] | None = None,
        static_token: str | None = None,
        supports_events: bool = True,
        supports_status: bool = True,
        token_lifetime_s: int = 300,
        page_size: int = 20,
    ) -> None:
        self.require_auth = require_auth
        self.public_keys = dict(public_keys or {})
        self.supports_events = supports_events
        self.supports_status = supports_status
        self.token_lifetime_s = token_lifetime_s
        self.page_size = page_size
        self.tokens: set[str] = {static_token} if static_token else set()
        self.token_requests = 0
        self.requests: list[tuple[str, str]] = []
        self.versions: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.subscriptions: dict[str, SubscriptionState] = {}
        self._lock = threading.Lock()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.token_url = f"http://127.0.0.1:{self.port}/auth/token"
        self._server = HttpServer(self._app(), host="127.0.0.1", port=self.port)
        self._http = httpx.Client(timeout=30)

    def start(self) -> FhirServerDouble:
        self._server.start()
        return self

    def stop(self) -> None:
        self._http.close()
        self._server.stop()

    # -- storage --------------------------------------------------------------------------

    def store(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Create or update: a new version with ``versionId`` and ``lastUpdated``."""
        with self._lock:
            key = (resource["resourceType"], resource.get("id") or uuid.uuid4().hex)
            history = self.versions.setdefault(key, [])
            stored = json.loads(json.dumps(resource))
            stored["id"] = key[1]
            stored["meta"] = {
                **(resource.get("meta") or {}),
                "versionId": str(len(history) + 1),
                "lastUpdated": _now(),
            }
            history.append(stored)
            return stored

    def remove(self, resource_type: str, resource_id: str) -> None:
        with self._lock:
            self.versions.pop((resource_type, resource_id), None)

    def current(self) -> list[dict[str, Any]]:
        with self._lock:
            return [history[-1] for history in self.versions.values()]

    # -- HAPI FHIR rest-hook --------------------------------------------------------------

    def hapi_notify(self, subscription_id: str, resource: dict[str, Any]) -> httpx.Response:
        """Store ``resource`` and deliver as HAPI does: PUT with payload, else empty POST."""
        stored = self.store(resource)
        sub = self.subscriptions[subscription_id]
        if sub.resource["channel"].get("payload"):
            url = f"{sub.endpoint}/{stored['resourceType']}/{stored['id']}"
            return self._http.put(url, content=json.dumps(stored), headers=self._json_headers())
        return self._http.post(sub.endpoint)

    def hapi_delete(
        self, subscription_id: str, resource_type: str, resource_id: str
    ) -> httpx.Response:
        self.remove(resource_type, resource_id)
        sub = self.subscriptions[subscription_id]
        return self._http.delete(f"{sub.endpoint}/{resource_type}/{resource_id}")

    # -- Medplum rest-hook ----------------------------------------------------------------

    def medplum_notify(
        self, subscription_id: str, resource: dict[str, Any], *, tamper: bool = False
    ) -> httpx.Response:
        stored = self.store(resource)
        body = json.dumps(stored).encode()
        return self._medplum_post(subscription_id, body, "update", tamper=tamper)

    def medplum_delete(
        self, subscription_id: str, resource_type: str, resource_id: str
    ) -> httpx.Response:
        self.remove(resource_type, resource_id)
        return self._medplum_post(
            subscription_id, b"{}", "delete", deleted=f"{resource_type}/{resource_id}"
        )

    def _medplum_post(
        self,
        subscription_id: str,
        body: bytes,
        interaction: str,
        *,
        deleted: str | None = None,
        tamper: bool = False,
    ) -> httpx.Response:
        sub = self.subscriptions[subscription_id]
        headers = {
            "Content-Type": "application/fhir+json",
            "X-Medplum-Subscription": subscription_id,
            "X-Medplum-Interaction": interaction,
        }
        if deleted:
            headers["X-Medplum-Deleted-Resource"] = deleted
        if sub.secret:
            signature = hmac.new(sub.secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Signature"] = ("0" * 64) if tamper else signature
        return self._http.post(sub.endpoint, content=body, headers=headers)

    # -- Backport IG ----------------------------------------------------------------------

    def backport_handshake(self, subscription_id: str) -> httpx.Response:
        return self._deliver(self._bundle(subscription_id, "handshake", []))

    def backport_heartbeat(self, subscription_id: str) -> httpx.Response:
        return self._deliver(self._bundle(subscription_id, "heartbeat", []))

    def backport_event(
        self, subscription_id: str, resources: list[dict[str, Any]], *, deliver: bool = True
    ) -> httpx.Response | None:
        """Store ``resources``, record one event each, and deliver one notification."""
        sub = self.subscriptions[subscription_id]
        events = []
        for resource in resources:
            stored = self.store(resource)
            with self._lock:
                event = {
                    "number": len(sub.events) + 1,
                    "timestamp": _now(),
                    "resource": stored,
                }
                sub.events.append(event)
            events.append(event)
        bundle = self._bundle(subscription_id, "event-notification", events)
        sub.sent.append(bundle)
        return self._deliver(bundle) if deliver else None

    def backport_resend(self, subscription_id: str, index: int = -1) -> httpx.Response:
        """Deliver an earlier notification again (a duplicate)."""
        return self._deliver(self.subscriptions[subscription_id].sent[index])

    def _bundle(
        self,
        subscription_id: str,
        kind: str,
        events: list[dict[str, Any]],
        content: str | None = None,
        bundle_type: str = "history",
    ) -> dict[str, Any]:
        sub = self.subscriptions[subscription_id]
        content = content or sub.content
        parameters: list[dict[str, Any]] = [
            {
                "name": "subscription",
                "valueReference": {"reference": f"{self.base}/Subscription/{subscription_id}"},
            },
            {"name": "topic", "valueCanonical": sub.resource.get("criteria")},
            {"name": "status", "valueCode": "active"},
            {"name": "type", "valueCode": kind},
            {"name": "events-since-subscription-start", "valueString": str(len(sub.events))},
        ]
        entries: list[dict[str, Any]] = []
        for event in events:
            resource = event["resource"]
            ref = f"{resource['resourceType']}/{resource['id']}"
            part = [
                {"name": "event-number", "valueString": str(event["number"])},
                {"name": "timestamp", "valueInstant": event["timestamp"]},
            ]
            if content != "empty":
                part.append(
                    {"name": "focus", "valueReference": {"reference": f"{self.base}/{ref}"}}
                )
            parameters.append({"name": "notification-event", "part": part})
            if content == "full-resource":
                entries.append(
                    {
                        "fullUrl": f"{self.base}/{ref}",
                        "resource": resource,
                        "request": {"method": "PUT", "url": ref},
                        "response": {"status": "200"},
                    }
                )
            elif content == "id-only":
                entries.append(
                    {
                        "fullUrl": f"{self.base}/{ref}",
                        "request": {"method": "PUT", "url": ref},
                        "response": {"status": "200"},
                    }
                )
        status = {
            "resourceType": "Parameters",
            "id": uuid.uuid4().hex,
            "meta": {"profile": [f"{BACKPORT}/backport-subscription-status-r4"]},
            "parameter": parameters,
        }
        return {
            "resourceType": "Bundle",
            "id": uuid.uuid4().hex,
            "type": bundle_type,
            "timestamp": _now(),
            "entry": [{"fullUrl": f"urn:uuid:{status['id']}", "resource": status}, *entries],
            "_endpoint": sub.endpoint,
        }

    def _deliver(self, bundle: dict[str, Any]) -> httpx.Response:
        body = {k: v for k, v in bundle.items() if k != "_endpoint"}
        return self._http.post(
            bundle["_endpoint"], content=json.dumps(body), headers=self._json_headers()
        )

    @staticmethod
    def _json_headers() -> dict[str, str]:
        return {"Content-Type": "application/fhir+json"}

    # -- the HTTP side --------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if not self.require_auth:
            return True
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and header[7:] in self.tokens

    def _app(self) -> FastAPI:
        app = FastAPI()
        double = self

        def outcome(status: int, text: str) -> JSONResponse:
            body = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
            }
            return JSONResponse(body, status_code=status)

        @app.get("/fhir/.well-known/smart-configuration")
        def smart_configuration() -> dict[str, Any]:
            return {
                "token_endpoint": double.token_url,
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                "grant_types_supported": ["client_credentials"],
            }

        @app.post("/auth/token")
        async def token(request: Request) -> JSONResponse:
            import jwt

            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            double.token_requests += 1
            if form.get("grant_type") != "client_credentials" or form.get(
                "client_assertion_type"
            ) != ("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"):
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            assertion = str(form.get("client_assertion"))
            header = jwt.get_unverified_header(assertion)
            key = double.public_keys.get(str(header.get("kid")))
            if key is None:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            try:
                claims = jwt.decode(
                    assertion, key, algorithms=["RS384", "ES384"], audience=double.token_url
                )
            except jwt.PyJWTError:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            if claims["iss"] != claims["sub"] or claims["exp"] - claims["iat"] > 300:
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            issued = secrets.token_urlsafe(16)
            double.tokens.add(issued)
            return JSONResponse(
                {
                    "access_token": issued,
                    "token_type": "bearer",
                    "expires_in": double.token_lifetime_s,
                    "scope": form.get("scope"),
                }
            )

        @app.post("/fhir/Subscription")
        async def create_subscription(request: Request) -> JSONResponse:
            if not double._authorized(request):
                return outcome(401, "unauthorized")
            resource = json.loads(await request.body())
            resource["status"] = "active"
            stored = double.store(resource)
            double.subscriptions[stored["id"]] = SubscriptionState(resource=stored)
            return JSONResponse(stored, status_code=201)

        @app.get("/fhir/Subscription/{sub_id}/$status")
        def status(sub_id: str, request: Request) -> JSONResponse:
            if not double._authorized(request):
                return outcome(401, "unauthorized")
            if not double.supports_status or sub_id not in double.subscriptions:
                return outcome(404, "operation not supported")
            bundle = double._bundle(sub_id, "query-status", [], bundle_type="searchset")
            return JSONResponse({k: v for k, v in bundle.items() if k != "_endpoint"})

        @app.get("/fhir/Subscription/{sub_id}/$events")
        def events(sub_id: str, request: Request) -> JSONResponse:
            if not double._authorized(request):
                return outcome(401, "unauthorized")
            if not double.supports_events or sub_id not in double.subscriptions:
                return outcome(404, "operation not supported")
            low = int(request.query_params.get("eventsSinceNumber", "1"))
            high = int(request.query_params.get("eventsUntilNumber", str(10**9)))
            chosen = [e for e in double.subscriptions[sub_id].events if low <= e["number"] <= high]
            content = request.query_params.get("content", "full-resource")
            bundle = double._bundle(sub_id, "query-event", chosen, content=content)
            return JSONResponse({k: v for k, v in bundle.items() if k != "_endpoint"})

        @app.get("/fhir/{resource_type}/{resource_id}")
        def read(resource_type: str, resource_id: str, request: Request) -> JSONResponse:
            double.requests.append(("read", f"{resource_type}/{resource_id}"))
            if not double._authorized(request):
                return outcome(401, "unauthorized")
            history = double.versions.get((resource_type, resource_id))
            if not history:
                return outcome(404, "not found")
            return JSONResponse(history[-1])

        @app.get("/fhir/{resource_type}")
        def search(resource_type: str, request: Request) -> JSONResponse:
            double.requests.append(("search", str(request.url.query)))
            if not double._authorized(request):
                return outcome(401, "unauthorized")
            params = request.query_params
            matches = [
                r
                for r in double.current()
                if r["resourceType"] == resource_type and _matches(r, params)
            ]
            matches.sort(key=lambda r: r["meta"]["lastUpdated"])
            offset = int(params.get("_getpagesoffset", "0"))
            count = int(params.get("_count", str(double.page_size)))
            page = matches[offset : offset + count]
            links = [{"relation": "self", "url": str(request.url)}]
            if offset + count < len(matches):
                query = [(k, v) for k, v in params.multi_items() if k != "_getpagesoffset"]
                query.append(("_getpagesoffset", str(offset + count)))
                links.append(
                    {
                        "relation": "next",
                        "url": f"{double.base}/{resource_type}?{httpx.QueryParams(query)}",
                    }
                )
            return JSONResponse(
                {
                    "resourceType": "Bundle",
                    "type": "searchset",
                    "total": len(matches),
                    "link": links,
                    "entry": [
                        {
                            "fullUrl": f"{double.base}/{resource_type}/{r['id']}",
                            "resource": r,
                            "search": {"mode": "match"},
                        }
                        for r in page
                    ],
                }
            )

        return app


def _when(resource: dict[str, Any], parameter: str) -> str | None:
    if parameter == "started":
        return resource.get("started")
    for name in ("effectiveDateTime", "date", "issued"):
        if resource.get(name):
            return str(resource[name])
    for name in ("period", "effectivePeriod"):
        if isinstance(resource.get(name), dict):
            return resource[name].get("start")
    return None


def _compare(value: str | None, prefix_value: str) -> bool:
    if value is None:
        return False
    prefix, bound = prefix_value[:2], prefix_value[2:]
    left = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    right = dt.datetime.fromisoformat(bound.replace("Z", "+00:00"))
    if left.tzinfo is None:
        left = left.replace(tzinfo=dt.UTC)
    if right.tzinfo is None:
        right = right.replace(tzinfo=dt.UTC)
    return {"ge": left >= right, "le": left <= right, "gt": left > right, "lt": left < right}[
        prefix
    ]


def _matches(resource: dict[str, Any], params: Any) -> bool:
    for name, value in params.multi_items():
        if name in ("_count", "_getpagesoffset"):
            continue
        if name == "_lastUpdated":
            if not _compare(resource["meta"]["lastUpdated"], value):
                return False
        elif name in ("patient", "subject"):
            subject = (resource.get("subject") or resource.get("patient") or {}).get(
                "reference", ""
            )
            if subject.removeprefix("Patient/") != value.removeprefix("Patient/"):
                return False
        elif name in ("date", "started"):
            if not _compare(_when(resource, name), value):
                return False
        elif name == "identifier":
            system, _, ident = value.partition("|")
            if not any(
                i.get("system") == system and i.get("value") == ident
                for i in resource.get("identifier") or ()
            ):
                return False
        elif name == "category":
            codes = {
                c.get("code")
                for cat in resource.get("category") or ()
                for c in cat.get("coding") or ()
            }
            if value not in codes:
                return False
    return True
