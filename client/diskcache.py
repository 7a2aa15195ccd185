"""A persistent, size-bounded disk cache of immutable blobs keyed by their sha (content-addressed: never stale), and
of done attempts' indexes (`<A>.data.json`, never rewritten once `<A>.DONE.lock` exists) keyed by where they are.

Files live at `<directory>/<key[:2]>/<key>` and hold the *decompressed* blob, so an offset read of a large
`data.pickle` is a local `pread` instead of a new download. Several processes may share one directory:
a blob is written to a private temp file and renamed into place (readers see nothing or all of it; two writers of
the same key write the same bytes), and eviction only unlinks whole files (a reader holding one open keeps it).

The byte budget is enforced approximately: each process counts what it adds and, when its count says the budget
is exceeded, rescans the directory and deletes the least recently used files (by mtime, refreshed on every hit)
until the total is under 90% of the budget.

A cache that cannot be written (full disk, read-only, another user's directory) is no error: `put_stream` stores
nothing and says so with None, the caller reads from the backend, and one log line says why.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import threading
import time
from typing import Iterable, Iterator, List, Optional, Tuple

from .config import mffs_setting

_VALID_KEY = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]{1,127}$")
_TEMP_PREFIX = ".tmp-"
# A temp file older than this belongs to a writer that died; eviction removes it.
_STALE_TEMP_SECONDS = 3600.0
_EVICT_TO = 0.9
#: errors that say the cache cannot take a blob now (not that the blob is bad): such a blob is read through
_UNWRITABLE = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
#: after a failed write, how long the cache stays read-only before it tries again (a full disk may get space)
UNWRITABLE_RETRY_SECONDS = 60.0

log = logging.getLogger("mffs.diskcache")


class BlobDiskCache:
    """`path(key)` → local file of a cached blob or None; `put_stream(key, chunks)` → path of the stored blob."""

    def __init__(self, directory: str, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("disk cache budget must be positive, got %r bytes" % max_bytes)
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._estimated_bytes: Optional[int] = None  # lazily measured; then kept up to date by this process
        self._unwritable_until = 0.0  # monotonic time before which writes are not tried (see put_stream)

    @classmethod
    def from_settings(cls) -> "BlobDiskCache":
        """The cache configured by MFFS_CACHE_DIR (default ~/.cache/mffs) and MFFS_DISK_CACHE_MB (default 10240)."""
        directory = mffs_setting("CACHE_DIR", os.path.join("~", ".cache", "mffs"))
        return cls(os.path.join(directory, "blobs"), mffs_setting("DISK_CACHE_MB", 10240) * 1024 * 1024)

    def _file(self, key: str) -> str:
        if not _VALID_KEY.match(key):
            raise ValueError("not a valid blob key: %r" % key)
        return os.path.join(self.directory, key[:2], key)

    def path(self, key: str) -> Optional[str]:
        """The local file holding the blob, or None when it is not cached. A hit counts as a use for eviction.
        The file may be evicted by another process later: open it promptly and treat FileNotFoundError as a miss."""
        file = self._file(key)
        try:
            os.utime(file)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a cache we cannot write (read-only, another user's) still serves what it holds
            if exc.errno not in _UNWRITABLE or not os.path.isfile(file):
                raise
        return file

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> Optional[str]:
        """Store the blob made of `chunks` atomically and return its path. If `chunks` raises, nothing is stored
        and the exception propagates. If the cache cannot be written (a full disk, a read-only or foreign
        directory), nothing is stored either and the answer is None: the caller reads through, from the backend.
        That is logged once, and writes are tried again only after `UNWRITABLE_RETRY_SECONDS`."""
        file = self._file(key)
        if time.monotonic() < self._unwritable_until:
            return None
        failed_source: List[BaseException] = []

        def source() -> Iterator[bytes]:
            try:
                yield from chunks
            except Exception as exc:  # not GeneratorExit: closing this generator early is no failure of `chunks`
                failed_source.append(exc)
                raise

        temp = None
        written = 0
        try:
            shard = os.path.dirname(file)
            os.makedirs(shard, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=shard)
            with os.fdopen(fd, "wb") as out:
                for chunk in source():
                    out.write(chunk)
                    written += len(chunk)
            os.replace(temp, file)
        except BaseException as exc:
            if temp is not None:
                _unlink_quietly(temp)
            if failed_source or not isinstance(exc, OSError) or exc.errno not in _UNWRITABLE:
                raise
            self._not_writable(exc)
            return None
        self._added(written, keep=file)
        return file

    def _not_writable(self, exc: OSError) -> None:
        with self._lock:
            first = self._unwritable_until == 0.0
            self._unwritable_until = time.monotonic() + UNWRITABLE_RETRY_SECONDS
        if first:
            log.warning("disk cache %s is not writable (%s): reading through, from the backend", self.directory, exc)

    def _added(self, size: int, keep: str) -> None:
        with self._lock:
            if self._estimated_bytes is None:
                self._estimated_bytes = sum(size for _, size, _ in self._scan())
            else:
                self._estimated_bytes += size
            if self._estimated_bytes > self.max_bytes:
                self._estimated_bytes = self._evict(keep)

    def _scan(self) -> List[Tuple[float, int, str]]:
        """(last use, size, path) of every cached blob; stale temp files of dead writers are removed on the way."""
        entries = []
        now = time.time()
        try:
            shards = [entry.path for entry in os.scandir(self.directory) if entry.is_dir()]
        except FileNotFoundError:
            return entries
        for shard in shards:
            try:
                files = list(os.scandir(shard))
            except FileNotFoundError:
                continue
            for entry in files:
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.startswith(_TEMP_PREFIX):
                    if now - stat.st_mtime > _STALE_TEMP_SECONDS:
                        _unlink_quietly(entry.path)
                    continue
                entries.append((stat.st_mtime, stat.st_size, entry.path))
        return entries

    def _evict(self, keep: str) -> int:
        """Delete least recently used blobs (never `keep`, the one just written) until under budget; returns
        the bytes that remain."""
        entries = sorted(self._scan())
        total = sum(size for _, size, _ in entries)
        target = self.max_bytes * _EVICT_TO
        for _, size, path in entries:
            if total <= target:
                break
            if path == keep:
                continue
            _unlink_quietly(path)
            total -= size
        return total


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:  # another process evicted it first
        pass
    except OSError as exc:  # not ours to delete, or a read-only cache: eviction is best effort
        if exc.errno not in _UNWRITABLE:
            raise
