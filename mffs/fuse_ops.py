"""The FUSE adapter: a thin mfusepy `Operations` over mffs.tree, plus the kernel-cache policy.

Kernel caching. libfuse's high-level API has one entry/attr/negative timeout for the whole mount, so:
  * entry_timeout = attr_timeout = `attr_ttl` (long, default 1 h): a second `ls -l` or `find` of anything
    already seen is answered by the kernel without calling Python.
  * Paths the tree reports as unstable (flow level, unfinished runs) are handed to a background thread when the
    kernel stats them; every `refresh` seconds it calls libfuse3's `fuse_invalidate_path()` for each of them, which
    drops the kernel's cached attributes and pages of that inode. Together with the tree's own `refresh`-second
    TTL for unstable nodes, a running run shows new tasks and growing logs within about 2 x `refresh` (default
    0.5 s). A path leaves that set once invalidated and returns only if the kernel asks for it again, so the
    work is proportional to what is being looked at, not to the size of the run.
  * The kernel keeps an entry for everything looked up or listed with attributes, and libfuse a node for each,
    until memory pressure makes the kernel forget them: a walk of 100,000 tasks would leave half a million. Past
    `MemoryBudget.kernel_tasks`, the task directory the kernel entered least recently is forgotten, with what is
    below it (`_Fuse._entered`, mffs/invalidator.py).
  * negative_timeout = `refresh`: a cached "no such file" cannot be invalidated by path (there is no inode), so it
    is kept short; new tasks and files in running runs therefore appear within `refresh` even after a miss.
  * Files opened from stable nodes get `keep_cache` (their pages survive close/open); unstable ones do not.
    Deferred files (size not known yet, see mffs/tree/nodes.py) are opened with `direct_io`, so reads are not cut at
    the reported size 0; opening one renders it, and its stale size is invalidated in the kernel before the open
    returns, so an fstat right after open(2) already sees the exact size.
Readdir is never cached by the kernel in the high-level API; the tree answers it from its own cache. A readdirplus
request gets the full attributes of the listed directories and links (see `_Fuse`), so the kernel caches them like
a lookup's answer (unstable ones until the next invalidation): `find` or `ls -R` of a finished run make no getattr
call per directory, nor `ls -l` of a flow one per run.

Errors: OSErrors from the tree carry their errno (ENOENT, EIO, ...); any other exception in a callback is logged
and returned as EIO (mfusepy would say EINVAL). Every write-type operation is EROFS (the mount is also `ro`).

Callback counts (per operation, excluding the control files themselves) and cache sizes are served as JSON in the
hidden control file `/.mffs/stats`.
"""
from __future__ import annotations

import collections
import ctypes
import errno
import functools
import itertools
import json
import logging
import os
import stat as stat_module
import threading
from ctypes.util import find_library
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from cachetools import LRUCache

from .invalidator import Invalidator
from .sandbox import process_usage
from .tree import CONTROL_DIR, DIR, FILE, LINK, Reader, Stat, Tree, collect_garbage_for_caches

if "FUSE_LIBRARY_NAME" not in os.environ and "FUSE_LIBRARY_PATH" not in os.environ and find_library("fuse3"):
    # mfusepy prefers libfuse2 when both are installed. The mount needs libfuse3: its readdirplus, its
    # fuse_invalidate_path and its thread-pool options (libfuse2 refuses max_threads).
    os.environ["FUSE_LIBRARY_NAME"] = "fuse3"

import mfusepy  # noqa: E402  (after choosing the library)

if mfusepy.fuse_version_major != 3:
    raise ImportError(
        "mffs needs libfuse 3, and FUSE_LIBRARY_NAME/FUSE_LIBRARY_PATH chose libfuse %d" % mfusepy.fuse_version_major
    )

log = logging.getLogger("mffs")

