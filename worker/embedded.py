"""The in-process worker of the embedded mode: a batcher thread in ``cdsfusion serve``."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge, Histogram

from cds.core.aligner.task import TaskDefinition
from cds.core.pipeline.jobs import RetryPolicy
from cds.core.runtime import EngineContext
from worker.batcher import DynamicBatcher
from worker.scoring import Outcome, Scorer, ScoringBatch, ScoringStages, WorkerContext

logger = logging.getLogger(__name__)


class WorkerMetrics:
    """Prometheus metrics of a scoring worker (registered in the process's registry)."""

    def __init__(self, ctx: EngineContext) -> None:
        self.batch_size = Histogram(
            "cdsfusion_worker_batch_size",
            "Bundles per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=ctx.metrics,
        )
        self.batch_seconds = Histogram(
            "cdsfusion_worker_batch_seconds",
            "Time to score one batch, from claim to write (steps overlap across batches)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=ctx.metrics,
        )
        self.jobs = Counter(
            "cdsfusion_worker_jobs_total",
            "Scoring jobs by outcome",
            ["outcome"],
            registry=ctx.metrics,
        )
        self.queue_depth = Gauge(
            "cdsfusion_worker_queue_depth", "Jobs waiting for a batch", registry=ctx.metrics
        )
        self.stage_seconds = Histogram(
            "cdsfusion_worker_stage_seconds",
            "Time of one step of scoring a batch (prepare: claim, read, decode; predict: "
            "the model; write: store and finish)",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=ctx.metrics,
        )


def scoring_batcher(
    wctx: WorkerContext,
    scorer: Scorer,
    metrics: WorkerMetrics,
    *,
    max_batch: int,
    max_wait_s: float,
    name: str,
    decode_threads: int | None = None,
) -> DynamicBatcher[uuid.UUID, Outcome]:
    """A pipelined batcher that scores job ids with ``scorer`` and records the metrics.

    Its three steps (:class:`ScoringStages`: prepare, predict, write) run on their own
    threads, so the model runs one batch while the next is read and decoded and the last
    written. Used by the embedded worker and by ``cdsfusion worker``; the caller starts
    it, and stopping it finishes every batch in flight and then the decode threads.
    """
    stages = ScoringStages(wctx, scorer, decode_threads=decode_threads)

    def prepare(job_ids: Sequence[uuid.UUID]) -> ScoringBatch:
        return stages.prepare(job_ids)

    def predict(batch: ScoringBatch) -> ScoringBatch:
        return stages.predict(batch)

    def write(batch: ScoringBatch) -> dict[uuid.UUID, Outcome]:
        outcomes = stages.write(batch)
        for outcome in outcomes.values():
            metrics.jobs.labels(outcome.value).inc()
        return outcomes

    def observe(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.batch_seconds.observe(seconds)

    def observe_stage(stage: str, seconds: float) -> None:
        metrics.stage_seconds.labels(stage).observe(seconds)

    return DynamicBatcher(
        stages=(prepare, predict, write),
        max_batch=max_batch,
        max_wait_s=max_wait_s,
        on_batch=observe,
        on_stage=observe_stage,
        on_stop=stages.close,
        name=name,
    )


class EmbeddedWorker:
    """Scores jobs in this process; dispatch is a queue put.

    Args:
        ctx: the process context.
        scorer_factory: loads the model (called in :meth:`start`, so start-up fails fast
            on a missing or tampered checkpoint).
        wctx_tasks: the task definitions.
        policy: retries and dead-lettering.
        max_batch, max_wait_s: batching (see :class:`DynamicBatcher`).
    """

    name = "embedded-worker"

    def __init__(
        self,
        ctx: EngineContext,
        *,
        scorer_factory: Callable[[], Scorer],
        tasks: dict[str, TaskDefinition],
        policy: RetryPolicy,
        max_batch: int = 16,
        max_wait_s: float = 0.01,
    ) -> None:
        self._ctx = ctx
        self._scorer_factory = scorer_factory
        self._tasks = tasks
        self._policy = policy
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._scorer: Scorer | None = None
        self._batcher: DynamicBatcher[uuid.UUID, Outcome] | None = None
        self.metrics = WorkerMetrics(ctx)
        ctx.readiness["model"] = self._ready

    def _ready(self) -> tuple[bool, str]:
        if self._scorer is None:
            return False, "model not loaded"
        return True, f"{self._scorer.model_name} {self._scorer.model_version}"

    def start(self) -> None:
        self._scorer = self._scorer_factory()
        wctx = WorkerContext(
            session_factory=self._ctx.session_factory,
            tasks=self._tasks,
            data_dir=self._ctx.settings.data_dir,
            worker=f"{socket.gethostname()}:{os.getpid()}:embedded",
            policy=self._policy,
        )
        self._batcher = scoring_batcher(
            wctx,
            self._scorer,
            self.metrics,
            max_batch=self._max_batch,
            max_wait_s=self._max_wait_s,
            name="embedded-worker",
        )
        self._batcher.start()

    def dispatch(self, job_id: uuid.UUID) -> None:
        """Hand a job to the batcher (called by the outbox relay)."""
        if self._batcher is None:
            raise RuntimeError("embedded worker is not running")
        self._batcher.submit(job_id)
        self.metrics.queue_depth.set(self._batcher.depth)

    def stop(self) -> None:
        if self._batcher is not None:
            self._batcher.stop()
            self._batcher = None
