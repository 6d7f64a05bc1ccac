"""The group-commit writer: results per request, and turns between processes' writers."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from connectors.dicom.writer import IndexWriter


def factory() -> sessionmaker[Session]:
    return sessionmaker(bind=create_engine("sqlite://"))


def test_each_request_gets_its_own_result_or_error() -> None:
    def halve(_session: Session, requests: Sequence[int]) -> list[int | Exception]:
        return [ValueError("odd") if r % 2 else r // 2 for r in requests]

    writer: IndexWriter[int, int] = IndexWriter(factory(), halve)
    writer.start()
    try:
        assert writer.submit(8) == 4
        try:
            writer.submit(3)
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
        waiter = threading.Thread(target=first.submit, args=("a",))
        waiter.start()
        assert holding.wait(5)
        answered: list[str] = []
        other = threading.Thread(target=lambda: answered.append(second.submit("b")))
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