_CONTROL_PREFIX = "/" + CONTROL_DIR
_MODES = {DIR: stat_module.S_IFDIR | 0o555, FILE: stat_module.S_IFREG | 0o444, LINK: stat_module.S_IFLNK | 0o777}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_FUSE_CAP_CACHE_SYMLINKS = 1 << 23  # libfuse3 fuse_common.h
_FUSE_CAP_READDIRPLUS_AUTO = 1 << 14  # libfuse3 fuse_common.h
_FUSE_FILL_DIR_PLUS = 1 << 1  # libfuse3 fuse.h: enum fuse_fill_dir_flags
#: preferred I/O size reported in st_blksize: makes cat/cp use large reads
_BLOCK_SIZE = 128 << 10


def _callback(method: Callable) -> Callable:
    """Count the call and make sure only an errno leaves it: OSError keeps its errno, anything else is EIO."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: "MffsOperations", path: str, *args: Any) -> Any:
        if not path.startswith(_CONTROL_PREFIX):
            self.count(name)
        try:
            return method(self, path, *args)
        except OSError as exc:
            if isinstance(exc.errno, int) and exc.errno > 0:
                if exc.errno != errno.ENOENT:
                    self.count("errors")
                raise
            self.count("errors")
            log.error("%s %s: %s", name, path, exc)
            raise mfusepy.FuseOSError(errno.EIO) from exc
        except Exception as exc:
            self.count("errors")
            log.exception("%s %s failed", name, path)
            raise mfusepy.FuseOSError(errno.EIO) from exc

    return wrapper


def _read_only(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self: "MffsOperations", *args: Any) -> Any:
        raise mfusepy.FuseOSError(errno.EROFS)

    return wrapper


class MffsOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, tree: Tree):
        self.tree = tree
        self.invalidator = Invalidator(tree.settings.refresh)
        tree.on_size_learned = self.invalidator.invalidate_now
        tree.control_files["stats"] = self._stats_json
        self._handles: Dict[int, Reader] = {}
        self._next_handle = itertools.count(1)
        self._counts: Dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self._uid, self._gid = os.getuid(), os.getgid()

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] = self._counts.get(name, 0) + 1

    def stats(self) -> dict:
        with self._counts_lock:
            counts = dict(self._counts)
        # from /proc, not getrusage: ru_maxrss keeps the peak of the process that forked the daemon (Linux carries
        # it across exec), so a daemon started by a large process would report that process's memory
        daemon = process_usage(os.getpid())
        del daemon["pid"]
        source = self.tree.listing_source  # the readahead worker, if any
        worker = source.usage() if source is not None else {"pid": None, "cpu_seconds": 0.0, "max_rss_kb": 0}
        return {
            "calls": counts,
            "open_files": len(self._handles),
            "thread_states_kept": THREAD_STATES.kept,
            "cache": self.tree.cache_info(),
            "daemon": daemon,
            "readahead_worker": worker,
            "render_workers": self.tree.sandbox_usage(),
            # the mount's processes together (the peaks added up: an upper bound of their peak together)
            "cpu_seconds": round(daemon["cpu_seconds"] + worker["cpu_seconds"], 3),
            "max_rss_kb": daemon["max_rss_kb"] + worker["max_rss_kb"],
        }

    def _stats_json(self) -> bytes:
        return (json.dumps(self.stats(), indent=2, sort_keys=True) + "\n").encode()

    # -- lifecycle --------------------------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config: Any) -> None:
        if config is not None and conn_info is not None and conn_info.capable & _FUSE_CAP_CACHE_SYMLINKS:
            # Let the kernel keep link targets: paths through `latest` would otherwise cost a readlink per
            # syscall. Invalidating a link's inode (unstable ones are, every refresh) drops its cached target too.
            conn_info.want |= _FUSE_CAP_CACHE_SYMLINKS
        if conn_info is not None:
            # Every chunk of a listing as READDIR_PLUS, not only the first: in "auto" mode the kernel asks for
            # the rest of a large directory (a step's tasks) without attributes, then stats each entry.
            conn_info.want &= ~_FUSE_CAP_READDIRPLUS_AUTO
        self.invalidator.start(mfusepy._libfuse)  # the library mfusepy loaded

    def destroy(self, path: str) -> None:
        self.invalidator.stop()

    # -- reads ------------------------------------------------------------------------------------------------

    def fill_stat(self, st: Any, node_stat: Stat) -> None:
        """Write a node's attributes into a zeroed libfuse `struct stat`."""
        size = node_stat.size
        st.st_mode = _MODES[node_stat.kind]
        st.st_nlink = 2 if node_stat.kind == DIR else 1
        st.st_size = size
        st.st_blocks = (size + 511) // 512
        st.st_blksize = _BLOCK_SIZE
        st.st_uid = self._uid
        st.st_gid = self._gid
        seconds, nanoseconds = divmod(int(node_stat.mtime * 1e9), 10**9)
        for time_field in (st.st_mtimespec, st.st_ctimespec, st.st_atimespec):
            time_field.tv_sec, time_field.tv_nsec = seconds, nanoseconds

    @_callback
    def getattr(self, path: str, fh: Optional[int] = None) -> Stat:
        node_stat = self.tree.stat(path)
        if not node_stat.stable:
            self.invalidator.watch(path)
        return node_stat

    @_callback
    def readdir(self, path: str, fh: int, offset: int = 0, window_rows: int = 0, most_rows: int = 0
                ) -> Tuple[bool, int, int, List[Tuple[str, str, Optional[Stat]]]]:
        """(whether the directory is stable, the position of the first entry given, the number of entries with `.`
        and `..`, [(name, kind, stat or None)]): every entry, or with `window_rows`, for a stable listing of more
        than `most_rows` entries, the `window_rows` entries of the window holding `offset`. Entries come with their
        attributes where they cost nothing (directories and links: their stat is known without I/O), so a
        readdirplus (see _Fuse) spares the kernel a lookup of each; files only with their kind, as working out a
        size may mean rendering the file. Unstable entries are watched, as when the kernel stats them."""
        stable, listing = self.tree.listing(path)
        total = len(listing) + 2
        start, stop = 0, total
        if window_rows and stable and total > most_rows:
            start = offset - offset % window_rows
            stop = min(start + window_rows, total)
        entries: List[Tuple[str, str, Optional[Stat]]] = [(".", DIR, None), ("..", DIR, None)][start:stop]
        for entry in listing[max(start - 2, 0) : stop - 2]:
            attrs = entry.stat
            if attrs is not None and not attrs.stable:
                self.invalidator.watch(entry.path)
            entries.append((entry.name, entry.kind, attrs))
        return stable, start, total, entries

    @_callback
    def readlink(self, path: str) -> str:
        if not self.tree.stat(path).stable:
            self.invalidator.watch(path)  # the kernel caches link targets (see init_with_config)
        return self.tree.readlink(path)

    @_callback
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & _WRITE_FLAGS:
            raise mfusepy.FuseOSError(errno.EROFS)
        node_stat = self.tree.stat(path)
        reader = self.tree.open(path)
        handle = next(self._next_handle)
        self._handles[handle] = reader
        fi.fh = handle
        fi.direct_io = node_stat.direct_io
        fi.keep_cache = node_stat.stable and not node_stat.direct_io
        return 0

    @_callback
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return self._handles[fi.fh].read(offset, size)

    @_callback
    def release(self, path: str, fi: Any) -> int:
        reader = self._handles.pop(fi.fh, None)
        if reader is not None:
            reader.close()
        return 0

    @_callback
    def statfs(self, path: str) -> Dict[str, int]:
        return {"f_bsize": _BLOCK_SIZE, "f_frsize": _BLOCK_SIZE, "f_namemax": 255}

    # -- writes: a read-only filesystem -----------------------------------------------------------------------

    @_read_only
    def chmod(self, path: str, mode: int) -> int: ...

    @_read_only
    def chown(self, path: str, uid: int, gid: int) -> int: ...

    @_read_only
    def create(self, path: str, mode: int, fi: Any = None) -> int: ...

    @_read_only
    def link(self, target: str, source: str) -> int: ...

    @_read_only
    def mkdir(self, path: str, mode: int) -> int: ...

    @_read_only
    def mknod(self, path: str, mode: int, dev: int) -> int: ...

    @_read_only
    def removexattr(self, path: str, name: str) -> int: ...

    @_read_only
    def rename(self, old: str, new: str) -> int: ...

    @_read_only
    def rmdir(self, path: str) -> int: ...

    @_read_only
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int: ...

    @_read_only
    def symlink(self, target: str, source: str) -> int: ...

    @_read_only
    def truncate(self, path: str, length: int, fh: Optional[int] = None) -> int: ...

    @_read_only
    def unlink(self, path: str) -> int: ...

    @_read_only
    def utimens(self, path: str, times: Optional[Tuple[int, int]] = None) -> int: ...

    @_read_only
    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int: ...


