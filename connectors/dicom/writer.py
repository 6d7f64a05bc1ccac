"""Group commit: one writer thread per process flushes and indexes what every association
received.

Each C-STORE has already written its file (not yet flushed, see :mod:`.store`); it hands
its index request to the writer (:meth:`IndexWriter.submit`) and is called back with the
answer, so the SCP's event loop never blocks on it. The writer takes every request that
queued up while it was busy, makes every file of the batch durable with one group flush
(the ``sync`` function, on its own thread while the writer runs the batch's index
statements; it must end before the commit, and a failure fails the whole batch and nothing
is committed), indexes them together in one transaction (set-based, see :mod:`.batch`),
commits once and answers the waiting requests. Every request is still answered only after
the commit that holds its rows, so the durability promise is the same as one transaction
per instance, but the database sees one commit (one WAL fsync on SQLite, one round trip on
PostgreSQL) and a few multi-row statements for a whole batch, and SQLite's single-writer
lock is taken once per batch instead of being fought over by every association.

A batch takes what is queued, and waits a little (at most ``gather_s``) for requests on
their way: the SCP takes a :meth:`IndexWriter.reserve` place when a C-STORE's command
arrives, before its data set, header and file, and submits through it. While reservations
are outstanding, or fewer requests are gathered than the last batch held (associations
sending in step come back together), the writer holds its batch open, so parallel
associations share one transaction instead of each paying a commit; a lone association,
with nothing reserved and a last batch of one, is never kept waiting.

The batch function returns one result per request: a value, or the exception that this
request alone failed with (its rows rolled back). A failed commit fails every request of
the batch (none of them is acknowledged).

With several receiver processes on SQLite (``CDSFUSION_DICOM_RECEIVER_PROCESSES`` > 1) the
writers of the processes take turns through an exclusive ``flock`` on a lock file, held
from the first request of a batch to its commit. SQLite's own lock would serialise them
too, but a writer waiting on it polls with sleeps of up to tens of milliseconds, while a
process waiting on the file lock is woken the moment it is free (and meanwhile more
requests join its batch). The file lock only schedules; the database's lock still guards.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.session import transaction
from cds.core.errors import StorageError

logger = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")

#: ``index_batch(session, requests)``: one result (or the request's own error) per request.
BatchFunction = Callable[[Session, Sequence[R]], list[T | Exception]]
#: ``sync(requests)``: makes what the requests reference durable, or raises.
SyncFunction = Callable[[Sequence[R]], None]


#: ``on_done(result, error)``: called on the writer thread once a request's batch ended.
DoneCallback = Callable[[T | None, BaseException | None], None]


class _Job(Generic[R, T]):
    __slots__ = ("error", "on_done", "request", "result")

    def __init__(self, request: R, on_done: DoneCallback[T]) -> None:
        self.request = request
        self.result: T | None = None
        self.error: BaseException | None = None
        self.on_done = on_done

    def finish(self) -> None:
        try:
            self.on_done(self.result, self.error)
        except Exception:  # a waiter's callback must not stop the writer
            logger.exception("index writer completion callback failed")


class IndexWriter(Generic[R, T]):
    """The group-commit writer.

    Args:
        session_factory: timeline database sessions.
        index_batch: indexes a batch of requests in the given session (not committing).
        sync: makes the files of a batch durable before its transaction commits; raises to
            fail the whole batch. Defaults to ``index_batch.sync`` when it has one (as
            :class:`.batch.BatchIndexer` does), else nothing.
        max_batch: most requests in one transaction. Defaults to 64.
        wait_timeout_s: how long a caller waits for its commit before giving up (it
            then answers out-of-resources; the sender retries). Defaults to 120 s.
        lock_path: file locked (``flock``) around each batch so that the writers of
            several processes take turns; ``None`` (default) for a single process.
        gather_s: longest wait, per batch, for reserved requests to be submitted.
            Defaults to 5 ms.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        index_batch: BatchFunction[R, T],
        *,
        sync: SyncFunction[R] | None = None,
        max_batch: int = 64,
        wait_timeout_s: float = 120.0,
        lock_path: Path | None = None,
        gather_s: float = 0.005,
    ) -> None:
        self.session_factory = session_factory
        self.index_batch = index_batch
        self.sync: SyncFunction[R] | None = (
            sync if sync is not None else getattr(index_batch, "sync", None)
        )
        self.max_batch = max_batch
        self.wait_timeout_s = wait_timeout_s
        self.lock_path = lock_path
        self.gather_s = gather_s
        self._reserved = 0
        self._last_batch = 1
        self._reserved_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._queue: queue.Queue[_Job[R, T] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._syncer: ThreadPoolExecutor | None = None

    def start(self) -> None:
        if self._thread is None:
            if self.lock_path is not None:
                self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            if self.sync is not None:
                self._syncer = ThreadPoolExecutor(1, thread_name_prefix="dicom-group-flush")
            self._thread = threading.Thread(target=self._run, name="dicom-index-writer")
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop; idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
        while True:  # a request queued as the writer stopped is answered, never stranded
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.error = StorageError("index writer stopped")
                job.finish()
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            syncer.shutdown(wait=True)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def reserve(self) -> Reservation[R, T]:
        """A place in a coming batch, for a request still being received and stored.

        Submit through it, or :meth:`Reservation.release` it when no request will come.
        """
        with self._reserved_lock:
            self._reserved += 1
        return Reservation(self)

    def unreserve(self) -> None:
        """One reservation fewer (:meth:`Reservation.release` calls it)."""
        with self._reserved_lock:
            self._reserved -= 1

    def submit(
        self,
        request: R,
        on_done: DoneCallback[T],
        *,
        reservation: Reservation[R, T] | None = None,
    ) -> None:
        """Queue ``request`` for the next batch; ``on_done(result, error)`` is called on the
        writer thread once its batch committed (``error`` None) or failed.

        The caller does not block (the SCP's event loop); ``on_done`` must be quick and
        must not raise. ``reservation``, the request's place, is freed once it is queued.

        Raises:
            StorageError: the writer is not running (``on_done`` is not called).
        """
        try:
            if self._thread is None:
                raise StorageError("index writer not running")
            self._queue.put(_Job(request, on_done))
        finally:
            if reservation is not None:
                reservation.release()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            with self._turn():
                batch = [first]
                deadline = time.monotonic() + self.gather_s
                while len(batch) < self.max_batch:
                    try:
                        job = self._next(deadline, len(batch))
                    except queue.Empty:
                        break
                    if job is None:
                        stopping = True
                        break
                    batch.append(job)
                self._last_batch = len(batch)
                self._commit(batch)

    def _next(self, deadline: float, gathered: int) -> _Job[R, T] | None:
        """The next queued request; while some are reserved, or fewer than the last batch
        held are gathered, wait for one until ``deadline``.

        Raises:
            queue.Empty: nothing queued, and nothing to wait for or the deadline passed.
        """
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            remaining = deadline - time.monotonic()
            expected = self._reserved > 0 or gathered < self._last_batch
            if not expected or remaining <= 0:
                raise
            return self._queue.get(timeout=remaining)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn to write, when writers of several processes share a lock."""
        fd = self._lock_fd
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # only scheduling is lost: the database still serialises
            logger.warning("index writer lock unavailable (%s)", type(exc).__name__)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _commit(self, batch: list[_Job[R, T]]) -> None:
        requests = [job.request for job in batch]
        try:
            # The flush runs beside the index statements (it is I/O and releases the GIL)
            # and must end before the commit: a row must never name bytes not on disk.
            sync, syncer = self.sync, self._syncer
            flushed = None if sync is None or syncer is None else syncer.submit(sync, requests)
            with transaction(self.session_factory) as session:
                try:
                    results = self.index_batch(session, requests)
                finally:
                    if flushed is not None:
                        flushed.result()  # raises: the transaction rolls back
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} index results for {len(batch)} requests")
            for job, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    job.error = result
                else:
                    job.result = result
        except Exception as exc:  # noqa: BLE001 - the batch failed: re-raised in each waiter
            logger.error("index batch of %d failed to commit (%s)", len(batch), type(exc).__name__)
            for job in batch:
                job.error = exc
                job.result = None
        finally:
            for job in batch:
                job.finish()


class Reservation(Generic[R, T]):
    """A request's place in a coming batch (:meth:`IndexWriter.reservation`)."""

    __slots__ = ("_held", "_writer")

    def __init__(self, writer: IndexWriter[R, T]) -> None:
        self._writer = writer
        self._held = True

    def submit(self, request: R, on_done: DoneCallback[T]) -> None:
        """:meth:`IndexWriter.submit` through this reservation."""
        self._writer.submit(request, on_done, reservation=self)

    def release(self) -> None:
        """Free the place (idempotent)."""
        if self._held:
            self._held = False
            self._writer.unreserve()
