"""``cdsfusion worker``: a Celery scoring worker (one per GPU)."""

from __future__ import annotations

import click

from cds.core.cli.common import load_settings


@click.command()
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Task threads feeding the batcher. Default: twice CDSFUSION_WORKER_BATCH_SIZE.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    envvar="CDSFUSION_WORKER_METRICS_PORT",
    help="Serve Prometheus /metrics of this worker on this port (0 or unset: off).",
)
def worker(concurrency: int | None, metrics_port: int | None) -> None:
    """Run a Celery scoring worker against CDSFUSION_BROKER_URL.

    Pin one worker to one GPU with CUDA_VISIBLE_DEVICES; CDSFUSION_WORKER_DEVICE=cpu runs
    it on the CPU.
    """
    settings = load_settings()
    if not settings.broker_url:
        raise click.ClickException(
            "CDSFUSION_BROKER_URL is not set: in embedded mode `cdsfusion serve` scores jobs "
            "itself; set a broker to run separate workers"
        )
    from worker.process import build_worker, worker_argv

    app, ctx = build_worker(settings, metrics_port=metrics_port)
    try:
        app.worker_main(worker_argv(settings, concurrency))
    finally:
        ctx.close()
