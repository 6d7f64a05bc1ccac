"""``cdsfusion fhir subscribe`` and ``cdsfusion fhir backfill``."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import click

from cds.core.cli.common import load_settings
from cds.core.db.models import PayloadContent, SubscriptionChannel
from cds.core.errors import CdsFusionError
from cds.core.runtime import EngineContext


@click.group()
def fhir() -> None:
    """Upstream FHIR subscriptions and backfill (CDSFUSION_FHIR_SERVER_URL)."""


@fhir.command()
@click.option(
    "--channel",
    type=click.Choice([c.value for c in SubscriptionChannel]),
    default=SubscriptionChannel.REST_HOOK.value,
    show_default=True,
    help="rest-hook: classic R4 criteria (HAPI, Medplum); backport: R5 Backport IG topic.",
)
@click.option("--criteria", multiple=True, help="Search criteria (classic) or filter (backport).")
@click.option("--topic", help="SubscriptionTopic canonical URL (backport).")
@click.option(
    "--query",
    "queries",
    multiple=True,
    help="Searches for empty payloads and recovery (backport; classic uses the criteria).",
)
@click.option(
    "--payload",
    type=click.Choice([p.value for p in PayloadContent]),
    default=PayloadContent.FULL_RESOURCE.value,
    show_default=True,
)
@click.option("--heartbeat", default=60, show_default=True, help="Heartbeat period, seconds.")
@click.option(
    "--notify-base",
    help="This engine's URL as the server reaches it. Default: CDSFUSION_FHIR_NOTIFY_BASE_URL.",
)
def subscribe(  # noqa: PLR0917 - click passes one argument per option
    channel: str,
    criteria: tuple[str, ...],
    topic: str | None,
    queries: tuple[str, ...],
    payload: str,
    heartbeat: int,
    notify_base: str | None,
) -> None:
    """Create Subscription resources on the upstream FHIR server."""
    from connectors.fhir.client import FhirClient
    from connectors.fhir.subscribe import subscribe as create

    settings = load_settings()
    chosen = SubscriptionChannel(channel)
    if chosen is SubscriptionChannel.REST_HOOK and not criteria:
        raise click.UsageError("--criteria is required for rest-hook subscriptions")
    if chosen is SubscriptionChannel.BACKPORT and not topic:
        raise click.UsageError("--topic is required for backport subscriptions")
    base = notify_base or settings.fhir_notify_base_url
    if not base:
        base = f"http://{settings.bind_host}:{settings.http_port}"
    ctx = EngineContext.build(settings)
    try:
        with FhirClient.from_settings(settings) as client:
            secret = settings.fhir_webhook_secret
            rows = create(
                session_factory=ctx.session_factory,
                client=client,
                notify_base=base,
                channel=chosen,
                payload=PayloadContent(payload),
                criteria=criteria,
                topic=topic,
                queries=queries,
                heartbeat_period_s=heartbeat,
                secret=secret.get_secret_value() if secret else None,
            )
    except CdsFusionError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ctx.close()
    for row in rows:
        click.echo(
            f"Subscription/{row.remote_id} -> {base.rstrip('/')}/fhir/notify/{row.endpoint_key}"
        )


@fhir.command()
@click.option("--patient", required=True, help="Patient/123, 123, or system|value.")
@click.option("--since", required=True, type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]))
@click.option("--until", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]))
@click.option("--type", "types", multiple=True, help="Resource types (default: all taken).")
def backfill(
    patient: str, since: dt.datetime, until: dt.datetime | None, types: tuple[str, ...]
) -> None:
    """Pull a patient's resources in a time window from the upstream FHIR server."""
    from connectors.fhir.backfill import DEFAULT_TYPES, backfill_patient
    from connectors.fhir.client import FhirClient
    from connectors.identity import issuer_map

    settings = load_settings()
    tz = ZoneInfo(settings.site_timezone)
    ctx = EngineContext.build(settings)
    try:
        with FhirClient.from_settings(settings) as client:
            counts = backfill_patient(
                client=client,
                session_factory=ctx.session_factory,
                tz=tz,
                patient=patient,
                since=since.replace(tzinfo=tz),
                until=until.replace(tzinfo=tz) if until else None,
                types=types or DEFAULT_TYPES,
                issuer_map=issuer_map(settings),
            )
    except CdsFusionError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        ctx.close()
    click.echo(f"backfill: {counts.describe()}")
