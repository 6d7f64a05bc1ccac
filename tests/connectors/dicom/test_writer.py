"""The group-commit writer: results per request, and turns between processes' writers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from cds.core.errors import StorageError
from connectors.dicom.store import SyncError
from connectors.dicom.writer import BatchFunction, IndexWriter, Reservation


def submit(to: IndexWriter[Any, Any] | Reservation[Any, Any], request: Any) -> Any:
    """Submit and wait for the answer, as the SCP's ``await`` does: the result, or raises
    the request's error."""
    answered = threading.Event()
    answer: dict[str, Any] = {}

    def on_done(result: Any, error: BaseException | None) -> None:
        answer.update(result=result, error=error)
        answered.set()

    to.submit(request, on_done)
    assert answered.wait(10), "no answer from the writer"
    if answer["error"] is not None:
        raise answer["error"]
    return answer["result"]


@contextlib.contextmanager
def reservation(writer: IndexWriter[Any, Any]) -> Iterator[Reservation[Any, Any]]:
    """A place held for a block, freed at its end if nothing was submitted."""
    held = writer.reserve()
    try:
        yield held
    finally:
        held.release()


def factory() -> sessionmaker[Session]:
    return sessionmaker(bind=create_engine("sqlite://"))


def test_each_request_gets_its_own_result_or_error() -> None:
    def halve(_session: Session, requests: Sequence[int]) -> list[int | Exception]:
        return [ValueError("odd") if r % 2 else r // 2 for r in requests]

    writer: IndexWriter[int, int] = IndexWriter(factory(), halve)
    writer.start()
    try:
        assert submit(writer, 8) == 4
        try:
            submit(writer, 3)
        except ValueError as exc:
            assert str(exc) == "odd"
        else:
            raise AssertionError("the odd request did not fail")
    finally:
        writer.stop()


def test_writers_sharing_a_lock_file_take_turns(tmp_path: Path) -> None:
    # Two writers stand for two receiver processes (flock locks are per open file, so two
    # writers of one process exclude each other just as two processes do).
    holding, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow(_session: Session, requests: Sequence[str]) -> list[str | Exception]:
        holding.set()
        release.wait(5)
        ran.append("first")
        return list(requests)

    def fast(_session: Session, requests: Sequence[str]) -> list[str | Exception]:
        ran.append("second")
        return list(requests)

    lock = tmp_path / "writer.lock"
    first: IndexWriter[str, str] = IndexWriter(factory(), slow, lock_path=lock)
    second: IndexWriter[str, str] = IndexWriter(factory(), fast, lock_path=lock)
    first.start()
    second.start()
    try:
        waiter = threading.Thread(target=submit, args=(first, "a"))
        waiter.start()
        assert holding.wait(5)
        answered: list[str] = []
        other = threading.Thread(target=lambda: answered.append(submit(second, "b")))
        other.start()
        other.join(0.3)
        assert ran == [] and answered == []  # the second writer waits for its turn
        release.set()
        waiter.join(5)
        other.join(5)
        assert ran == ["first", "second"] and answered == ["b"]
    finally:
        release.set()
        first.stop()
        second.stop()


def _recording_factory(events: list[tuple[str, ...]]) -> sessionmaker[Session]:
    sessions = factory()
    event.listen(sessions, "after_commit", lambda _session: events.append(("commit",)))
    return sessions


def test_a_group_is_synced_whole_before_its_transaction_commits() -> None:
    events: list[tuple[str, ...]] = []
    first_in, gate = threading.Event(), threading.Event()

    def sync(requests: Sequence[str]) -> None:
        if list(requests) == ["a"]:
            first_in.set()
            gate.wait(5)
        events.append(("sync", *sorted(requests)))

    def index(session: Session, requests: Sequence[str]) -> list[str | Exception]:
        events.append(("index", *sorted(requests)))
        session.execute(text("select 1"))
        return list(requests)

    writer: IndexWriter[str, str] = IndexWriter(_recording_factory(events), index, sync=sync)
    writer.start()
    try:
        answers: list[str] = []
        threads = [
            threading.Thread(target=lambda r=r: answers.append(submit(writer, r))) for r in "abcd"
        ]
        threads[0].start()
        assert first_in.wait(5)
        for thread in threads[1:]:
            thread.start()
        while writer._queue.qsize() < 3:
            time.sleep(0.01)
        assert answers == []  # nobody is answered before the commit of its group
        gate.set()
        for thread in threads:
            thread.join(5)
        assert sorted(answers) == ["a", "b", "c", "d"]
        # The flush may run beside the index statements, but ends before the commit.
        commits = [i for i, e in enumerate(events) if e == ("commit",)]
        assert len(commits) == 2
        first, second = events[: commits[0]], events[commits[0] + 1 : commits[1]]
        assert sorted(first) == [("index", "a"), ("sync", "a")]
        assert sorted(second) == [("index", "b", "c", "d"), ("sync", "b", "c", "d")]
    finally:
        gate.set()
        writer.stop()


def test_a_failed_sync_fails_the_whole_group_and_commits_nothing() -> None:
    events: list[tuple[str, ...]] = []

    def sync(requests: Sequence[str]) -> None:
        raise SyncError("could not flush")

    def index(_session: Session, requests: Sequence[str]) -> list[str | Exception]:
        events.append(("index", *requests))
        return list(requests)

    writer: IndexWriter[str, str] = IndexWriter(_recording_factory(events), index, sync=sync)
    writer.start()
    try:
        with pytest.raises(SyncError):
            submit(writer, "a")
        assert ("commit",) not in events  # indexed beside the flush, rolled back
    finally:
        writer.stop()


def test_the_sync_defaults_to_the_batch_functions_own() -> None:
    synced: list[Sequence[int]] = []

    class Indexer:
        def __call__(self, _session: Session, requests: Sequence[int]) -> list[int | Exception]:
            return list(requests)

        def sync(self, requests: Sequence[int]) -> None:
            synced.append(list(requests))

    writer: IndexWriter[int, int] = IndexWriter(factory(), Indexer())
    writer.start()
    try:
        assert submit(writer, 7) == 7
        assert synced == [[7]]
    finally:
        writer.stop()


def _recording_batches() -> tuple[list[list[int]], BatchFunction[int, int]]:
    batches: list[list[int]] = []

    def record(_session: Session, requests: Sequence[int]) -> list[int | Exception]:
        batches.append(list(requests))
        return list(requests)

    return batches, record


def test_a_batch_waits_for_a_reserved_request_to_arrive() -> None:
    batches, record = _recording_batches()
    writer: IndexWriter[int, int] = IndexWriter(factory(), record, gather_s=5.0)
    writer.start()
    results: dict[int, int] = {}
    try:
        with reservation(writer) as place:
            first = threading.Thread(target=lambda: results.update({1: submit(writer, 1)}))
            first.start()
            time.sleep(0.2)  # the writer has the first request, and holds its batch open
            assert not batches
            results[2] = submit(place, 2)
        first.join(5)
    finally:
        writer.stop()
    assert results == {1: 1, 2: 2}
    assert batches == [[1, 2]]


def test_a_lone_request_is_not_kept_waiting_and_a_dropped_reservation_frees_its_place() -> None:
    batches, record = _recording_batches()
    writer: IndexWriter[int, int] = IndexWriter(factory(), record, gather_s=5.0)
    writer.start()
    try:
        started = time.monotonic()
        assert submit(writer, 1) == 1
        with reservation(writer):
            pass  # a request that failed before it was stored: never submitted
        assert submit(writer, 2) == 2
        assert time.monotonic() - started < 4.0  # neither waited for the 5 s gather
    finally:
        writer.stop()
    assert batches == [[1], [2]]


def test_after_a_batch_of_four_the_writer_waits_for_the_fourth_request() -> None:
    # As associations sending in parallel do: each sends its next instance as soon as its
    # answer comes, one of them a little late; the batch waits for it instead of committing
    # three and then one.
    batches: list[list[int]] = []
    queued_behind = threading.Event()

    def record(_session: Session, requests: Sequence[int]) -> list[int | Exception]:
        if requests == [0]:
            queued_behind.wait(5)  # requests 1-4 queue up behind this batch
        batches.append(sorted(requests))
        return list(requests)

    writer: IndexWriter[int, int] = IndexWriter(factory(), record, gather_s=5.0)
    writer.start()

    def submit_later(n: int, delay: float) -> threading.Thread:
        def run() -> None:
            time.sleep(delay)
            submit(writer, n)

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    try:
        first = submit_later(0, 0)
        time.sleep(0.1)
        behind = [submit_later(n, 0) for n in (1, 2, 3, 4)]
        time.sleep(0.2)
        queued_behind.set()
        for thread in [first, *behind]:
            thread.join(5)
        assert batches == [[0], [1, 2, 3, 4]]
        threads = [submit_later(n, 0) for n in (5, 6, 7)] + [submit_later(8, 0.3)]
        for thread in threads:
            thread.join(10)
    finally:
        writer.stop()
    assert batches[2:] == [[5, 6, 7, 8]]


def test_submit_calls_back_after_the_commit_with_the_result_or_error() -> None:
    events: list[tuple[str, ...]] = []

    def halve(_session: Session, requests: Sequence[int]) -> list[int | Exception]:
        events.append(("index", *map(str, requests)))
        return [ValueError("odd") if r % 2 else r // 2 for r in requests]

    answers: list[tuple[int | None, str | None]] = []
    done = threading.Event()

    def on_done(result: int | None, error: BaseException | None) -> None:
        answers.append((result, None if error is None else str(error)))
        events.append(("answered",))
        if len(answers) == 2:
            done.set()

    writer: IndexWriter[int, int] = IndexWriter(_recording_factory(events), halve)
    writer.start()
    try:
        with reservation(writer) as place:
            place.submit(8, on_done)  # returns at once; frees the reservation
            writer.submit(3, on_done)
        assert done.wait(5)
        assert sorted(answers, key=str) == sorted([(4, None), (None, "odd")], key=str)
        assert events.index(("commit",)) < events.index(("answered",))
    finally:
        writer.stop()


def test_a_request_queued_as_the_writer_stops_is_answered() -> None:
    writer: IndexWriter[int, int] = IndexWriter(factory(), lambda _s, rs: list(rs))
    writer.start()
    writer._queue.put(None)  # the writer is told to stop first (as stop() does) ...
    thread = writer._thread
    assert thread is not None
    thread.join(5)
    answers: list[BaseException | None] = []
    writer.submit(1, lambda _r, error: answers.append(error))  # ... then this comes
    writer.stop()
    assert len(answers) == 1 and "stopped" in str(answers[0])
    with pytest.raises(StorageError, match="not running"):
        writer.submit(2, lambda _r, _e: None)
