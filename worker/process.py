"""``cdsfusion worker``: one Celery worker per GPU, batching across jobs.

CUDA is initialised once, the model is loaded, hash-verified and warmed up before the
worker consumes anything. Celery runs a thread pool; each task thread submits its job id
to one pipelined :class:`DynamicBatcher` and waits, so the model sees batches formed
across jobs (up to ``CDSFUSION_WORKER_BATCH_SIZE`` or ``CDSFUSION_WORKER_MAX_WAIT_MS``)
while the next batch is read and decoded and the last one written.

Why not celery-batches: its 0.11 release requires Celery < 5.7, it hands one task function
the requests of a batch (retries and failures then have to be settled per request by
hand), and it batches only what one Celery consumer has prefetched. Here every job stays
its own Celery message (``acks_late``, retried and dead-lettered alone), and batching
happens after the broker, in the batcher, which the embedded worker uses too.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from celery import Celery, Task
from prometheus_client import start_http_server

from cds.core.pipeline.compose import retry_policy, tasks_for
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from worker.app import SCORE_TASK, SCORING_QUEUE, make_celery
from worker.embedded import WorkerMetrics, scoring_batcher
from worker.gpu import register_gpu_metrics
from worker.model import load_predictor
from worker.scoring import WorkerContext

logger = logging.getLogger(__name__)


def build_worker(settings: Settings, *, metrics_port: int | None) -> tuple[Celery, EngineContext]:
    """The Celery app with the scoring task bound to a loaded, warmed model."""
    if not settings.broker_url:
        raise ValueError("cdsfusion worker needs CDSFUSION_BROKER_URL")
    ctx = EngineContext.build(settings)
    predictor = load_predictor(
        settings.model_path,
        device=settings.worker_device,
        expected_sha256=settings.model_sha256,
        batch_size=settings.worker_batch_size,
        cuda_graphs=settings.worker_cuda_graphs,
        warm_up_batches=(1, settings.worker_batch_size),
    )
    metrics = WorkerMetrics(ctx)
    register_gpu_metrics(ctx.metrics)
    wctx = WorkerContext(
        session_factory=ctx.session_factory,
        tasks=tasks_for(settings),
        data_dir=settings.data_dir,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        policy=retry_policy(settings),
    )

    batcher = scoring_batcher(
        wctx,
        predictor,
        metrics,
        max_batch=settings.worker_batch_size,
        max_wait_s=settings.worker_max_wait_ms / 1000,
        name="gpu-batcher",
    )
    batcher.start()
    app = make_celery(settings.broker_url)

    @app.task(name=SCORE_TASK, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
    def score_job(self: Task, job_id: str) -> str:
        """Score one job (batched with whatever else this worker holds)."""
        metrics.queue_depth.set(batcher.depth)
        try:
            outcome = batcher.submit(uuid.UUID(job_id)).result(timeout=settings.job_lease_s)
        except Exception as exc:  # noqa: BLE001 - database or batch failure: retry later
            delay = min(300.0, settings.job_retry_base_s * 2 ** min(self.request.retries, 8))
            logger.warning("job %s: %s, retrying in %.0f s", job_id, type(exc).__name__, delay)
            raise self.retry(exc=exc, countdown=delay) from None
        return str(outcome)

    if metrics_port:
        start_http_server(metrics_port, registry=ctx.metrics)
    return app, ctx


#: Batches the pipelined batcher holds at once: one forming, one being read and decoded,
#: one in the model, one being written. Celery needs a task thread for every job in them.
BATCHES_IN_FLIGHT = 4


def worker_argv(settings: Settings, concurrency: int | None) -> list[str]:
    """Celery's command line for this worker.

    Each task thread holds one job until its batch is written, so the default thread
    count is what keeps every step of the pipeline fed with full batches
    (:data:`BATCHES_IN_FLIGHT` batches). The broker hands this worker at most two
    messages per thread (``prefetch-multiplier=2``): enough that a thread finishing its
    job has the next at hand, few enough that other workers get their share.
    """
    threads = concurrency or max(4, BATCHES_IN_FLIGHT * settings.worker_batch_size)
    return [
        "worker",
        "--pool=threads",
        f"--concurrency={threads}",
        f"--queues={SCORING_QUEUE}",
        f"--hostname=cdsfusion-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
        "--without-gossip",
        "--without-mingle",
        "--prefetch-multiplier=2",
        f"--loglevel={settings.log_level}",
    ]