class ThreadStates:
    """Makes each libfuse thread keep its Python thread state between callbacks.

    ctypes runs a callback from a thread Python did not start between PyGILState_Ensure and PyGILState_Release,
    which create and destroy a thread state each time (in CPython 3.11 that includes mapping and unmapping its
    frame stack). One more Ensure on the thread's first callback, never released, keeps the count above zero, so
    later callbacks only take and drop the GIL (what that saves a walk: docs/benchmarks.md). The pool is fixed (see
    `mount`), so at most `threads` states are kept. `kept` counts them: a thread-local mark that did not survive
    would show up as a count growing with the callbacks.
    """

    def __init__(self) -> None:
        self.kept = 0
        self._mark = threading.local()  # lives as long as the thread state does
        self._lock = threading.Lock()

    def keep(self) -> None:
        if getattr(self._mark, "kept", False):
            return
        ctypes.pythonapi.PyGILState_Ensure()
        self._mark.kept = True
        with self._lock:
            self.kept += 1


THREAD_STATES = ThreadStates()


class _Fuse(mfusepy.FUSE):
    """mfusepy's FUSE with readdirplus, listings converted for libfuse once, attributes written straight into
    libfuse's `struct stat` (mfusepy goes through a dict of them), and thread states kept across callbacks (see
    `ThreadStates`).

    mfusepy hands libfuse only each entry's type, so after a readdir the kernel still looks up (a getattr
    callback) every entry it goes into: `find` over a run made a getattr per directory. A directory with entries
    that come with full attributes is filled with FUSE_FILL_DIR_PLUS and entry offsets: libfuse 3.14 registers
    such entries (as a lookup would) only when filling with offsets, and on a READDIR_PLUS request the kernel then
    caches their dentries and attributes for entry/attr_timeout. Any other directory is filled without offsets,
    as mfusepy does: libfuse keeps the whole listing and answers the kernel's follow-up reads itself, so that
    costs one callback per directory (the offset mode costs one more, for the empty read at the end).

    The kernel never caches a listing (libfuse 3.14's high-level opendir does not pass `cache_readdir` on), so
    every `find` or `ls` of a directory comes back here. A stable directory's listing, once converted to what the
    filler takes (encoded names, C stat structs), is kept in an LRU bounded by `MemoryBudget.prepared_listings`
    (`PREPARED_ROW_BYTES` a row): a repeated readdir only calls the filler (a warm `find` of a 1000-task run: half
    the Python time). A stable listing larger than the whole share (a step of 100,000 tasks: 46 MB of rows) is
    prepared `WINDOW_ROWS` rows at a time, each window its own item of the LRU until a reader goes past it: the
    kernel reads a directory in order, a few dozen entries a request.
    """

    #: estimated bytes of one prepared row (its tuple, name bytes, offset and, for a directory, its C stat)
    PREPARED_ROW_BYTES = 450
    #: rows of a window of a listing too large for the share
    WINDOW_ROWS = 2048
    #: estimated bytes of libfuse's nodes for a task directory the kernel keeps an entry of, and for the entries a
    #: walk meets in it (a node of about 200 bytes each: the task's, its artifact directories', the files looked up)
    KERNEL_TASK_BYTES = 1_000

    def __init__(self, operations: "MffsOperations", *args: Any, **kwargs: Any):
        self.keep_state(operations)
        super().__init__(operations, *args, **kwargs)

    def keep_state(self, operations: "MffsOperations") -> None:
        """What the callbacks keep, set before mounting (scripts/bench_task_listing.py calls it without a mount)."""
        settings = operations.tree.settings
        limit = settings.budget.prepared_listings
        self._prepared: LRUCache = LRUCache(
            maxsize=limit, getsizeof=lambda prepared: min(self.PREPARED_ROW_BYTES * (len(prepared.rows) + 1), limit)
        )
        self._prepared_lock = threading.Lock()
        # the number of "/" in the path of a task directory: /FLOW/RUN/STEP/TASK, less the mounted pathspec's parts
        self._task_slashes = 4 - (len(settings.pathspec.strip("/").split("/")) if settings.pathspec else 0)
        self._kernel_tasks: "collections.OrderedDict[bytes, None]" = collections.OrderedDict()
        self._kernel_tasks_kept = max(settings.budget.kernel_tasks // self.KERNEL_TASK_BYTES, 1)
        self._kernel_tasks_lock = threading.Lock()

    def _entered(self, path: bytes) -> None:
        """The kernel looked up or listed `path`. The kernel keeps an entry for everything it looked up or got
        with a readdirplus, until memory pressure, and libfuse a node for each: a walk of 100,000 tasks would
        leave half a million. Past `MemoryBudget.kernel_tasks`, the kernel is told to forget the task directory
        entered least recently, with what it holds."""
        if path.count(b"/") != self._task_slashes:
            return
        with self._kernel_tasks_lock:
            tasks = self._kernel_tasks
            if path in tasks:
                tasks.move_to_end(path)
                return
            tasks[path] = None
            oldest = tasks.popitem(last=False)[0] if len(tasks) > self._kernel_tasks_kept else None
        invalidator = self.operations.invalidator
        invalidator.keep(path.decode(self.encoding, self.errors))  # a second walk comes back to a forgotten task
        if oldest is not None:
            invalidator.forget(oldest.decode(self.encoding, self.errors))

    def _wrapper(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        THREAD_STATES.keep()
        return super()._wrapper(func, *args, **kwargs)

    def getattr_fuse_3(self, path: Optional[bytes], buf: Any, fip: Any) -> int:
        if path is not None:
            self._entered(path)
        node_stat = self.operations.getattr(None if path is None else path.decode(self.encoding, self.errors))
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        self.operations.fill_stat(buf.contents, node_stat)
        return 0

    def readdir_fuse_3(self, path: Optional[bytes], buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        """Fill from the prepared rows. A directory that can still change (a flow's runs) is listed afresh by each
        read from its start (offset 0); the reads of its later parts take that read's rows, so that offsets into it
        stay consistent. A windowed listing goes on into its next window while the buffer has room."""
        if offset == 0:
            self._entered(path)
        with self._prepared_lock:
            prepared = self._prepared.get(path) or self._prepared.get((path, offset // self.WINDOW_ROWS))
        if prepared is None or (offset == 0 and not prepared.stable):
            prepared = self._prepare(path, fip.contents.fh, offset)
        else:
            self.operations.count("readdir")
        fill, buf = _RawFiller.from_buffer(filler), ctypes.c_void_p(buf)
        while True:
            for row in prepared.rows[offset - prepared.start :] if prepared.with_offsets else prepared.rows:
                if fill(buf, *row):
                    return 0
            offset = prepared.start + len(prepared.rows)
            if not prepared.with_offsets or offset >= prepared.total:
                return 0
            with self._prepared_lock:
                # the reader went past this window: a reader after it prepares it again (2,048 rows), rather than the
                # windows of a whole step staying in the share while nothing else is listed (a `cat` of its tasks)
                self._prepared.pop((path, prepared.start // self.WINDOW_ROWS), None)
                prepared = self._prepared.get((path, offset // self.WINDOW_ROWS))
            if prepared is None:
                prepared = self._prepare(path, fip.contents.fh, offset)

    def _prepare(self, path_bytes: bytes, fh: int, offset: int) -> "_Prepared":
        """The rows of a readdir of a path from `offset`: the whole listing's, or the window's holding `offset` for
        a stable listing too large for the share. The same rows answer READDIR_PLUS and plain READDIR requests
        (libfuse's plain filler takes entries with offsets and ignores FUSE_FILL_DIR_PLUS)."""
        path = path_bytes.decode(self.encoding, self.errors)
        stable, start, total, items = self.operations.readdir(
            path, fh, offset, self.WINDOW_ROWS, self._prepared.maxsize // self.PREPARED_ROW_BYTES
        )
        key = path_bytes if len(items) == total else (path_bytes, start // self.WINDOW_ROWS)
        with_offsets = any(stat is not None for _, _, stat in items)
        # one C array holds the listing's stat structs (a struct object and a pointer object per entry took twice
        # the memory: docs/benchmarks.md); each row points into it, and keeps it alive
        stats = (mfusepy.c_stat * sum(stat is not None for _, _, stat in items))() if with_offsets else None
        filled = 0
        rows = []
        for position, (name, kind, stat) in enumerate(items, start + 1):
            name_bytes = name.encode(self.encoding, self.errors)
            entry_offset = ctypes.c_int64(position) if with_offsets else _NO_OFFSET
            if with_offsets and stat is not None:
                self.operations.fill_stat(stats[filled], stat)
                rows.append((name_bytes, ctypes.byref(stats, filled * _STAT_SIZE), entry_offset, _FUSE_FILL_DIR_PLUS))
                filled += 1
            else:
                rows.append((name_bytes, _TYPE_ONLY_STATS[kind], entry_offset, 0))
        prepared = _Prepared(with_offsets, rows, stable, start, total)
        if stable or with_offsets:  # an unstable listing filled without offsets is libfuse's to keep
            with self._prepared_lock:
                self._prepared[key] = prepared
        return prepared


class _Prepared(NamedTuple):
    """Filler arguments after the buffer (name, stat pointer, offset, fill flags) for the entries of a listing
    from `start`, of `total`; whether they carry offsets, and whether the directory is stable."""

    with_offsets: bool
    rows: List[Tuple[bytes, Any, Any, int]]
    stable: bool
    start: int
    total: int


def _type_only_stat(mode: int) -> Any:
    st = mfusepy.c_stat()
    st.st_mode = mode
    return ctypes.pointer(st)


#: libfuse's `fuse_fill_dir_t` without ctypes' per-call argument conversion, which costs more than the call itself
#: (docs/benchmarks.md): the prepared rows hold each argument in a form ctypes passes as is (bytes as char *, a
#: stat pointer, a c_int64 offset, an int for the flags; the buffer is wrapped once per callback).
_RawFiller = ctypes.CFUNCTYPE(ctypes.c_int)
_NO_OFFSET = ctypes.c_int64(0)
_STAT_SIZE = ctypes.sizeof(mfusepy.c_stat)

#: libfuse copies the stat it is given: one per file type serves every entry listed without attributes (tens of
#: thousands)
_TYPE_ONLY_STATS = {kind: _type_only_stat(mode) for kind, mode in _MODES.items()}


def mount(
    tree: Tree,
    mountpoint: str,
    *,
    attr_ttl: float = 3600.0,
    threads: int,
    debug: bool = False,
    allow_other: bool = False,
) -> None:
    """Serve `tree` at `mountpoint` with a pool of `threads` FUSE threads, in the foreground until unmounted
    (fusermount -u, SIGINT, SIGTERM)."""
    # numpy, imported to render an array, would start OpenBLAS worker threads that spin after each wake-up; the
    # daemon does no linear algebra, and on a small machine they take a core from the FUSE threads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    collect_garbage_for_caches()
    operations = MffsOperations(tree)
    operations.invalidator.mountpoint = os.path.abspath(mountpoint)
    options: Dict[str, Any] = {
        "fsname": "mffs",
        "subtype": "mffs",
        "ro": True,
        "entry_timeout": attr_ttl,
        "attr_timeout": attr_ttl,
        "negative_timeout": tree.settings.refresh,
        # A fixed pool: libfuse's default creates and ends threads as load varies, and every hand-off of the GIL
        # to a new thread costs more than the callbacks themselves (docs/benchmarks.md).
        "max_threads": threads,
        "max_idle_threads": threads,
    }
    if allow_other:
        options["allow_other"] = True
    try:
        _Fuse(operations, mountpoint, raw_fi=True, foreground=True, debug=debug, **options)
    except RuntimeError as exc:
        # libfuse3's fuse_main returns 8 when its loop ends on a signal (SIGINT/SIGTERM): a clean unmount.
        if exc.args != (8,):
            raise
    finally:
        tree.close()
