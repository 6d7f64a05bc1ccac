"""Scoring end to end through Celery on a real broker, beside the model batched directly.

(c) N bundles, their jobs sent through the broker to one ``cdsfusion worker`` process that
    batches across jobs: claim, read the bundle from the database, decode the image, build
    the features, run the model with attributions, write the prediction;
(b') the same inputs through ``Predictor.predict`` in batches of the same size, in this
    process (the model's work at the worker's batch size, attributions included).

Prints bundles/s for both, p50/p99 latency from send to prediction row for (c), and the
ratio (c)/(b'). Goal (issue 7): (c) >= 0.8x (b). Needs PostgreSQL and Redis (defaults: this
machine's).

The model is an untrained checkpoint of ``--config`` (default: ``production`` on a GPU,
``tiny`` on CPU). ``--encoder-layers N`` keeps a configuration's widths and cuts its image
and text encoders to N layers: ``--config production --encoder-layers 2`` is a
production-shaped model a CPU can run, where the model's cost per bundle is no longer
small beside the database's and the broker's (with ``tiny`` on CPU, the model takes about
2 ms per bundle, so any per-job cost outside it dominates the ratio).

``--profile-worker FILE`` samples the worker process with py-spy while it scores (raw
collapsed stacks, one line per stack and thread). Also printed: the worker's batches and
mean time per step (from its /metrics), and CPU ms per bundle of the worker, this process
(sending and polling), PostgreSQL and the broker, which say more than wall time on a
shared machine. On a small shared CPU, run with ``OMP_NUM_THREADS=1`` (both (b') and the
worker inherit it): two intra-op threads on two busy cores make (b') swing tenfold.

Usage: python -m bench.gpu_worker_e2e [--bundles 64] [--batch 16] [--config tiny]
       [--encoder-layers N] [--profile-worker FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
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
from fusion.config import FusionConfig, preset
from tests.integration.pipeline_support import (
    seed_context,
    seed_study,
    synthetic_patient,
    tiny_checkpoint,
)
from worker.app import SCORE_TASK, SCORING_QUEUE, make_celery
from worker.features import BuiltInput, build_inputs
from worker.model import load_predictor


def bench_config(name: str, encoder_layers: int | None) -> FusionConfig:
    """The preset ``name``, its image and text encoders cut to ``encoder_layers``."""
    config = preset(name)
    if encoder_layers is None:
        return config
    return dataclasses.replace(
        config,
        image=dataclasses.replace(config.image, num_layers=encoder_layers),
        text=dataclasses.replace(config.text, num_layers=encoder_layers),
    )


def cpu_seconds(
    names: tuple[str, ...] = ("postgres", "redis-server", "beam.smp"),
) -> dict[str, float]:
    """CPU seconds (user + system) used so far by this machine's processes named
    ``names`` (the database and broker servers), by name; empty off Linux."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    used: dict[str, float] = dict.fromkeys(names, 0.0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if comm in used:
            used[comm] += (int(fields[11]) + int(fields[12])) / tick
    return used


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; 0 off Linux."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port that was free a moment ago on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_summary(port: int) -> str:
    """Mean batch size and mean time per step, from the worker's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cdsfusion_worker_") and ("_sum" in line or "_count" in line):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    batches = values.get("cdsfusion_worker_batch_size_count", 0.0)
    if not batches:
        return "no batch recorded"
    parts = [
        f"{batches:.0f} batches, mean size {values['cdsfusion_worker_batch_size_sum'] / batches:.1f}"
    ]
    for stage in ("prepare", "predict", "write"):
        total = values.get(f'cdsfusion_worker_stage_seconds_sum{{stage="{stage}"}}')
        count = values.get(f'cdsfusion_worker_stage_seconds_count{{stage="{stage}"}}')
        if total is not None and count:
            parts.append(f"{stage} {total / count * 1e3:.1f} ms/batch")
    return ", ".join(parts)


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (every thread, raw collapsed stacks) until SIGINT."""
    spy = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--threads",
            "--rate",
            "250",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the first job is sent
    return spy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--postgres", default=DEFAULT_SERVER)
    parser.add_argument(
        "--config", default=None, help="preset; default production on GPU, tiny on CPU"
    )
    parser.add_argument(
        "--encoder-layers",
        type=int,
        default=None,
        help="cut the image and text encoders to this many layers (same widths)",
    )
    parser.add_argument(
        "--profile-worker",
        type=Path,
        default=None,
        help="sample the worker with py-spy while it scores (raw collapsed stacks here)",
    )
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    config_name = args.config or ("production" if gpu else "tiny")
    config = bench_config(config_name, args.encoder_layers)
    label = config_name + (
        f", encoders cut to {args.encoder_layers} layers" if args.encoder_layers else ""
    )
    name, url = create_database(args.postgres, "cdsfusion_e2e")
    worker: subprocess.Popen[bytes] | None = None
    try:
        with TemporaryDirectory() as tmp:
            data = Path(tmp)
            checkpoint = tiny_checkpoint(data / "model", config, version="0.0.1-bench")
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
                built = build_inputs(session=session, bundles=bundles, data_dir=data)
            inputs = [b.input for b in built.values() if isinstance(b, BuiltInput)]
            device = torch.cuda.get_device_name() if gpu else "CPU"
            print(
                f"{len(jobs)} jobs for {args.bundles} patients ({label} model, {device}, "
                f"{torch.get_num_threads()} torch threads; OMP_NUM_THREADS sets the worker's too)"
            )

            # (b') the model at the worker's batch size, in this process, warmed as the
            # worker is.
            predictor = load_predictor(
                checkpoint, device="auto", batch_size=args.batch, warm_up_batches=(1, args.batch)
            )
            started, cpu0 = time.perf_counter(), time.process_time()
            for i in range(0, len(inputs), args.batch):
                predictor.predict(inputs[i : i + args.batch])
            if gpu:
                torch.cuda.synchronize()
            rate_b = len(inputs) / (time.perf_counter() - started)
            cpu_b = (time.process_time() - cpu0) / len(inputs)
            del predictor

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
            metrics_port = free_port()
            worker = subprocess.Popen(
                [cli, "worker", "--metrics-port", str(metrics_port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Wait until the worker answers a ping (model loaded and warmed).
            deadline = time.monotonic() + 600
            while not app.control.ping(timeout=1.0):
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise SystemExit("worker did not start")
            spy = start_profiler(worker.pid, args.profile_worker) if args.profile_worker else None
            servers0, worker0, own0 = (
                cpu_seconds(),
                process_cpu_seconds(worker.pid),
                time.process_time(),
            )
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
                # Light polling (this machine's CPU is the worker's too): the end is seen
                # to within 2% of the run or 50 ms.
                time.sleep(min(0.05, max(0.005, (time.perf_counter() - started) / 50)))
            elapsed = time.perf_counter() - started
            servers1, worker1, own1 = (
                cpu_seconds(),
                process_cpu_seconds(worker.pid),
                time.process_time(),
            )
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            with factory() as session:
                rows = session.execute(
                    select(ScoringJob.id, Prediction.created_at).join(
                        Prediction, Prediction.bundle_id == ScoringJob.bundle_id
                    )
                ).all()
            latencies = [(created.timestamp() - sent[job]) * 1e3 for job, created in rows]
            rate_c = len(jobs) / elapsed
            q = statistics.quantiles(latencies, n=100, method="inclusive")
            print(
                f"(b') model batched at {args.batch}, attributions: {rate_b:8.1f} bundles/s "
                f"({cpu_b * 1e3:.1f} CPU ms per bundle)"
            )
            print(
                f"(c)  through the broker + worker:     {rate_c:8.1f} bundles/s, "
                f"latency p50 {q[49]:.0f} ms, p99 {q[98]:.0f} ms (first send at {wall0:.0f})"
            )
            print(f"ratio (c)/(b'): {rate_c / rate_b:.2f}x (goal >= 0.8x)")
            per_bundle = {"worker": worker1 - worker0, "sender+poll": own1 - own0} | {
                name: servers1[name] - servers0.get(name, 0.0) for name in servers1
            }
            print(f"(c)  worker: {worker_summary(metrics_port)}")
            print(
                "(c)  CPU ms per bundle: "
                + ", ".join(f"{k} {v / len(jobs) * 1e3:.1f}" for k, v in per_bundle.items())
                + f"; wall ms per bundle {elapsed / len(jobs) * 1e3:.1f}"
            )
            engine.dispose()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        drop_database(args.postgres, name)


if __name__ == "__main__":
    main()
