"""The dynamic batcher: batch sizes, the maximum wait, per-key results, failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from worker.batcher import DynamicBatcher


class Recorder:
    def __init__(self, fail_on: set[int] | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on or set()
        self.delay_s = delay_s
        self.lock = threading.Lock()

    def __call__(self, keys: Sequence[int]) -> dict[int, int]:
        with self.lock:
            self.batches.append(list(keys))
        time.sleep(self.delay_s)
        if self.fail_on & set(keys):
            raise ValueError("poison")
        return {k: k * 10 for k in keys}


def test_full_batches_form_when_work_is_waiting() -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = DynamicBatcher(recorder, max_batch=4, max_wait_s=0.5)
    batcher.start()
    futures = [batcher.submit(k) for k in range(12)]
    assert [f.result(timeout=10) for f in futures] == [k * 10 for k in range(12)]
    batcher.stop()
    assert max(len(b) for b in recorder.batches) == 4
    assert sum(len(b) for b in recorder.batches) == 12
    assert sorted(k for b in recorder.batches for k in b) == list(range(12))


def test_a_lone_job_waits_at_most_max_wait() -> None:
    recorder = Recorder()
    batcher = DynamicBatcher(recorder, max_batch=64, max_wait_s=0.05)
    batcher.start()
    started = time.monotonic()
    assert batcher.submit(7).result(timeout=5) == 70
    waited = time.monotonic() - started
    batcher.stop()
    assert recorder.batches == [[7]]
    assert waited < 2.0  # generous: asserts it did not wait for a full batch


def test_a_failing_batch_fails_each_waiter_and_the_batcher_goes_on() -> None:
    recorder = Recorder(fail_on={3})
    batcher = DynamicBatcher(recorder, max_batch=8, max_wait_s=0.2)
    batcher.start()
    bad = [batcher.submit(k) for k in (1, 2, 3)]
    for future in bad:
        with pytest.raises(ValueError, match="poison"):
            future.result(timeout=5)
    assert batcher.submit(5).result(timeout=5) == 50
    batcher.stop()


def test_missing_result_for_a_key_fails_only_that_key() -> None:
    def partial(keys: Sequence[int]) -> dict[int, int]:
        return {k: k for k in keys if k != 2}

    batcher = DynamicBatcher(partial, max_batch=8, max_wait_s=0.2)
    batcher.start()
    ok, missing = batcher.submit(1), batcher.submit(2)
    assert ok.result(timeout=5) == 1
    with pytest.raises(KeyError):
        missing.result(timeout=5)
    batcher.stop()


def test_stop_finishes_what_was_submitted() -> None:
    recorder = Recorder(delay_s=0.02)
    batcher = DynamicBatcher(recorder, max_batch=2, max_wait_s=0.01)
    batcher.start()
    futures = [batcher.submit(k) for k in range(6)]
    batcher.stop()
    assert all(f.done() for f in futures)


def test_batch_metrics_callback_sees_every_batch() -> None:
    seen: list[int] = []
    batcher = DynamicBatcher(
        Recorder(), max_batch=3, max_wait_s=0.2, on_batch=lambda n, _s: seen.append(n)
    )
    batcher.start()
    for future in [batcher.submit(k) for k in range(7)]:
        future.result(timeout=5)
    batcher.stop()
    assert sum(seen) == 7 and max(seen) <= 3
