"""The content-addressed file store for received DICOM instances.

A file's key is the sha256 of its exact bytes: the DICOM File Meta Information followed by
the data set as received (what DCMTK's ``storescp`` writes, PS3.10 §7). A write goes to a
temporary name in the target directory and is linked into place only once complete, so a
key names either the complete file or nothing (never a partial write).

Durability is a group operation. :meth:`ContentStore.put` writes and links the file but
does not flush it; the file's :attr:`StoredFile.pending` path is handed to the group-commit
writer (:mod:`.writer`), which calls :func:`make_durable` on every file of a batch *before*
it commits the batch's index rows, and answers the senders only after that commit. On
Linux that is one ``syncfs(2)`` of the store's filesystem (one journal commit for the whole
group; it also reports writeback errors since Linux 5.8); elsewhere, or on older kernels,
each file and then each distinct directory is fsync'd. A failed flush fails the whole group
(``SyncError``, status A700) and nothing of it is committed.

Crash windows (``kill -9`` or power loss) and why none loses or corrupts an acknowledged
instance:

* before the link: nothing remains (an ``O_TMPFILE`` file has no name; where that is
  unavailable, a ``.tmp`` file may remain); no index row, no success.
* linked but not yet flushed: the file may survive whole, truncated, or with zeroed
  blocks, but it has no index row and no success was sent, so it is an *orphan*, removed
  by the start-up cleanup once older than the grace period.
* flushed but not committed: a complete orphan, likewise.
* committed: the file was flushed before the commit, so the row names durable bytes.

The same bytes arriving again (a retry after restart) must not end up referencing an
orphan whose content never reached disk. An existing file is therefore trusted only after
its size *and sha256* are checked (:meth:`ContentStore.put` reads it back; rare: it happens
for duplicates and retries only). A damaged one is rewritten, flushed at once and replaced
under an exclusive ``flock`` (so that two receivers never swap the inode of a file under a
group that already flushed it). New files are linked with ``link(2)``, which never replaces
an existing name: a file that some group already flushed and acknowledged is never swapped
for an unflushed copy. Checking the hash (rather than always rewriting) keeps that property.
A put links first and looks second: the link of new bytes (the usual case) needs no lookup
before it, and a duplicate, rare, costs the write that the refused link discards and then
the read that checks the existing file. On a filesystem without hard links a put renames
its flushed file into place, duplicate or not.

After a failed flush the page cache may hold bytes the disk does not (Linux marks pages
clean after a writeback error, and reports the error only once), so the paths of a failed
group are remembered as *suspect*: the next put of the same bytes rewrites and flushes the
file instead of trusting what the page cache shows.

:meth:`ContentStore.orphans` lists files old enough to be past any in-flight commit, for a
cleanup that removes those the database does not reference.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import errno
import fcntl
import hashlib
import logging
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cds.core.errors import StorageError

logger = logging.getLogger(__name__)

_PREFIX = "dicom"
_SUFFIX = ".dcm"
_TMP_SUFFIX = ".tmp"
_REPAIR_LOCK = ".repair.lock"
#: ``link(2)`` errors of a filesystem that has no hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


class SyncError(StorageError):
    """Files of a group could not be flushed to stable storage (status A700)."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file in the store.

    Attributes:
        storage_key: path relative to the data directory (``dicom/ab/<sha>.dcm``).
        sha256: hex sha256 of the bytes.
        size_bytes: file size.
        reused: the file was already there (a retry or a re-send of the same bytes).
        pending: absolute path still to be flushed (:func:`make_durable`) before the index
            row that names it may be committed; ``None`` when nothing is to be flushed.
    """

    storage_key: str
    sha256: str
    size_bytes: int
    reused: bool
    pending: Path | None = field(default=None, compare=False)


class ContentStore:
    """Files named by their sha256 under ``<data_dir>/dicom/``.

    Args:
        data_dir: ``CDSFUSION_DATA_DIR``; the store lives in its ``dicom`` subdirectory.
        fsync: flush files and directories to stable storage. Defaults to True; only tests
            of unrelated behaviour may turn it off.
    """

    def __init__(self, data_dir: Path, *, fsync: bool = True) -> None:
        self.data_dir = data_dir
        self.root = data_dir / _PREFIX
        self._fsync = fsync
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        #: Files are made unnamed (``O_TMPFILE``) until that proves unsupported here.
        self._unnamed = _O_TMPFILE is not None

    @staticmethod
    def key_for(sha256: str) -> str:
        """``dicom/<first two hex digits>/<sha256>.dcm``: 256 directories, made up front."""
        return f"{_PREFIX}/{sha256[:2]}/{sha256}{_SUFFIX}"

    def prepare(self) -> None:
        """Create the 256 fan-out directories once, so no write has to create (and fsync)
        a directory on the ingest path.

        Raises:
            StorageError: the directories cannot be created.
        """
        try:
            for made in (self.data_dir, self.root):
                if not made.is_dir():
                    made.mkdir(parents=True, exist_ok=True)
                    self._fsync_dir(made.parent)
            created = False
            for index in range(256):
                directory = self.root / f"{index:02x}"
                if not directory.is_dir():
                    directory.mkdir(exist_ok=True)
                    created = True
                self._known_dirs.add(directory)
            if created:
                self._fsync_dir(self.root)
        except OSError as exc:
            raise StorageError(f"DICOM store not writable: {type(exc).__name__}") from exc

    def path_for(self, storage_key: str) -> Path:
        """The absolute path of ``storage_key``; refuses keys that leave the store."""
        path = (self.data_dir / storage_key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError("storage key outside the DICOM store")
        return path

    def put(self, data: bytes) -> StoredFile:
        """Write ``data`` (complete, not yet flushed) and return its key.

        The caller must flush :attr:`StoredFile.pending` (:func:`make_durable`) before it
        commits anything that references the key.

        Raises:
            StorageError: the file could not be written.
        """
        sha = hashlib.sha256(data).hexdigest()
        key = self.key_for(sha)
        path = self.data_dir / key
        absolute = path.absolute()
        pending = absolute if self._fsync else None
        try:
            directory = self._ensure_dir(path.parent)
            if absolute in _suspects:
                self._repair(absolute, data, sha)  # rare: its group's flush failed
                reused = False
            elif not self._link(directory, path, data, sha):
                reused = False  # new bytes, the usual case: linked without a lookup first
            elif _holds(path, data, sha):
                reused = True  # a duplicate or a retry: the bytes were checked
            else:
                self._repair(absolute, data, sha)  # rare: a damaged orphan
                reused = False
        except OSError as exc:
            raise StorageError(f"could not store file {sha[:12]}: {type(exc).__name__}") from exc
        return StoredFile(key, sha, len(data), reused=reused, pending=pending)

    def read(self, storage_key: str) -> bytes:
        return self.path_for(storage_key).read_bytes()

    def verify(self, storage_key: str, sha256: str) -> bool:
        """True when the file exists and its bytes still hash to ``sha256``."""
        try:
            data = self.read(storage_key)
        except (OSError, ValueError):
            return False
        return hashlib.sha256(data).hexdigest() == sha256

    def remove(self, storage_key: str) -> None:
        self.path_for(storage_key).unlink(missing_ok=True)

    def orphans(self, *, older_than: dt.timedelta) -> Iterator[str]:
        """Keys of files (and stale temporary files) last modified before ``older_than`` ago.

        The caller decides which are unreferenced; the age keeps files whose commit may
        still be in flight out of the list.
        """
        if not self.root.is_dir():
            return
        cutoff = time.time() - older_than.total_seconds()
        for path in self.root.glob("*/*"):
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            yield path.relative_to(self.data_dir).as_posix()

    def _link(self, directory: Path, path: Path, data: bytes, sha: str) -> bool:
        """Write ``data`` and link it as ``path``; True when the name was taken already
        (``link`` never replaces it), and then nothing was linked.

        On Linux the file is made with ``O_TMPFILE``: it has no name until ``linkat`` gives
        it its final one, so no temporary name is created and removed per instance, and a
        crash before the link leaves nothing behind. Where that is unavailable, a named
        temporary file (:meth:`_link_named`).
        """
        if self._unnamed:
            try:
                return _link_unnamed(directory, path, data)
            except _NoUnnamedFilesError:
                self._unnamed = False
        return self._link_named(directory, path, data, sha)

    def _link_named(self, directory: Path, path: Path, data: bytes, sha: str) -> bool:
        """Write a temporary file and link it to ``path``; True when the name was taken
        (``link`` never replaces it).

        Where ``O_TMPFILE`` or ``/proc`` is missing. On a filesystem without hard links
        (some network and object-storage mounts) the file is flushed first and then renamed
        into place: a rename may replace a file that a concurrent put of the same bytes
        named, but only with bytes already on disk, so no acknowledged file is ever swapped
        for an unflushed one.
        """
        tmp = directory / f".{sha}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return True
                except OSError as exc:
                    if exc.errno not in _NO_HARD_LINKS:
                        raise
                    fh.flush()
                    if self._fsync:
                        os.fsync(fh.fileno())
                    os.replace(tmp, path)
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _repair(self, path: Path, data: bytes, sha: str) -> None:
        """Replace a damaged or suspect file with ``data``, flushed before it is named.

        Under an exclusive ``flock`` shared by every receiver process of this store, and
        checked again under it, so one receiver repairs and the others then find good bytes.
        """
        fd = os.open(self.root / _REPAIR_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if path not in _suspects and path.exists() and _holds(path, data, sha):
                return
            tmp = path.parent / f".{sha}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    if self._fsync:
                        os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            self._fsync_dir(path.parent)
            with _suspects_lock:
                _suspects.discard(path)
            logger.warning("DICOM store file %s rewritten (damaged or unflushed)", sha[:12])
        finally:
            os.close(fd)  # releases the flock

    def _ensure_dir(self, directory: Path) -> Path:
        if directory in self._known_dirs:
            return directory
        with self._lock:
            missing = [d for d in (directory.parent, directory) if not d.is_dir()]
            directory.mkdir(parents=True, exist_ok=True)
            for made in missing:
                self._fsync_dir(made.parent)
            self._known_dirs.add(directory)
        return directory

    def _fsync_dir(self, directory: Path) -> None:
        if not self._fsync:
            return
        _fsync_path(directory)


_O_TMPFILE: int | None = getattr(os, "O_TMPFILE", None)
#: ``open(2)`` errors of a filesystem or kernel without ``O_TMPFILE`` (EISDIR: a kernel
#: older than 3.11 reads it as ``O_DIRECTORY``).
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL})


class _NoUnnamedFilesError(Exception):
    """``O_TMPFILE`` files cannot be made or linked here: use named temporary files."""


class _ProcFdDir:
    """This process's ``/proc/self/fd`` directory, opened once per process: a forked
    child's inherited fd would name the parent's descriptors, so it reopens its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: tuple[int, int] | None = None  # (pid, fd)

    def fd(self) -> int:
        pid = os.getpid()
        opened = self._opened
        if opened is not None and opened[0] == pid:
            return opened[1]
        with self._lock:
            if self._opened is None or self._opened[0] != pid:
                self._opened = (pid, os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY))
            return self._opened[1]


