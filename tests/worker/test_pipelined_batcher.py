"""The batcher in steps: steps overlap across batches, failures stay in their batch, stop
drains every step, and nothing is run twice or dropped."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

import pytest

from worker.batcher import DynamicBatcher

WAIT_S = 10.0


def test_the_first_step_of_the_next_batch_runs_while_a_later_step_works() -> None:
    second_batch_prepared = threading.Event()
    prepared: list[list[int]] = []

    def prepare(keys: Sequence[int]) -> list[int]:
        prepared.append(list(keys))
        if len(prepared) == 2:
            second_batch_prepared.set()
        return list(keys)

    def model(keys: list[int]) -> list[int]:
        if keys == [0, 1]:
            # Blocks the first batch here until the second one went through step one:
            # this would time out if the steps ran one batch at a time.
            assert second_batch_prepared.wait(WAIT_S)
        return keys

    def write(keys: list[int]) -> dict[int, int]:
        return {k: k * 10 for k in keys}

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        stages=(prepare, model, write), max_batch=2, max_wait_s=0.5
    )
    batcher.start()
    first = [batcher.submit(k) for k in (0, 1)]
    second = [batcher.submit(k) for k in (2, 3)]
    assert [f.result(timeout=WAIT_S) for f in first + second] == [0, 10, 20, 30]
    batcher.stop()
    assert prepared == [[0, 1], [2, 3]]


def test_a_failing_step_fails_its_batch_only() -> None:
    def prepare(keys: Sequence[int]) -> list[int]:
        return list(keys)

    def model(keys: list[int]) -> list[int]:
        if 3 in keys:
            raise ValueError("poison")
        return keys

    def write(keys: list[int]) -> dict[int, int]:
        return {k: k for k in keys}

    stages_seen: list[str] = []
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        stages=(prepare, model, write),
        max_batch=2,
        max_wait_s=0.2,
        on_stage=lambda name, _s: stages_seen.append(name),
    )
    batcher.start()
    bad = [batcher.submit(k) for k in (3, 4)]
    for future in bad:
        with pytest.raises(ValueError, match="poison"):
            future.result(timeout=WAIT_S)
    good = [batcher.submit(k) for k in (5, 6)]
    assert [f.result(timeout=WAIT_S) for f in good] == [5, 6]
    batcher.stop()
    assert stages_seen.count("model") == 2
    assert stages_seen.count("write") == 1  # the failed batch never reached it


def test_stop_drains_every_step_once_and_then_calls_on_stop() -> None:
    release = threading.Event()
    ahead = threading.Event()
    runs: dict[str, list[int]] = {"prepare": [], "model": [], "write": []}
    lock = threading.Lock()
    stopped: list[bool] = []

    def record(step: str, keys: Sequence[int]) -> None:
        with lock:
            runs[step].extend(keys)

    def prepare(keys: Sequence[int]) -> list[int]:
        record("prepare", keys)
        if len(runs["prepare"]) >= 6:
            ahead.set()
        return list(keys)

    def model(keys: list[int]) -> list[int]:
        release.wait(WAIT_S)
        record("model", keys)
        return keys

    def write(keys: list[int]) -> dict[int, int]:
        record("write", keys)
        return {k: -k for k in keys}

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        stages=(prepare, model, write),
        max_batch=3,
        max_wait_s=0.01,
        on_stop=lambda: stopped.append(all(f.done() for f in futures)),
    )
    batcher.start()
    futures: list[Future[int]] = [batcher.submit(k) for k in range(20)]
    assert ahead.wait(WAIT_S)  # one batch held in the model, the next ones prepared
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()  # stop while batches sit in the steps and in the queue
    release.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert [f.result(timeout=0) for f in futures] == [-k for k in range(20)]
    for step, keys in runs.items():
        assert sorted(keys) == list(range(20)), step  # each key once per step
    assert stopped == [True]


def test_one_function_is_one_step() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        lambda keys: {k: k + 1 for k in keys}, max_batch=4, max_wait_s=0.01
    )
    batcher.start()
    assert batcher.submit(1).result(timeout=WAIT_S) == 2
    batcher.stop()
    batcher.stop()  # a second stop is harmless


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"fn": lambda keys: {}, "stages": [lambda keys: {}]}, {"stages": []}],
    ids=["neither", "both", "empty"],
)
def test_either_a_function_or_steps(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"fn or stages|must not be empty"):
        DynamicBatcher(**kwargs)  # type: ignore[arg-type]


def test_a_batch_keeps_gathering_while_the_next_step_is_full() -> None:
    """With no wait at all, keys that arrive while the model is busy and the next batch
    is already prepared join one batch instead of going one by one."""
    model_free = threading.Event()
    in_model = threading.Event()
    b_prepared = threading.Event()
    prepared: list[list[int]] = []

    def prepare(keys: Sequence[int]) -> list[int]:
        prepared.append(list(keys))
        if 10 in keys:
            b_prepared.set()
        return list(keys)

    def model(keys: list[int]) -> list[int]:
        in_model.set()
        assert model_free.wait(WAIT_S)
        return keys

    def write(keys: list[int]) -> dict[int, int]:
        return {k: k for k in keys}

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        stages=(prepare, model, write), max_batch=8, max_wait_s=0.0
    )
    batcher.start()
    futures = [batcher.submit(0)]  # batch A: held in the model
    assert in_model.wait(WAIT_S)
    futures.append(batcher.submit(10))  # batch B: prepared, waiting for the model
    assert b_prepared.wait(WAIT_S)
    for key in (20, 21, 22):  # batch C: gathers while B waits
        futures.append(batcher.submit(key))
        time.sleep(0.01)  # arrivals spread out, each past max_wait
    model_free.set()
    assert [f.result(timeout=WAIT_S) for f in futures] == [0, 10, 20, 21, 22]
    batcher.stop()
    assert prepared == [[0], [10], [20, 21, 22]]


def test_without_a_busy_next_step_max_wait_still_bounds_a_batch() -> None:
    prepared: list[list[int]] = []

    def prepare(keys: Sequence[int]) -> list[int]:
        prepared.append(list(keys))
        return list(keys)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        stages=(prepare, lambda keys: {k: k for k in keys}), max_batch=64, max_wait_s=0.01
    )
    batcher.start()
    assert batcher.submit(1).result(timeout=WAIT_S) == 1  # alone, not waiting for 63 more
    batcher.stop()
    assert prepared == [[1]]
