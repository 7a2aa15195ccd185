"""`mffs://` for fsspec: the mount's tree without FUSE, for pandas, pyarrow, DuckDB, Dask and `fsspec.open`.

    pandas.read_parquet("mffs://TrainFlow/latest/start/1/metrics/value.parquet",
                        storage_options={"datastore_root": "/work", "all_namespaces": True})

Paths are the mount's paths; the options are the CLI's (`datastore_root`, `metadata`, `namespace`,
`all_namespaces`, `trust_pickles`). It serves the same `mffs.tree.Tree` as the mount, so sizes, names, errors and
the unpickling policy are the mount's: `ls`/`info` (a directory's listing gives each file's exact size where the
mount has one; a deferred file, e.g. the repr.txt of an artifact over the render threshold, shows 0 until
opened, as on the mount), `cat_file` with byte ranges, `open` for reading (ranged reads of the tree's readers: a
large `data.pickle` streams). The filesystem is read-only: every write is refused with EROFS.

Links (`latest`, `latest_successful`, tag entries) are listed as type "link" with their target in `destination`:
`find`/`walk` do not descend into them, as `os.walk` does not on a mount, while `ls`, `find` or `open` of a path
through a link (`mffs://HelloFlow/latest/...`) resolve it.

The client keeps one namespace, metadata provider and pickle trust per process (as Metaflow's does). Each
filesystem keeps its own (`client.core.current_context`) and puts it in effect for each call, under one lock, then
puts the process's back: filesystems of several datastores live in one process beside the process's own use of
the client API, and their calls take turns.

Registered through the `fsspec.specs` entry point (pyproject.toml); fsspec is imported only by this module.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import posixpath
import threading
from typing import Any, Dict, Iterator, List, Optional, Union

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from client import core as client

from . import source
from .tree import DIR, FILE, LINK, Reader, Tree, TreeSettings

_TYPES = {DIR: "directory", FILE: "file", LINK: "link"}
_lock = threading.RLock()  # the client's namespace and provider are the process's: one filesystem's call at a time


def _read_only(path: str) -> OSError:
    return OSError(errno.EROFS, "mffs is read-only", path)


class MffsFileSystem(AbstractFileSystem):
    """Metaflow runs as an fsspec filesystem (see the module docstring)."""

    protocol = "mffs"
    root_marker = ""

    def __init__(
        self,
        datastore_root: Optional[str] = None,
        metadata: Optional[str] = None,
        namespace: Optional[str] = None,
        all_namespaces: bool = False,
        trust_pickles: bool = False,
        **storage_options: Any,
    ):
        super().__init__(**storage_options)
        with _lock:
            outside = client.current_context()
            try:
                namespace_kwargs = source.select(datastore_root, metadata, namespace, all_namespaces)
                self.tree = Tree(settings=TreeSettings(trust_pickles=trust_pickles, **namespace_kwargs))
                self._context = client.current_context()
            finally:
                client.restore_context(outside)

    @contextlib.contextmanager
    def _active(self) -> Iterator[Tree]:
        """This filesystem's tree, with its namespace, provider and pickle trust in effect; the process's own
        client settings are put back after."""
        with _lock:
            outside = client.current_context()
            client.restore_context(self._context)
            try:
                yield self.tree
            finally:
                client.restore_context(outside)

    @classmethod
    def _strip_protocol(cls, path: Union[str, List[str]]) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        if path.startswith("mffs://"):
            path = path[len("mffs://"):]
        return posixpath.normpath("/" + path).strip("/")

    @staticmethod
    def _tree_path(path: str) -> str:
        return "/" + path

    def _details(self, path: str, kind: str, size: int, mtime: float, target: Optional[str] = None) -> dict:
        details = {"name": path, "size": size, "type": _TYPES[kind], "mtime": mtime}
        if target is not None:
            details["destination"] = target
        return details

    def info(self, path: str, **kwargs: Any) -> dict:
        path = self._strip_protocol(path)
        with self._active() as tree:
            node = tree.lookup(self._tree_path(path))
            stat = node.stat()
        return self._details(path, stat.kind, stat.size, stat.mtime, getattr(node, "target", None))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> List[Union[str, dict]]:
        path = self._strip_protocol(path)
        tree_path = self._tree_path(path)
        with self._active() as tree:
            if tree.lookup(tree_path).stat().kind == FILE:
                return [self.info(path) if detail else path]
            entries = tree.list(tree_path)  # of a link: of its target, as ls(1) lists a link to a directory
            names = [posixpath.join(path, entry.name) if path else entry.name for entry in entries]
            if not detail:
                return names
            return [
                self._details(name, entry.kind, entry.stat.size, entry.stat.mtime)
                if entry.stat is not None and entry.kind != LINK
                else self.info(name)  # a file's size may mean rendering it, as the mount's stat does; a link's target
                for name, entry in zip(names, entries)
            ]

    def modified(self, path: str) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.timezone.utc)

    created = modified

    def cat_file(self, path: str, start: Optional[int] = None, end: Optional[int] = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        if start is None and end is None:
            with self._active() as tree:
                return tree.read_file(self._tree_path(path))
        with self.open(path, "rb") as handle:
            size = handle.size
            start = 0 if start is None else (start if start >= 0 else max(size + start, 0))
            end = size if end is None else (end if end >= 0 else max(size + end, 0))
            handle.seek(start)
            return handle.read(max(end - start, 0))

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Optional[Dict[str, Any]] = None, **kwargs: Any) -> "MffsFile":
        if mode != "rb":
            raise _read_only(path)
        return MffsFile(self, self._strip_protocol(path), block_size=block_size, cache_options=cache_options)

    # -- writes: refused ------------------------------------------------------------------------------------------
    def _refuse(self, path: Any, *args: Any, **kwargs: Any) -> None:
        raise _read_only(str(path))

    mkdir = makedirs = rmdir = rm_file = rm = touch = pipe_file = put_file = cp_file = mv = _refuse
    _rm = _refuse


class MffsFile(AbstractBufferedFile):
    """A file of the tree opened for reading: ranged reads go to the tree's reader, which streams large blobs."""

    def __init__(self, fs: MffsFileSystem, path: str, block_size: Any = None,
                 cache_options: Optional[Dict[str, Any]] = None):
        tree_path = fs._tree_path(path)
        with fs._active() as tree:
            self._reader: Reader = tree.open(tree_path)
            size = tree.stat(tree_path).size  # exact once opened, also for files whose size was deferred
        super().__init__(fs, path, mode="rb", block_size=block_size or "default", cache_type="readahead",
                         cache_options=cache_options, size=size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self._reader.read(start, end - start)

    def close(self) -> None:
        if not self.closed:
            self._reader.close()
        super().close()
