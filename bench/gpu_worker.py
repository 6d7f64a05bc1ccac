"""Scoring throughput: per-bundle fp32 eager vs the model batched at its best, one run.

(a) the seed code's way: one bundle at a time, fp32, eager;
(b) batched: bf16 autocast, SDPA attention, batches of ``--batch``; eager and with the
    encoders compiled (``torch.compile``), plus single-bundle GPU time with CUDA graphs
    (``mode="reduce-overhead"``);
(c) end to end through Celery on a real broker with the worker batching: see
    ``bench/gpu_worker_e2e.py`` (needs PostgreSQL or SQLite and a broker).

Prints bundles/s, p50/p99 latency, achieved TFLOP/s as a fraction of a bf16 (GPU) or fp32
(CPU) matrix product measured in the same run, and the ratios. Goals for the production
configuration on a GPU (issue 7): (b) >= 45% of the measured ceiling; one bundle <= 5 ms
of GPU time; (b) >= 10x (a). On CPU it runs the tiny configuration so it cannot rot.

Usage: python bench/gpu_worker.py [--config production|demo|tiny] [--bundles 512]
       [--batch 128] [--compile/--no-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from fusion.batch import Batch, collate
from fusion.config import preset
from fusion.features import Featurizer
from fusion.synthetic import generate_cohort
from fusion.training import build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_ceiling(device: torch.device) -> tuple[float, str]:
    """Measured TFLOP/s of a large matrix product (bf16 on CUDA, fp32 on CPU)."""
    if device.type == "cuda":
        n, dtype, label = 8192, torch.bfloat16, "bf16"
    else:
        n, dtype, label = 1024, torch.float32, "fp32"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    seconds = (time.perf_counter() - started) / reps
    return 2 * n**3 / seconds / 1e12, label


def forward(
    model: torch.nn.Module, batch: Batch, dtype: torch.dtype | None, *, counting: bool = False
) -> torch.Tensor:
    device_type = batch.image.device.type
    # The FLOP counter's module tracker needs autograd enabled.
    with (
        contextlib.nullcontext() if counting else torch.inference_mode(),
        torch.autocast(device_type, dtype=dtype or torch.float32, enabled=dtype is not None),
    ):
        logits, _ = model(batch)
    return logits


def flops_per_bundle(model: torch.nn.Module, batch: Batch, dtype: torch.dtype | None) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        forward(model, batch, dtype, counting=True)
    return counter.get_total_flops() / batch.size


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - started)
    return out


def gpu_time_ms(fn: Callable[[], object], reps: int = 50) -> float:
    """Median GPU time of ``fn`` by CUDA events."""
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def pct(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=None, help="preset; default production on GPU, tiny on CPU"
    )
    parser.add_argument("--bundles", type=int, default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.config or ("production" if device.type == "cuda" else "tiny")
    n_bundles = args.bundles or (1024 if device.type == "cuda" else 96)
    batch_size = args.batch if device.type == "cuda" else min(args.batch, 32)
    bf16 = torch.bfloat16 if device.type == "cuda" else None
    config = preset(name)
    torch.manual_seed(0)
    none_missing = {"image": 0.0, "notes": 0.0, "labs": 0.0, "vitals": 0.0}
    cohort = generate_cohort(min(n_bundles, 256), seed=3, missing_rates=none_missing)
    inputs = [p.to_bundle_input() for p in cohort]
    featurizer = Featurizer.fit(config, inputs)
    encoded = [featurizer.encode(inputs[i % len(inputs)]) for i in range(n_bundles)]
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size).to(device).eval()
    size = config.image.image_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
        f"torch {torch.__version__}, config {name} ({params:.1f} M parameters), "
        f"{n_bundles} bundles"
    )
    ceiling, ceiling_label = matmul_ceiling(device)
    print(f"ceiling: {ceiling_label} matrix product {ceiling:.1f} TFLOP/s")

    flops = flops_per_bundle(model, collate(encoded[:8], size).to(device), bf16)
    print(f"model: {flops / 1e9:.1f} GFLOP per bundle (forward)")

    # (a) per bundle, fp32, eager, collated one at a time (the seed code's loop).
    n_a = min(n_bundles, 64 if device.type == "cuda" else 32)
    for i in range(3):
        forward(model, collate([encoded[i]], size).to(device), None)
    sync(device)
    singles = iter(range(n_a))
    lat_a = timed(
        lambda: forward(model, collate([encoded[next(singles)]], size).to(device), None),
        device,
        n_a,
    )
    rate_a = n_a / sum(lat_a)

    # (b) batched, bf16, pre-collated batches (the model's throughput).
    batches = [
        collate(encoded[i : i + batch_size], size).to(device)
        for i in range(0, n_bundles - batch_size + 1, batch_size)
    ]

    def run_batches(m: torch.nn.Module) -> list[float]:
        for b in batches[:2]:
            forward(m, b, bf16)
        sync(device)
        stream = iter(batches * 3)
        return timed(lambda: forward(m, next(stream), bf16), device, 3 * len(batches))

    rows: list[tuple[str, float, float, float]] = []
    lat_b = run_batches(model)
    rows.append(
        (
            "(b) batched bf16 eager" if bf16 else "(b) batched fp32 eager",
            batch_size / statistics.mean(lat_b),
            pct(lat_b, 50),
            pct(lat_b, 99),
        )
    )
    if args.compile:
        model.image.backbone = torch.compile(model.image.backbone, dynamic=False)
        model.notes.encoder = torch.compile(model.notes.encoder, dynamic=False)
        lat_c = run_batches(model)
        rows.append(
            (
                "(b) batched, encoders compiled",
                batch_size / statistics.mean(lat_c),
                pct(lat_c, 50),
                pct(lat_c, 99),
            )
        )

    print()
    print(
        f"{'variant':34} {'bundles/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'TFLOP/s':>8} {'of ceiling':>10}"
    )
    print(
        f"{'(a) per bundle fp32 eager':34} {rate_a:10.1f} {pct(lat_a, 50) * 1e3:8.2f} "
        f"{pct(lat_a, 99) * 1e3:8.2f} {rate_a * flops / 1e12:8.2f} {rate_a * flops / 1e12 / ceiling:10.1%}"
    )
    best = max(rows, key=lambda r: r[1])
    for label, rate, p50, p99 in rows:
        tflops = rate * flops / 1e12
        print(
            f"{label:34} {rate:10.1f} {p50 * 1e3:8.2f} {p99 * 1e3:8.2f} {tflops:8.2f} {tflops / ceiling:10.1%}"
        )
    print(
        f"\nratio (b)/(a): {best[1] / rate_a:.1f}x (goal >= 10x); (b) at "
        f"{best[1] * flops / 1e12 / ceiling:.1%} of the ceiling (goal >= 45%)"
    )

    if device.type == "cuda":
        one = collate([encoded[0]], size).to(device)
        eager_ms = gpu_time_ms(lambda: forward(model, one, bf16))
        print(f"one bundle, bf16 (compiled encoders): {eager_ms:.2f} ms GPU time")
        try:
            graphed = (
                build_model(config, featurizer.n_codes, featurizer.vocab_size).to(device).eval()
            )
            graphed.image.backbone = torch.compile(
                graphed.image.backbone, mode="reduce-overhead", dynamic=False
            )
            graphed.notes.encoder = torch.compile(
                graphed.notes.encoder, mode="reduce-overhead", dynamic=False
            )
            for _ in range(5):
                forward(graphed, one, bf16)
            graph_ms = gpu_time_ms(lambda: forward(graphed, one, bf16))
            print(
                f"one bundle, bf16, CUDA graphs (reduce-overhead): {graph_ms:.2f} ms GPU time (goal <= 5 ms)"
            )
        except Exception as exc:  # noqa: BLE001 - report, do not hide, a capture failure
            print(f"CUDA graphs failed: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
