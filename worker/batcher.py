"""Dynamic batching across jobs: gather up to a batch size or a maximum wait, then run.

Many producers (the embedded dispatcher, or Celery task threads each holding one job)
call :meth:`DynamicBatcher.submit` and get a future; one consumer thread forms batches and
calls the batch function, so a GPU sees full batches whatever the arrival pattern.

The batch function may come in steps (``stages``), each on its own thread and handed on
through a one-slot queue: while the model runs batch *n*, batch *n + 1* is read and
decoded and batch *n - 1* written, so neither the model nor the database waits for the
other. The one-slot queues bound how far ahead the first step runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

BatchFunction = Callable[[Sequence[K]], dict[K, R]]
#: While the next step is full, how often a forming batch checks whether it can go.
_BUSY_POLL_S = 0.001

#: One step of a batch function in steps: takes the previous step's result (the first
#: step: the batch of keys), returns the next step's input (the last step: the results).
Stage = Callable[[Any], Any]


@dataclass
class _InFlight(Generic[K, R]):
    """A batch between steps: its waiters, the value so far, when it started."""

    waiters: list[tuple[K, Future[R]]]
    value: Any
    started: float


class DynamicBatcher(Generic[K, R]):
    """Runs ``fn`` (or ``stages``, pipelined) on batches of submitted keys.

    Args:
        fn: takes a batch of keys, returns a result per key; a key missing from the result
            fails its future with ``KeyError``; an exception fails the whole batch's futures.
        stages: instead of ``fn``, the batch function in steps, each run on its own
            thread: the first takes the keys, each next one the previous one's result, the
            last returns the result per key (as ``fn`` does). An exception in any step
            fails that batch's futures; the other batches go on.
        max_batch: largest batch. Defaults to 32.
        max_wait_s: how long the first key of a batch waits for company. Defaults to 5 ms.
            With ``stages``, a batch goes on gathering past it while the second step
            still has a batch waiting: waiting then costs no latency and gives fuller
            batches.
        on_batch: called with each batch's size and run time (all steps; metrics).
        on_stage: called with a step's name and run time, for each batch and step.
        on_stop: called once every thread has stopped (to release what the steps use).
        name: the threads' name.

    Raises:
        ValueError: both or neither of ``fn`` and ``stages``, or ``max_batch`` < 1.
    """

    def __init__(
        self,
        fn: BatchFunction[K, R] | None = None,
        *,
        stages: Sequence[Stage] | None = None,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
        on_stage: Callable[[str, float], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if (fn is None) == (stages is None):
            raise ValueError("give either fn or stages")
        steps: list[Stage] = [fn] if fn is not None else list(stages or ())
        if not steps:
            raise ValueError("stages must not be empty")
        self._stages = steps
        self._stage_names = [getattr(step, "__name__", f"stage{i}") for i, step in enumerate(steps)]
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._on_batch = on_batch
        self._on_stage = on_stage
        self._on_stop = on_stop
        self._queue: queue.Queue[tuple[K, Future[R]] | None] = queue.Queue()
        # Between steps: one batch waits while the next step works on another.
        self._handoffs: list[queue.Queue[_InFlight[K, R] | None]] = [
            queue.Queue(maxsize=1) for _ in steps[1:]
        ]
        self._threads = [threading.Thread(target=self._run, name=name, daemon=True)] + [
            threading.Thread(
                target=self._run_stage,
                args=(i,),
                name=f"{name}-{self._stage_names[i]}",
                daemon=True,
            )
            for i in range(1, len(steps))
        ]
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                for thread in self._threads:
                    thread.start()
                self._started = True

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was submitted (through every step), then stop."""
        with self._lock:
            if not self._started or self._stopped:
                return
            self._stopped = True
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._on_stop is not None:
            self._on_stop()

    @property
    def depth(self) -> int:
        """Keys waiting for a batch."""
        return self._queue.qsize()

    def submit(self, key: K) -> Future[R]:
        future: Future[R] = Future()
        self._queue.put((key, future))
        return future

    def _downstream_full(self) -> bool:
        """Whether the second step still has a batch waiting (so a batch formed now
        would only wait behind it)."""
        return bool(self._handoffs) and self._handoffs[0].full()

    def _gather(self, first: tuple[K, Future[R]]) -> tuple[list[tuple[K, Future[R]]], bool]:
        """A batch: up to ``max_batch`` keys, gathered for ``max_wait_s``, and for as long
        after that as the next step could not take the batch anyway."""
        batch = [first]
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    item = self._queue.get(timeout=remaining)
                elif self._downstream_full():
                    item = self._queue.get(timeout=_BUSY_POLL_S)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                if remaining > 0 or self._downstream_full():
                    continue
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        """The first thread: form batches, run the first step, hand them on."""
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            waiters, stopping = self._gather(first)
            started = time.perf_counter()
            self._advance(0, _InFlight(waiters, [k for k, _ in waiters], started))
        if self._handoffs:
            self._handoffs[0].put(None)

    def _run_stage(self, index: int) -> None:
        """A later step's thread: take batches from the step before, hand them on."""
        inbox = self._handoffs[index - 1]
        while True:
            batch = inbox.get()
            if batch is None:
                break
            self._advance(index, batch)
        if index < len(self._handoffs):
            self._handoffs[index].put(None)

    def _advance(self, index: int, batch: _InFlight[K, R]) -> None:
        """Run step ``index`` on ``batch``; hand it on, deliver it, or fail its waiters."""
        step_started = time.perf_counter()
        try:
            value = self._stages[index](batch.value)
        except Exception as exc:  # noqa: BLE001 - delivered to every waiting caller
            for _, future in batch.waiters:
                future.set_exception(exc)
            self._observe(index, batch, step_started, done=True)
            return
        last = index == len(self._stages) - 1
        self._observe(index, batch, step_started, done=last)
        if not last:
            batch.value = value
            self._handoffs[index].put(batch)
            return
        results: dict[K, R] = value
        for key, future in batch.waiters:
            if key in results:
                future.set_result(results[key])
            else:
                future.set_exception(KeyError(f"no result for {key!r}"))

    def _observe(
        self, index: int, batch: _InFlight[K, R], step_started: float, *, done: bool
    ) -> None:
        now = time.perf_counter()
        try:
            if self._on_stage is not None:
                self._on_stage(self._stage_names[index], now - step_started)
            if done and self._on_batch is not None:
                self._on_batch(len(batch.waiters), now - batch.started)
        except Exception:  # a metrics failure must not lose the batch
            logger.exception("batch metrics callback failed")
