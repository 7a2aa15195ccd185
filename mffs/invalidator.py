"""Invalidator: what the mount tells the kernel to drop from its caches, through libfuse3's calls that the FUSE
binding does not wrap: the attributes and pages of unstable paths (every `refresh`), and the entries of the paths a
walk is done with (mffs/fuse_ops.py).
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any, Callable, Dict, List, Optional, Set

log = logging.getLogger("mffs")


class Invalidator:
    """Drops the kernel's cached attributes/pages of unstable paths every `interval` seconds, and the kernel's
    entries of the paths a walk is done with (`forget`), libfuse3 only."""

    def __init__(self, interval: float):
        self.interval = interval
        #: the mount's directory, absolute (set by `mount`): `forget` finds a parent's inode number through it
        self.mountpoint = ""
        self._paths: Set[str] = set()
        self._forgotten: Dict[str, None] = {}  # in the order they were forgotten
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fuse: Optional[int] = None
        self._invalidate: Optional[Callable[[Any, bytes], int]] = None
        self._session: Optional[int] = None
        self._invalidate_entry: Optional[Callable[[Any, int, bytes, int], int]] = None
        self._thread: Optional[threading.Thread] = None

    def start(self, libfuse: ctypes.CDLL) -> None:
        """Called from the FUSE init callback, where the fuse handle is available, with the libfuse the binding
        loaded (fuse_invalidate_path and the notifications have no Python wrapper)."""
        invalidate = getattr(libfuse, "fuse_invalidate_path", None)
        if invalidate is None:
            log.warning("this libfuse has no fuse_invalidate_path: running runs refresh only when attr_ttl expires")
            return
        invalidate.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        invalidate.restype = ctypes.c_int
        self._invalidate = invalidate
        self._fuse = libfuse.fuse_get_context().contents.fuse
        if self.mountpoint:
            libfuse.fuse_get_session.argtypes = [ctypes.c_void_p]
            libfuse.fuse_get_session.restype = ctypes.c_void_p
            self._session = libfuse.fuse_get_session(self._fuse)
            invalidate_entry = libfuse.fuse_lowlevel_notify_inval_entry
            invalidate_entry.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_size_t]
            invalidate_entry.restype = ctypes.c_int
            self._invalidate_entry = invalidate_entry
        self._thread = threading.Thread(target=self._run, name="mffs-invalidator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def watch(self, path: str) -> None:
        with self._lock:
            self._paths.add(path)

    def forget(self, path: str) -> None:
        """Have the kernel drop its entry of `path` and, once unused, everything it holds below it: libfuse then
        frees its nodes of them (a node per entry the kernel knows, kept until the kernel forgets it, which it
        otherwise does only under memory pressure). At the next tick, from this object's thread: the kernel
        takes the parent directory's lock, which a request being served may hold."""
        with self._lock:
            self._forgotten[path] = None

    def keep(self, path: str) -> None:
        """`path` was entered again before its `forget` took effect: the kernel keeps it after all."""
        with self._lock:
            self._forgotten.pop(path, None)

    def invalidate_now(self, path: str) -> None:
        """Drop the kernel's attributes of `path` before returning (its size was just learned while opening it,
        and the opener's fstat must see it: pyarrow and DuckDB size parquet files that way). Called inside the
        open callback: an inode invalidation only marks attributes stale and drops pages, it waits for no request.
        """
        if self._invalidate is None:
            self.watch(path)  # before init, or a libfuse without fuse_invalidate_path
            return
        self._invalidate(self._fuse, path.encode("utf-8", "surrogateescape"))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                paths, self._paths = self._paths, set()
                forgotten, self._forgotten = list(self._forgotten), {}
            for path in paths:
                # -ENOENT only means the kernel already forgot the path
                self._invalidate(self._fuse, path.encode("utf-8", "surrogateescape"))
            if forgotten and self._invalidate_entry is not None:
                self._drop_entries(forgotten)

    def _drop_entries(self, paths: List[str]) -> None:
        # libfuse's node id of a directory is the inode number the kernel reports for it (without `use_ino`);
        # asked once per directory and tick, as the kernel may have forgotten the directory meanwhile
        node_ids: Dict[str, Optional[int]] = {}
        for path in paths:
            parent, name = path.rsplit("/", 1)
            if parent not in node_ids:
                try:
                    node_ids[parent] = os.stat(self.mountpoint + parent).st_ino
                except OSError:
                    node_ids[parent] = None
            node_id = node_ids[parent]
            if node_id is not None:
                name_bytes = name.encode("utf-8", "surrogateescape")
                # -ENOENT only means the kernel already forgot the entry
                self._invalidate_entry(self._session, node_id, name_bytes, len(name_bytes))
