"""Group commit: one writer thread per process indexes what every association received.

Each association thread has already written its file durably; it hands the index work to
the writer and waits. The writer takes everything that queued up while it was busy and
runs it in one transaction, each instance in its own savepoint, then commits once and
wakes the waiting threads. Every thread still answers only after the commit that holds its
rows, so the durability promise is the same as one transaction per instance, but the
database sees one commit (one WAL fsync on SQLite, one round trip on PostgreSQL) for a
whole batch, and SQLite's single-writer lock is taken once per batch instead of being
fought over by every association.

A failure inside one instance's savepoint affects that instance only; a failed commit
fails every instance of the batch (none of them is acknowledged).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.session import transaction
from cds.core.errors import StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[Session], T]) -> None:
        self.work = work
        self.result: T | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class IndexWriter:
    """The group-commit writer.

    Args:
        session_factory: timeline database sessions.
        max_batch: most instances in one transaction. Defaults to 64.
        wait_timeout_s: how long a caller waits for its commit before giving up (it
            then answers out-of-resources; the sender retries). Defaults to 120 s.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        max_batch: int = 64,
        wait_timeout_s: float = 120.0,
    ) -> None:
        self.session_factory = session_factory
        self.max_batch = max_batch
        self.wait_timeout_s = wait_timeout_s
        self._queue: queue.Queue[_Job[object] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dicom-index-writer")
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop; idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def submit(self, work: Callable[[Session], T]) -> T:
        """Run ``work(session)`` in the next batch and return its result once committed.

        Raises:
            whatever ``work`` raised (its savepoint was rolled back), the commit's error,
            or StorageError when the writer is not running or did not answer in time.
        """
        if self._thread is None:
            raise StorageError("index writer not running")
        job: _Job[T] = _Job(work)
        self._queue.put(job)  # type: ignore[arg-type]
        if not job.done.wait(self.wait_timeout_s):
            raise StorageError("index commit did not complete in time")
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
            self._commit(batch)

    def _commit(self, batch: list[_Job[object]]) -> None:
        try:
            with transaction(self.session_factory) as session:
                for job in batch:
                    try:
                        with session.begin_nested():
                            job.result = job.work(session)
                    except Exception as exc:  # noqa: BLE001 - re-raised in the waiting thread
                        job.error = exc
        except Exception as exc:  # noqa: BLE001 - the commit failed: re-raised in each waiter
            logger.error("index batch of %d failed to commit (%s)", len(batch), type(exc).__name__)
            for job in batch:
                if job.error is None:
                    job.error = exc
                    job.result = None
        finally:
            for job in batch:
                job.done.set()
