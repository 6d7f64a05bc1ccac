"""The content-addressed file store for received DICOM instances.

A file's key is the sha256 of its exact bytes: the DICOM File Meta Information followed by
the data set as received (what DCMTK's ``storescp`` writes, PS3.10 §7). A write goes to a
temporary name in the target directory, is fsync'd, renamed into place and the directory
fsync'd, so after a crash a key either names the complete file or nothing.

Content addressing makes retries cheap and safe: when the database commit that follows a
write fails, the file stays as an *orphan* that nothing references (it never counts as
stored; only a committed ``source_items.storage_key`` does), and a retry of the same
instance finds the file already there and reuses it. :meth:`ContentStore.orphans` lists
files old enough to be past any in-flight commit, for a cleanup that removes those the
database does not reference.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cds.core.errors import StorageError

logger = logging.getLogger(__name__)

_PREFIX = "dicom"
_SUFFIX = ".dcm"
_TMP_SUFFIX = ".tmp"


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A durable file in the store.

    Attributes:
        storage_key: path relative to the data directory (``dicom/ab/<sha>.dcm``).
        sha256: hex sha256 of the bytes.
        size_bytes: file size.
        reused: the file was already there (a retry or a re-send of the same bytes).
    """

    storage_key: str
    sha256: str
    size_bytes: int
    reused: bool


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
        """Store ``data`` durably and return its key.

        Raises:
            StorageError: the file or its directory could not be written and flushed.
        """
        sha = hashlib.sha256(data).hexdigest()
        key = self.key_for(sha)
        path = self.data_dir / key
        try:
            if path.is_file() and path.stat().st_size == len(data):
                return StoredFile(key, sha, len(data), reused=True)
            directory = self._ensure_dir(path.parent)
            tmp = directory / f".{sha}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    if self._fsync:
                        os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                if tmp.exists():
                    tmp.unlink()
            self._fsync_dir(directory)
        except OSError as exc:
            raise StorageError(f"could not store file {sha[:12]}: {type(exc).__name__}") from exc
        return StoredFile(key, sha, len(data), reused=False)

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
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
