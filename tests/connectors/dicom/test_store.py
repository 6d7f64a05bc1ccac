"""The content-addressed store: durable, atomic, reusable, and what orphans are."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from cds.core.errors import StorageError
from connectors.dicom import store as store_module
from connectors.dicom.store import ContentStore, SyncError, make_durable


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

    def broken_link(_src: object, _dst: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken_link)
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


def test_put_defers_the_flush_to_the_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ContentStore(tmp_path)
    store.prepare()
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", fsyncs.append)
    stored = store.put(b"deferred")
    assert fsyncs == []
    assert stored.pending == store.path_for(stored.storage_key)
    assert ContentStore(tmp_path, fsync=False).put(b"other").pending is None


def test_a_damaged_file_is_rewritten_not_trusted(tmp_path: Path) -> None:
    # What a crash can leave of a file linked but never flushed: its size, zeroed blocks,
    # or less. The same bytes arriving again must not reference it.
    store = ContentStore(tmp_path)
    store.prepare()
    data = b"DICM" * 500
    for damaged in (b"\x00" * len(data), data[:100]):
        first = store.put(data)
        path = store.path_for(first.storage_key)
        path.write_bytes(damaged)
        again = store.put(data)
        assert not again.reused and path.read_bytes() == data
    assert store.put(data).reused


def test_a_concurrent_put_of_the_same_bytes_never_replaces_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path)
    store.prepare()
    data = b"same bytes"
    path = store.path_for(ContentStore.key_for(hashlib.sha256(data).hexdigest()))
    real_link = os.link

    def racing_link(src: str, dst: str, **kwargs: Any) -> None:
        Path(dst).write_bytes(data)  # another association linked it first
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", racing_link)
    stored = store.put(data)
    monkeypatch.undo()
    assert stored.reused and path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_make_durable_per_file_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ContentStore(tmp_path)
    store.prepare()
    files = [store.put(bytes([n]) * 10) for n in range(6)]
    paths = [f.pending for f in files if f.pending is not None]
    flushed: list[Path] = []
    monkeypatch.setattr(store_module, "_syncfs", None)
    monkeypatch.setattr(store_module, "_fsync_path", flushed.append)
    make_durable(paths + paths[:2])
    directories = list(dict.fromkeys(p.parent for p in paths))
    assert flushed == paths + directories  # each file, then each distinct directory once


def test_make_durable_is_one_syncfs_per_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_module._syncfs is None:
        pytest.skip("no syncfs here")
    store = ContentStore(tmp_path)
    store.prepare()
    calls: list[int] = []
    real = store_module._syncfs

    def counting(fd: int) -> int:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(store_module, "_syncfs", counting)
    make_durable(store.put(bytes([n]) * 10).pending or Path() for n in range(8))
    assert len(calls) == 1


def test_a_failed_flush_makes_the_files_suspect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ContentStore(tmp_path)
    store.prepare()
    data = b"flush fails"
    stored = store.put(data)
    assert stored.pending is not None

    def eio(_path: Path) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(store_module, "_syncfs", None)
    monkeypatch.setattr(store_module, "_fsync_path", eio)
    with pytest.raises(SyncError):
        make_durable([stored.pending])
    monkeypatch.undo()
    # The page cache shows good bytes, but the disk may not have them: rewrite and flush.
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    again = store.put(data)
    assert not again.reused and fsyncs
    assert store.put(data).reused


def test_without_hard_links_the_file_is_flushed_before_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Object-storage and some network mounts refuse link(2): fsync, then rename."""
    events: list[str] = []

    def no_link(_src: object, _dst: object, **_kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(store_module.os, "link", no_link)
    monkeypatch.setattr(
        store_module.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1]
    )
    monkeypatch.setattr(
        store_module.os,
        "replace",
        lambda a, b: (events.append("rename"), real_replace(a, b))[1],
    )
    store = ContentStore(tmp_path)
    data = b"DICM" + os.urandom(64)
    stored = store.put(data)
    assert events.count("rename") == 1
    assert events[-2:] == ["fsync", "rename"]  # the file's own flush, then its name
    assert store.read(stored.storage_key) == data
    assert not stored.reused
    assert not list(tmp_path.rglob("*.tmp"))


needs_tmpfile = pytest.mark.skipif(
    store_module._O_TMPFILE is None or not Path("/proc/self/fd").is_dir(),
    reason="O_TMPFILE and /proc are Linux's",
)


@needs_tmpfile
def test_files_are_written_unnamed_and_linked_once_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No temporary name is made: the file gets its one name once its bytes are written."""
    opened: list[int] = []
    real_open = os.open

    def recording_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        opened.append(flags)
        return real_open(path, flags, *args, **kwargs)

    store = ContentStore(tmp_path)
    store.prepare()
    monkeypatch.setattr(os, "open", recording_open)
    data = b"DICM" + os.urandom(100_000)
    stored = store.put(data)
    inode = store.path_for(stored.storage_key).stat().st_ino
    again = store.put(data)
    monkeypatch.undo()
    assert store.path_for(stored.storage_key).stat().st_ino == inode  # never replaced
    assert store.read(stored.storage_key) == data
    assert not stored.reused and again.reused
    tmpfile = store_module._O_TMPFILE
    assert tmpfile is not None
    # Both puts link an unnamed file; the second finds the name taken and checks its bytes.
    assert [flags & tmpfile == tmpfile for flags in opened] == [True, True]
    path = store.path_for(stored.storage_key)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert path.stat().st_nlink == 1


@needs_tmpfile
def test_without_o_tmpfile_a_named_temporary_file_is_linked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that refuses O_TMPFILE (EOPNOTSUPP) is asked once, then skipped."""
    tmpfile = store_module._O_TMPFILE
    assert tmpfile is not None
    refused: list[int] = []
    real_open = os.open

    def no_tmpfile(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & tmpfile == tmpfile:
            refused.append(flags)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    store = ContentStore(tmp_path)
    store.prepare()
    monkeypatch.setattr(os, "open", no_tmpfile)
    first, second = b"DICM one", b"DICM two"
    keys = [store.put(first).storage_key, store.put(second).storage_key]
    monkeypatch.undo()
    assert len(refused) == 1
    assert [store.read(key) for key in keys] == [first, second]
    assert not list(tmp_path.rglob("*.tmp"))


def _put_in_child(data_dir: str, data: bytes) -> None:
    stored = ContentStore(Path(data_dir)).put(data)
    os._exit(0 if ContentStore(Path(data_dir)).read(stored.storage_key) == data else 3)


@needs_tmpfile
def test_a_forked_receiver_links_its_own_files(tmp_path: Path) -> None:
    """/proc/self/fd opened before a fork names the parent's descriptors: a child that
    linked through it could name the parent's open file, or fail. Each process opens its
    own."""
    store = ContentStore(tmp_path)
    store.prepare()
    parent_data = b"DICM parent" + os.urandom(64)
    store.put(parent_data)  # this process's /proc/self/fd is open now
    child_data = b"DICM child" + os.urandom(64)
    child = multiprocessing.get_context("fork").Process(
        target=_put_in_child, args=(str(tmp_path), child_data)
    )
    child.start()
    child.join(30)
    assert child.exitcode == 0
    key = ContentStore.key_for(hashlib.sha256(child_data).hexdigest())
    assert store.read(key) == child_data
