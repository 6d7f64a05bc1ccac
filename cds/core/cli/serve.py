"""``cdsfusion serve``: every listener in one process."""

from __future__ import annotations

import logging

import click

from cds.api.app import RouterInstaller, create_app
from cds.api.server import HttpServer
from cds.core import migrate
from cds.core.cli.common import load_settings
from cds.core.pipeline.compose import pipeline_components
from cds.core.runtime import Component, EngineContext, Supervisor

logger = logging.getLogger(__name__)


def http_installers() -> list[RouterInstaller]:
    """Routers mounted on the HTTP app besides health and metrics (FHIR, CDS Hooks, ...)."""
    installers: list[RouterInstaller] = []
    from connectors.fhir.routes import install as install_fhir_notifications

    installers.append(install_fhir_notifications)
    from cds.fhir.routes import install as install_fhir_outputs
    from cds.hooks.routes import install as install_cds_hooks
    from cds.modelcard.routes import install as install_model_card

    installers += [install_fhir_outputs, install_cds_hooks, install_model_card]
    from cds.review.routes import install as install_review_pages

    installers.append(install_review_pages)
    return installers


def listeners(ctx: EngineContext) -> list[Component]:
    """The protocol listeners of this process (DICOM SCP, MLLP), each enabled by its port."""
    found: list[Component] = []
    if ctx.settings.dicom_port:
        from connectors.dicom.listener import DicomListener

        found.append(DicomListener(ctx))
    if ctx.settings.mllp_port:
        from connectors.hl7.listener import MllpListener

        found.append(MllpListener(ctx))
    return found


@click.command()
@click.option(
    "--migrate/--no-migrate",
    "run_migrations",
    default=None,
    help="Apply migrations before serving. Default: yes in embedded mode, no in production "
    "(run `cdsfusion db upgrade` as a deployment step there).",
)
def serve(run_migrations: bool | None) -> None:
    """Run every listener (HTTP, DICOM, MLLP) in one process until SIGINT/SIGTERM.

    In embedded mode the scoring worker runs in the same process.
    """
    settings = load_settings()
    if settings.http_processes > 1 and not settings.http_port:
        raise click.ClickException("CDSFUSION_HTTP_PROCESSES > 1 needs a fixed CDSFUSION_HTTP_PORT")
    if run_migrations if run_migrations is not None else settings.embedded:
        migrate.upgrade(settings.database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ctx = EngineContext.build(settings)
    try:
        ok, detail = ctx.database_ready()
        if not ok:
            raise click.ClickException(f"database not ready: {detail}")
        extra_http = settings.http_processes - 1
        components: list[Component] = [
            HttpServer(
                create_app(ctx, installers=http_installers()),
                host=settings.bind_host,
                port=settings.http_port,
                shutdown_timeout_s=settings.shutdown_timeout_s,
                reuse_port=extra_http > 0,
            ),
        ]
        if extra_http > 0:
            from cds.api.processes import HttpProcesses

            components.append(
                HttpProcesses(extra_http, shutdown_timeout_s=settings.shutdown_timeout_s)
            )
        components += [
            *listeners(ctx),
            *pipeline_components(ctx),
        ]
        logger.info("mode %s, database %s", settings.mode.value, ctx.engine.url.get_backend_name())
        code = Supervisor(components).run()
    finally:
        ctx.close()
    raise SystemExit(code)
