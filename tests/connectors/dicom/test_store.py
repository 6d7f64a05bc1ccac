"""The content-addressed store: durable, atomic, reusable, and what orphans are."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import pytest

from cds.core.errors import StorageError
from connectors.dicom.store import ContentStore


def test_put_names_files_by_sha256_and_reuses_them(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    store.prepare()
    assert len(list((tmp_path / "dicom").iterdir())) == 256
    data = b"DICM" * 1000
    first = store.put(data)
    sha = hashlib.sha256(data).hexdigest()
    assert first.sha256 == sha and not first.reused
    assert first.storage_key == f"dicom/{sha[:2]}/{sha}.dcm"
    assert store.read(first.storage_key) == data
    assert store.verify(first.storage_key, sha)
    again = store.put(data)
    assert again.reused and again.storage_key == first.storage_key
    # No temporary file is left next to it.
    assert [p.name for p in (tmp_path / "dicom" / sha[:2]).iterdir()] == [f"{sha}.dcm"]


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ContentStore(tmp_path)
    store.prepare()

    def broken_fsync(_fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError):
        store.put(b"payload")
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "dicom").rglob("*") if p.is_file()]


def test_verify_detects_a_changed_file(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    stored = store.put(b"original")
    store.path_for(stored.storage_key).write_bytes(b"tampered")
    assert not store.verify(stored.storage_key, stored.sha256)
    assert not store.verify("dicom/00/missing.dcm", stored.sha256)
    with pytest.raises(ValueError, match="outside"):
        store.path_for("../../etc/passwd")


def test_orphans_are_old_files_only(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    old = store.put(b"old")
    new = store.put(b"new")
    past = (dt.datetime.now() - dt.timedelta(hours=2)).timestamp()
    os.utime(store.path_for(old.storage_key), (past, past))
    assert list(store.orphans(older_than=dt.timedelta(hours=1))) == [old.storage_key]
    store.remove(old.storage_key)
    assert not store.path_for(old.storage_key).exists()
    assert store.path_for(new.storage_key).exists()
