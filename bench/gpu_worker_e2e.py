"""Scoring end to end through Celery on a real broker, beside the model batched directly.

(c) N bundles, their jobs sent through the broker to one ``cdsfusion worker`` process that
    batches across jobs: claim, read the bundle from the database, decode the image, build
    the features, run the model with attributions, write the prediction;
(b') the same inputs through ``Predictor.predict`` in batches of the same size, in this
    process (the model's work at the worker's batch size, attributions included).

Prints bundles/s for both, p50/p99 latency from send to prediction row for (c), and the
ratio (c)/(b'). Goal (issue 7): (c) >= 0.8x (b). Needs PostgreSQL and Redis (defaults: this
machine's); runs the tiny configuration on CPU and the production one on a GPU.

Usage: python -m bench.gpu_worker_e2e [--bundles 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

from sqlalchemy import func, select

from bench.pg import DEFAULT_SERVER, create_database, drop_database
from cds.core import migrate
from cds.core.db.models import Bundle, Prediction, ScoringJob
from cds.core.db.session import make_engine, make_session_factory, transaction
from cds.core.pipeline.compose import tasks_for
from cds.core.pipeline.handlers import timeline_handler
from cds.core.pipeline.relay import OutboxRelay
from cds.core.repository.outbox import TOPIC_TIMELINE
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from tests.integration.pipeline_support import (
    seed_context,
    seed_study,
    synthetic_patient,
    tiny_checkpoint,
)
from worker.app import SCORE_TASK, SCORING_QUEUE, make_celery
from worker.features import build_input
from worker.model import load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument(
        "--postgres",
        default=DEFAULT_SERVER,
    )
    args = parser.parse_args()
    name, url = create_database(args.postgres, "cdsfusion_e2e")
    worker: subprocess.Popen[bytes] | None = None
    try:
        with TemporaryDirectory() as tmp:
            data = Path(tmp)
            checkpoint = tiny_checkpoint(data / "model")
            migrate.upgrade(url)
            engine = make_engine(url)
            factory = make_session_factory(engine)
            settings = Settings(database_url=url, data_dir=data, model_dir=checkpoint)
            with transaction(factory) as session:
                for i in range(args.bundles):
                    patient = synthetic_patient(i, seed=77)
                    seed_context(session, patient)
                    seed_study(session, patient, data)
            ctx = EngineContext(settings=settings, engine=engine, session_factory=factory)
            relay = OutboxRelay(ctx, {TOPIC_TIMELINE: timeline_handler(tasks_for(settings))})
            while relay.drain():
                pass
            with factory() as session:
                jobs = list(session.scalars(select(ScoringJob.id)))
                bundles = list(session.scalars(select(Bundle)))
                inputs = [
                    build_input(session=session, bundle=b, data_dir=data).input for b in bundles
                ]
            print(f"{len(jobs)} jobs for {args.bundles} patients (tiny model, CPU)")

            # (b') the model at the worker's batch size, in this process.
            predictor = load_predictor(checkpoint, device="auto", batch_size=args.batch)
            started = time.perf_counter()
            for i in range(0, len(inputs), args.batch):
                predictor.predict(inputs[i : i + args.batch])
            rate_b = len(inputs) / (time.perf_counter() - started)

            # (c) through the broker to a `cdsfusion worker` process.
            env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
            env.update(
                CDSFUSION_DATABASE_URL=url,
                CDSFUSION_BROKER_URL=args.broker,
                CDSFUSION_DATA_DIR=str(data),
                CDSFUSION_MODEL_DIR=str(checkpoint),
                CDSFUSION_WORKER_BATCH_SIZE=str(args.batch),
                CDSFUSION_LOG_LEVEL="WARNING",
            )
            cli = str(Path(sys.executable).with_name("cdsfusion"))
            app = make_celery(args.broker)
            app.control.purge()
            worker = subprocess.Popen([cli, "worker"], env=env, stderr=subprocess.DEVNULL)
            # Wait until the worker answers a ping (model loaded and warmed).
            deadline = time.monotonic() + 180
            while not app.control.ping(timeout=1.0):
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit("worker did not start")
            sent: dict[uuid.UUID, float] = {}
            started = time.perf_counter()
            wall0 = time.time()
            for job_id in jobs:
                sent[job_id] = time.time()
                app.send_task(SCORE_TASK, args=[str(job_id)], queue=SCORING_QUEUE)
            while True:
                with factory() as session:
                    done = session.scalar(select(func.count()).select_from(Prediction)) or 0
                if done >= len(jobs):
                    break
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            with factory() as session:
                rows = session.execute(
                    select(ScoringJob.id, Prediction.created_at).join(
                        Prediction, Prediction.bundle_id == ScoringJob.bundle_id
                    )
                ).all()
            latencies = [(created.timestamp() - sent[job]) * 1e3 for job, created in rows]
            rate_c = len(jobs) / elapsed
            q = statistics.quantiles(latencies, n=100, method="inclusive")
            print(f"(b') model batched at {args.batch}, attributions: {rate_b:8.1f} bundles/s")
            print(
                f"(c)  through the broker + worker:     {rate_c:8.1f} bundles/s, "
                f"latency p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms (first send at {wall0:.0f})"
            )
            print(f"ratio (c)/(b'): {rate_c / rate_b:.2f}x (goal >= 0.8x)")
            engine.dispose()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        drop_database(args.postgres, name)


if __name__ == "__main__":
    main()
