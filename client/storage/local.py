"""The local filesystem backend: keys are paths below the datastore root directory, and every read stays there.

A datastore is written by many hands, so a key is confined without trusting what is on disk: it is checked
lexically (`check_key`: no `..`, no absolute key), the directories it passes through are checked once each (a link
among them must resolve below the root; directories of a datastore do not move, so the answer is remembered), and
the file is opened with O_NOFOLLOW, so only a file that is itself a link costs a resolution (allowed when it stays
below the root). O_NONBLOCK keeps a FIFO planted in the datastore from blocking the reader. A refused key raises
`OutsideDatastore`.

Listings read a small file per run or task (`_self.json`), and a task's listing about ten records: when those are
not in the page cache, `read_ahead` has the kernel read them all at once, so that they do not wait for the disk one
after the other.
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import stat
from typing import BinaryIO, List, Optional, Sequence, Set

from .base import OutsideDatastore, Storage, check_key

#: flags for opening a file of a datastore: never through a final link, never blocking on a FIFO
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: flags for checking that a path is a directory and no link to one (O_PATH: not opened for reading)
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: the same through links, to learn where a path leads
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
#: directories remembered as checked, per root (a bound on memory only: forgetting costs a system call each)
_MAX_CHECKED_DIRS = 200_000
_DOTS = (".", "..")
#: the levels of a datastore that are wide (flows, runs, tasks): from the second directory asked for at one of them
#: on, the directory is checked with its siblings, from one listing of their parent
_WIDE_LEVELS = 4
#: the level among them whose directories are few (a run's steps; `<F>/data/<xx>`, at most 256): checked one by one
_NARROW_LEVEL = 2
#: entries of a parent's listing taken for that check, so that a step of 100,000 tasks does not leave 100,000 keys
#: in every process that reads one of them (each new image of the readahead worker included); past it, the other
#: sub-directories are checked one by one
_LISTED_ENTRIES = 4096


def _in_page_cache(descriptor: int) -> bool:
    """Whether the start of the open regular file is in the page cache (True when the read cannot tell)."""
    try:
        os.preadv(descriptor, [bytearray(1)], 0, os.RWF_NOWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class LocalStorage(Storage):
    TYPE = "local"

    def __init__(self, root: str):
        super().__init__(root)
        self._real = os.path.realpath(self.root)
        self._prefix = self.root + "/"
        self._checked: Set[str] = set()  # keys of directories known to resolve below the root
        self._seen: Set[str] = set()  # keys of directories with one sub-directory checked
        self._listed: Set[str] = set()  # keys of directories whose sub-directories were checked from a listing

    # -- confinement ------------------------------------------------------------------------------------------
    def _inside(self, real: str, key: str) -> str:
        if real != self._real and not real.startswith(self._real + "/") and self._real != "/":
            raise OutsideDatastore("%s/%s leads outside the datastore (to %s)" % (self.root, key, real))
        return real

    def _check_dir(self, key: str) -> None:
        """Make sure directory `key` ('' is the root) resolves below the root: its parent does, and it is no link
        or one that stays below the root. FileNotFoundError when it does not exist."""
        if not key or key in self._checked:
            return
        parent = key.rpartition("/")[0]
        if parent and parent not in self._checked:
            grandparent = parent.rpartition("/")[0]
            if grandparent and grandparent not in self._checked and self._check_path(key):
                return  # three levels or more at once (a run's end task and its _meta, ...)
            self._check_dir(parent)
        if len(self._checked) >= _MAX_CHECKED_DIRS:
            self._forget()
        depth = key.count("/")
        if depth < _WIDE_LEVELS and depth != _NARROW_LEVEL and parent not in self._listed:
            if parent in self._seen:  # a second sub-directory asked for: check all of them from one listing
                self._check_children(parent)
                if key in self._checked:
                    return
            else:
                self._seen.add(parent)
        path = self._prefix + key
        try:  # a descriptor of the directory itself, not one a link names: cheaper than an lstat and its result
            os.close(os.open(path, _DIR_FLAGS))
        except NotADirectoryError:  # a link, or no directory (whose files then fail to open)
            if stat.S_ISLNK(os.lstat(path).st_mode):
                self._inside(os.path.realpath(path, strict=True), key)
        self._checked.add(key)

    def _check_path(self, key: str) -> bool:
        """Check directory `key` and its ancestors in one go: open it (through any links) and ask the kernel which
        directory that is. Its path below the root, spelled as `key`, means no component is a link: all are
        checked. False otherwise (a link on the way, a missing directory, no /proc), for a check level by level."""
        try:
            fd = os.open(self._prefix + key, _PATH_FLAGS)
        except OSError:
            return False
        try:
            if os.readlink("/proc/self/fd/%d" % fd) != self._real + "/" + key:
                return False
        except OSError:
            return False
        finally:
            os.close(fd)
        if len(self._checked) >= _MAX_CHECKED_DIRS:
            self._forget()
        while key and key not in self._checked:
            self._checked.add(key)
            key = key.rpartition("/")[0]
        return True

    def _forget(self) -> None:
        self._checked.clear()
        self._listed.clear()
        self._seen.clear()

    def _check_children(self, parent: str) -> None:
        """Check the sub-directories of `parent` (checked) that are no links, from one listing of it (its first
        `_LISTED_ENTRIES` entries): the file type comes with the listing, where checking them one by one costs a
        system call each."""
        self._listed.add(parent)
        try:
            with os.scandir(self.url(parent)) as entries:
                prefix = parent + "/" if parent else ""
                listed = itertools.islice(entries, _LISTED_ENTRIES)
                self._checked.update(prefix + e.name for e in listed if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            pass

    def _path(self, key: str) -> str:
        """The path of `key`, whose directories are checked; the last component is the opener's to check."""
        directory, _, name = key.rpartition("/")
        if directory in self._checked and name not in _DOTS:  # a checked directory passed check_key
            return self._prefix + key
        self._check_dir(check_key(key).rpartition("/")[0])
        return self._prefix + key if key else self.root

    def _resolved(self, key: str, path: str) -> str:
        """The real path of `path`, a link: allowed only when it stays below the root."""
        return self._inside(os.path.realpath(path, strict=True), key)

    def open_fd(self, key: str) -> int:
        """A descriptor of the file `key`, opened without following a link out of the root."""
        path = self._path(key)
        try:
            return os.open(path, OPEN_FLAGS)
        except OSError as exc:
            return self._open_link(key, path, exc)

    def _open_link(self, key: str, path: str, exc: OSError) -> int:
        """Open `path`, which failed with `exc`: when that says it is a link (ELOOP), the file it names, if that is
        below the root."""
        if exc.errno != errno.ELOOP:
            raise exc
        return os.open(self._resolved(key, path), OPEN_FLAGS)

    # -- Storage interface -----------------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        """The whole file. Plain os.read: twice as fast as a buffered file object for the small JSON files that
        make up most reads of a local datastore."""
        directory, _, name = key.rpartition("/")  # open_fd and _path's common case, inlined: the hot path
        path = self._prefix + key if directory in self._checked and name not in _DOTS else self._path(key)
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as exc:
            fd = self._open_link(key, path, exc)
        try:
            data = os.read(fd, 65536)
            if len(data) < 65536:
                return data
            chunks = [data]
            while True:
                chunk = os.read(fd, max(os.fstat(fd).st_size - 65536, 65536))
                if not chunk:
                    return b"".join(chunks)
                chunks.append(chunk)
        finally:
            os.close(fd)

    def read_ahead(self, keys: Sequence[str]) -> None:
        """When the first of `keys` that opens as a regular file is not in the page cache (a one-byte read that must
        not wait tells), ask the kernel to read it and the rest now (POSIX_FADV_WILLNEED starts the reads and
        returns), each opened as `read` opens it; the reads then find them. Keys that cannot be opened are left to
        the reads."""
        probed = False
        for key in keys:
            try:
                descriptor = self.open_fd(key)
            except (OSError, ValueError):  # missing, refused, a bad key: the read tells
                continue
            try:
                if not probed:
                    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                        continue  # a FIFO planted first tells nothing
                    probed = True
                    if _in_page_cache(descriptor):
                        return
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass  # not a regular file: the read tells
            finally:
                os.close(descriptor)

    def open(self, key: str) -> BinaryIO:
        return os.fdopen(self.open_fd(key), "rb")

    def size(self, key: str) -> int:
        path = self._path(key)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            st = os.stat(self._resolved(key, path))
        return st.st_size

    def exists(self, key: str) -> bool:
        try:
            # os.access, not os.path.exists: a missing file costs no exception and no stat_result
            return os.access(self._path(key), os.F_OK)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def list(self, key: str) -> List[str]:
        try:
            self._check_dir(check_key(key))
            return os.listdir(self.url(key))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def user_attributes(self, key: str) -> Optional[dict]:
        try:
            return json.loads(self.read(key + "_meta"))
        except FileNotFoundError:
            return None

    def local_path(self, key: str) -> Optional[str]:
        """The path of `key` with its directories checked: open it with `OPEN_FLAGS` (a link fails with ELOOP)."""
        return self._path(key)

    def url(self, key: str) -> str:
        return self.root + "/" + key if key else self.root