_proc_fd_dir = _ProcFdDir()


def _link_unnamed(directory: Path, path: Path, data: bytes) -> bool:
    """Write ``data`` to an ``O_TMPFILE`` file in ``directory`` and link it as ``path``;
    True when ``path`` exists already (the link never replaces it).

    ``linkat`` through ``/proc/self/fd/N`` with ``AT_SYMLINK_FOLLOW`` names the open file
    (open(2), "O_TMPFILE"); Python's ``os.link`` calls ``linkat`` with that flag when given
    a ``src_dir_fd`` and ``follow_symlinks=True``.

    Raises:
        _NoUnnamedFilesError: ``O_TMPFILE``, ``/proc`` or hard links are unavailable here.
        OSError: the write or the link failed otherwise (the unnamed file vanishes).
    """
    assert _O_TMPFILE is not None
    try:
        proc = _proc_fd_dir.fd()
    except OSError as exc:  # no /proc mounted
        raise _NoUnnamedFilesError from exc
    try:
        fd = os.open(directory, _O_TMPFILE | os.O_WRONLY, 0o666)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            raise _NoUnnamedFilesError from exc
        raise
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        try:
            os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
        except FileExistsError:
            return True
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:
                raise _NoUnnamedFilesError from exc
            raise
        return False
    finally:
        os.close(fd)


