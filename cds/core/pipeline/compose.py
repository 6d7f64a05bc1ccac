"""Putting the pipeline together for one process, from settings."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from cds.core.aligner.task import TaskDefinition, load_tasks
from cds.core.pipeline.handlers import Handler, scoring_handler, timeline_handler
from cds.core.pipeline.jobs import TOPIC_SCORING, RetryPolicy
from cds.core.pipeline.relay import OutboxRelay
from cds.core.pipeline.triggers import ScheduleTicker
from cds.core.repository.outbox import TOPIC_PREDICTION, TOPIC_TIMELINE
from cds.core.runtime import Component, EngineContext
from cds.core.settings import Settings

logger = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.job_max_attempts,
        base_delay_s=settings.job_retry_base_s,
        lease_s=settings.job_lease_s,
    )


def tasks_for(settings: Settings) -> dict[str, TaskDefinition]:
    """The shipped task definitions plus those in ``CDSFUSION_TASKS_DIR``."""
    return load_tasks([settings.tasks_dir] if settings.tasks_dir else None)


def celery_dispatch(broker_url: str) -> Callable[[uuid.UUID], None]:
    """Send job ids to ``cdsfusion worker`` processes through the broker."""
    from worker.app import make_celery

    app = make_celery(broker_url)

    def dispatch(job_id: uuid.UUID) -> None:
        app.send_task("cdsfusion.score_job", args=[str(job_id)], queue="scoring")

    return dispatch


def pipeline_components(ctx: EngineContext) -> list[Component]:
    """The relay and, in embedded mode, the in-process worker.

    With ``CDSFUSION_BROKER_URL`` set, jobs go to ``cdsfusion worker`` processes and this
    process never imports torch.
    """
    settings = ctx.settings
    tasks = tasks_for(settings)
    policy = retry_policy(settings)
    components: list[Component] = []
    if settings.broker_url:
        dispatch = celery_dispatch(settings.broker_url)
    else:
        from worker.embedded import EmbeddedWorker
        from worker.model import load_predictor
        from worker.scoring import Scorer

        def load() -> Scorer:
            return load_predictor(
                settings.model_path,
                device=settings.worker_device,
                expected_sha256=settings.model_sha256,
                batch_size=settings.worker_batch_size,
                cuda_graphs=settings.worker_cuda_graphs,
            )

        worker = EmbeddedWorker(
            ctx,
            scorer_factory=load,
            tasks=tasks,
            policy=policy,
            max_batch=settings.worker_batch_size,
            max_wait_s=settings.worker_max_wait_ms / 1000,
        )
        components.append(worker)
        dispatch = worker.dispatch
    from cds.fhir.upstream import upstream_handler

    handlers: dict[str, Handler] = {
        TOPIC_TIMELINE: timeline_handler(tasks),
        TOPIC_SCORING: scoring_handler(dispatch),
        TOPIC_PREDICTION: upstream_handler(ctx),
    }
    components.append(
        OutboxRelay(ctx, handlers, policy=policy, sweep_interval_s=min(5.0, policy.lease_s / 4))
    )
    scheduled = [t for t in tasks.values() if t.anchor.kind == "schedule"]
    if scheduled:
        components.append(ScheduleTicker(ctx, scheduled))
    logger.info(
        "pipeline: %d tasks, %s", len(tasks), "broker" if settings.broker_url else "embedded"
    )
    return components
