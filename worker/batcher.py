"""Dynamic batching across jobs: gather up to a batch size or a maximum wait, then run.

Many producers (the embedded dispatcher, or Celery task threads each holding one job)
call :meth:`DynamicBatcher.submit` and get a future; one consumer thread forms batches and
calls the batch function, so a GPU sees full batches whatever the arrival pattern.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

BatchFunction = Callable[[Sequence[K]], dict[K, R]]


class DynamicBatcher(Generic[K, R]):
    """Runs ``fn`` on batches of submitted keys.

    Args:
        fn: takes a batch of keys, returns a result per key; a key missing from the result
            fails its future with ``KeyError``; an exception fails the whole batch's futures.
        max_batch: largest batch. Defaults to 32.
        max_wait_s: how long the first key of a batch waits for company. Defaults to 5 ms.
        on_batch: called with each batch's size and run time (metrics).
    """

    def __init__(
        self,
        fn: BatchFunction[K, R],
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._fn = fn
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._on_batch = on_batch
        self._queue: queue.Queue[tuple[K, Future[R]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                self._thread.start()
                self._started = True

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what was submitted, then stop."""
        with self._lock:
            if not self._started:
                return
            self._queue.put(None)
        self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Keys waiting for a batch."""
        return self._queue.qsize()

    def submit(self, key: K) -> Future[R]:
        future: Future[R] = Future()
        self._queue.put((key, future))
        return future

    def _gather(self, first: tuple[K, Future[R]]) -> tuple[list[tuple[K, Future[R]]], bool]:
        batch = [first]
        deadline = time.monotonic() + self._max_wait
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=max(0.0, remaining))
                    if remaining > 0
                    else (self._queue.get_nowait())
                )
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch, stopping = self._gather(first)
            keys = [k for k, _ in batch]
            started = time.perf_counter()
            try:
                results = self._fn(keys)
            except Exception as exc:  # noqa: BLE001 - delivered to every waiting caller
                for _, future in batch:
                    future.set_exception(exc)
                continue
            finally:
                if self._on_batch is not None:
                    self._on_batch(len(batch), time.perf_counter() - started)
            for key, future in batch:
                if key in results:
                    future.set_result(results[key])
                else:
                    future.set_exception(KeyError(f"no result for {key!r}"))