def _holds(path: Path, data: bytes, sha: str) -> bool:
    """True when the file at ``path`` has exactly ``data``'s size and sha256."""
    try:
        if path.stat().st_size != len(data):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha
    except FileNotFoundError:
        return False


#: Paths of groups whose flush failed: the page cache may show bytes the disk lacks.
_suspects: set[Path] = set()
_suspects_lock = threading.Lock()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` where it reports writeback errors (Linux >= 5.8), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        major, minor = (int(part) for part in platform.release().split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_syncfs = _load_syncfs()


def make_durable(paths: Iterable[Path]) -> None:
    """Flush the given store files (and their directory entries) to stable storage.

    One ``syncfs`` per distinct filesystem where available, else an fsync of each file and
    then of each distinct directory.

    Raises:
        SyncError: a flush failed; the paths are remembered as suspect (see module doc).
    """
    files = list(dict.fromkeys(paths))
    if not files:
        return
    try:
        if _syncfs is not None:
            _sync_filesystems(files)
        else:
            for path in files:
                _fsync_path(path)
            for directory in dict.fromkeys(path.parent for path in files):
                _fsync_path(directory)
    except OSError as exc:
        with _suspects_lock:
            _suspects.update(files)
        raise SyncError(f"could not flush {len(files)} stored files: {type(exc).__name__}") from exc


#: One directory fd per filesystem, opened once: ``syncfs`` reports the writeback errors
#: of its filesystem that happened since the fd was opened (errseq), so an fd that lives as
#: long as the process also sees errors of background writeback between two groups.
_fs_fds: dict[int, int] = {}
_fs_lock = threading.Lock()


def _sync_filesystems(files: list[Path]) -> None:
    assert _syncfs is not None
    devices: dict[int, Path] = {}
    for path in files:
        devices.setdefault(os.stat(path).st_dev, path)  # also: every file is still there
    with _fs_lock:
        for device, path in devices.items():
            fd = _fs_fds.get(device)
            if fd is None:
                fd = _fs_fds[device] = os.open(path.parent, os.O_RDONLY)
            if _syncfs(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
