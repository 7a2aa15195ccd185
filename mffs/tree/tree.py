"""The Tree: resolves paths to nodes, caches them, and holds what rendering needs (the sandbox, the code packages).

Stability. Every node says whether it is *stable*: its attributes, bytes and child names can no longer change.
Everything under a finished run (`Run.finished`) is stable, and so is everything under a finished task
(`Task.finished`) of a running run, and a code package. Flow-level nodes (flows, runs, tags, `latest*`) and the
rest of an unfinished run are not. Stable nodes live in an LRU cache bounded by the estimated bytes they keep alive
(`Node.footprint`, plus their listings) to the share of `memory_mb` the budget gives it (`MemoryBudget`); unstable
ones in a TTL cache that expires after `refresh` seconds, so a running run is re-read from the backend at most once per
`refresh` per node and new tasks and growing logs show up within about one `refresh`. The FUSE adapter uses the
same flag to decide what the kernel may cache (see mffs/fuse_ops.py).

A Tree also sets the client's unpickling policy for its process (`client.trust_pickles`), so the internal
artifacts behind `finished`, `successful`, `exception`, `index` and parent/child tasks load as repr.txt does (see
mffs/tree/tasks.py), in the daemon, in `mffs ls/cat` and in the readahead worker (True, False and None are known
from their sha and never unpickled).

Untrusted values are rendered in isolation (`Tree.render_artifact`): a small scalar, provably cheap, in this
process; any other value in a sandbox worker process under memory, CPU and wall-time limits (mffs/sandbox.py,
`render_memory_mb`, `render_cpu_seconds`, `render_wall_seconds`), so a bomb costs its own files (EIO), never the
daemon's memory or its other readers. With `trust_pickles` the user opted in: values are rendered here.
"""
from __future__ import annotations

import dataclasses
import errno
import gc
import json
import posixpath
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Tuple

from cachetools import LRUCache

from client.core import NOT_A_SCALAR
from client.recent import Recent

from .. import sandbox as sandbox_module
from ..sandbox import Sandbox
from .nodes import (
    FILE,
    LISTING_ENTRY_BYTES,
    Dir,
    Entry,
    File,
    Node,
    Reader,
    RenderedFile,
    Stat,
    SubdirEntries,
    Symlink,
    client_errors,
    join,
    normalize,
)
from .runs import FlowDir, RootDir, RunDir, StepDir, run_finished
from .settings import KEEP_NAMESPACE, TreeSettings
from .tasks import TaskDir

if TYPE_CHECKING:
    import tarfile

CONTROL_DIR = ".mffs"
#: code packages (whole archives, typically a few MB) kept in memory for reading code/ files
CODE_PACKAGES_KEPT = 4
#: estimated bytes a rendered content keeps beside its bytes: its path and the LRU's bookkeeping (tracemalloc:
#: 314 bytes an item for 100,000 repr.txt of a few bytes, where weighing the bytes alone counted 7)
CONTENT_ITEM_BYTES = 300
#: unstable nodes kept (each for `refresh` seconds at most)
LIVE_NODES = 10_000
#: the largest pickle whose value, when a scalar, is loaded and rendered in the daemon rather than the sandbox
IN_PROCESS_SCALAR_BYTES = 4096


class ControlDir(Dir):
    """/.mffs: files registered by the front end (never listed in the root, reachable by name)."""

    def children(self) -> List[Node]:
        return [self.child(name) for name in sorted(self.tree.control_files)]

    def child(self, name: str) -> Node:
        render_control = self.tree.control_files.get(name)
        if render_control is None:
            raise self._missing(name)
        return RenderedFile(self.tree, join(self.path, name), time.time(), False, render_control, volatile=True)


class ListingSource(Protocol):
    """Something attached to a Tree (`Tree.attach`) that may have listings ready before the tree builds them: the
    daemon's side of the readahead worker (mffs/readahead.py). The tree tells it what a walk does, so it can read
    ahead."""

    def listing(self, path: str) -> Optional[List[Entry]]:
        """The listing of the stable directory `path` if the source has it (handed out once), else None."""

    def after(self, task_path: str) -> None:
        """The task directory `task_path` was just listed."""

    def note_lookup_in_task(self) -> None:
        """A name inside a task directory was looked up."""

    def close(self) -> None:
        """Release what the source holds (processes, threads)."""

    def usage(self) -> Dict[str, Any]:
        """What the source's process uses: pid, cpu_seconds, max_rss_kb."""


def _node_bytes(node: Node) -> int:
    listing = node.listing if isinstance(node, Dir) else None
    if listing is None:
        return node.footprint
    entries = listing.footprint() if isinstance(listing, SubdirEntries) else LISTING_ENTRY_BYTES * len(listing)
    return node.footprint + node.listed_footprint + entries


def collect_garbage_for_caches() -> None:
    """Garbage collection for a process whose Tree caches fill with tens of thousands of long-lived nodes and
    records while a walk runs: CPython's default thresholds (a collection every 700 allocations) scan them over and
    over (see docs/benchmarks.md). freeze() takes what start-up made out of the collector's view. Called once a
    process has started up (the daemon, the readahead worker)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Tree:
    """Resolves paths to nodes and caches them (see the module docstring for what is cached and for how long)."""

    def __init__(self, client_module: Any = None, settings: Optional[TreeSettings] = None, **changes: Any):
        """A tree over `client_module` (default: the project's `client`) with `settings`; `changes` replace fields
        of `settings` (`Tree(client, namespace=None)`, for tests and scripts)."""
        if client_module is None:
            import client as client_module  # the project's Metaflow-compatible client
        settings = dataclasses.replace(settings or TreeSettings(), **changes)
        self.settings = settings
        self.client = client_module
        if settings.metadata is not None:
            self.client.metadata(settings.metadata)
        if settings.namespace is not KEEP_NAMESPACE:
            self.client.namespace(settings.namespace)
        # the client's policy for this process too: the internal artifacts behind finished, exception, parents, ...
        self.client.trust_pickles(settings.trust_pickles)
        self._sandbox: Optional[Sandbox] = None
        self.control_files: Dict[str, Callable[[], bytes]] = {}
        #: called with a path whose reported size changed from 0 to its exact size (deferred repr.txt)
        self.on_size_learned: Callable[[str], None] = lambda path: None
        self._lock = threading.Lock()
        budget = settings.budget
        node_bytes = budget.worker_nodes if settings.readahead_worker else budget.nodes
        # a node larger than the whole share (the listing of a huge step) still stays, alone
        self._stable: LRUCache = LRUCache(maxsize=node_bytes, getsizeof=lambda node: min(_node_bytes(node), node_bytes))
        self._live = Recent(settings.refresh, LIVE_NODES)
        self._content: LRUCache = LRUCache(
            maxsize=0 if settings.readahead_worker else budget.content,
            getsizeof=lambda data: len(data) + CONTENT_ITEM_BYTES,
        )
        self._code_packages: LRUCache = LRUCache(maxsize=CODE_PACKAGES_KEPT)
        self._code_lock = threading.Lock()
        self._started = time.time()
        #: answers listings before they are built here, and hears which tasks a walk lists (`attach`)
        self.listing_source: Optional[ListingSource] = None
        self.lookup("/")  # fail now on an unknown pathspec

    def attach(self, source: ListingSource) -> None:
        """Take listings from `source` (mffs/readahead.py's Readahead) from now on; `close` closes it."""
        self.listing_source = source

    def close(self) -> None:
        """End the listing source (the readahead worker) and the sandbox's workers, if any."""
        if self.listing_source is not None:
            self.listing_source.close()
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()

    def sandbox_usage(self) -> Dict[str, Any]:
        """The sandbox's workers (pids), renders, refusals and restarts (zeros before its first render)."""
        with self._lock:
            sandbox = self._sandbox
        return (sandbox or Sandbox(self.settings.render_limits)).usage()

    def _root(self) -> Node:
        pathspec = self.settings.pathspec
        if not pathspec:
            return RootDir(self, "/", self._started, stable=False)
        parts = pathspec.strip("/").split("/")
        classes = {1: "Flow", 2: "Run", 3: "Step", 4: "Task"}
        if len(parts) not in classes:
            raise FileNotFoundError(errno.ENOENT, "Not a flow, run, step or task pathspec", pathspec)
        with client_errors(pathspec):
            obj = getattr(self.client, classes[len(parts)])("/".join(parts))
            run = self.client.Run("/".join(parts[:2])) if len(parts) > 2 else None
        run_stable = run_finished(run, pathspec) if run is not None else False
        if len(parts) == 1:
            return FlowDir(self, "/", obj)
        if len(parts) == 2:
            return RunDir(self, "/", obj)
        if len(parts) == 3:
            return StepDir(self, "/", obj, run_stable)
        return TaskDir(self, "/", obj, run_stable)

    def renders_at_stat(self, artifact: Any) -> bool:
        """Whether the repr.txt and exports of `artifact` are rendered when first stat'ed (exact sizes): when its
        pickle is known to be at most `render_threshold` bytes."""
        size = artifact.blob_size
        return size is not None and size <= self.settings.render_threshold

    def render_artifact(self, artifact: Any, file_name: str) -> bytes:
        """The bytes of an artifact's repr.txt or export `file_name`. With `trust_pickles`, loaded and rendered
        here, as the user asked. Otherwise the value is untrusted: a small scalar (provably cheap to load and
        render: `DataArtifact.load_scalar`) is rendered here, anything else in the sandbox (mffs/sandbox.py)."""
        if self.settings.trust_pickles:
            value = artifact.load(trusted=True)
        else:
            value = artifact.load_scalar(IN_PROCESS_SCALAR_BYTES)
            if value is NOT_A_SCALAR:
                return self.sandbox().render(artifact.stored_at(), artifact.id, file_name, self.settings.repr_limit)
        return sandbox_module.render_value(value, file_name, self.settings.repr_limit)

    def record_value(self, artifact: Any) -> Any:
        """An artifact's value for a JSON record (parameters.json), isolated as `render_artifact` isolates it: an
        untrusted value that is not a small scalar comes back from the sandbox as the JSON data `json_bytes`
        would write for it (its text parsed), so the record's text is the same."""
        if self.settings.trust_pickles:
            return artifact.load(trusted=True)
        value = artifact.load_scalar(IN_PROCESS_SCALAR_BYTES)
        if value is NOT_A_SCALAR:
            text = self.sandbox().render(artifact.stored_at(), artifact.id, sandbox_module.RECORD_JSON, 0)
            value = json.loads(text)
        return value

    def sandbox(self) -> Sandbox:
        """The pool of processes rendering untrusted values (its workers start with its first render)."""
        with self._lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(self.settings.render_limits)
            return self._sandbox

    def code_package(self, run: Any) -> Any:
        """`run.code` (a MetaflowCode, or None), kept for the last few runs that have one: a package holds its whole
        archive in memory, so directory nodes keep only its index (CodeArchive) and file reads come back here."""
        with self._code_lock:
            code = self._code_packages.get(run.pathspec)
        if code is None:
            code = run.code
            if code is not None:
                with self._code_lock:
                    self._code_packages[run.pathspec] = code
        return code

    def read_code_member(self, run: Any, member: "tarfile.TarInfo") -> bytes:
        code = self.code_package(run)
        if code is None:
            raise FileNotFoundError(errno.ENOENT, "the run's code package is gone", run.pathspec)
        with self._code_lock:  # a TarFile reads through one shared file object
            return code.tarball.extractfile(member).read()

    # -- caches -----------------------------------------------------------------------------------------------

    def cached(self, path: str) -> Optional[Node]:
        """The node at `path` (a normal path) if it is cached, without building it."""
        with self._lock:
            node = self._stable.get(path)
            return node if node is not None else self._live.fresh(path)

    def _remember(self, node: Node) -> None:
        with self._lock:
            if node.stable:
                self._stable[node.path] = node
            else:
                self._live.put(node.path, node)

    def forget(self, path: str) -> None:
        with self._lock:
            self._stable.pop(path, None)
            self._live.pop(path)

    def cached_content(self, path: str) -> Optional[bytes]:
        with self._lock:
            return self._content.get(path)

    def keep_content(self, path: str, data: bytes) -> None:
        with self._lock:
            if len(data) + CONTENT_ITEM_BYTES <= self._content.maxsize:
                self._content[path] = data

    def cache_info(self) -> dict:
        with self._lock:
            return {
                "stable_nodes": len(self._stable),
                "stable_node_bytes": int(self._stable.currsize),
                "live_nodes": len(self._live),
                "content_bytes": int(self._content.currsize),
            }

    # -- the public API ---------------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        node = self.cached(path)  # the kernel's paths are normal already: most lookups end here
        if node is not None:
            return node
        normal = normalize(path)
        if normal != path:  # a path typed to `mffs ls/cat` may name a cached node another way
            path = normal
            node = self.cached(path)
            if node is not None:
                return node
        if path == "/":
            node = self._root()
        elif path == "/" + CONTROL_DIR:
            node = ControlDir(self, path, self._started, stable=True)
        else:
            parent_path, name = path.rsplit("/", 1)
            parent = self.lookup(parent_path or "/")
            if isinstance(parent, Symlink):  # only `mffs ls/cat` paths: the kernel resolves links itself
                target = posixpath.join(posixpath.dirname(parent_path), parent.target)
                return self.lookup(join(normalize(target), name))
            if not isinstance(parent, Dir):
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
            node = parent.child(name)
            if self.listing_source is not None and isinstance(parent, TaskDir):
                self.listing_source.note_lookup_in_task()
        self._remember(node)
        return node

    def stat(self, path: str) -> Stat:
        return self.lookup(path).stat()

    def list(self, path: str) -> Sequence[Entry]:
        """The directory's listing, in the client's order (see `listing`)."""
        return self.listing(path)[1]

    def listing(self, path: str) -> Tuple[bool, Sequence[Entry]]:
        """(whether the directory is stable, its listing in the client's order). A listing is kept with the
        directory's node (so for as long as that is cached); the child nodes built for it go to the node caches for
        the lookups that follow. A listing the listing source has (the readahead worker built it) is taken as it is,
        without a node."""
        source = self.listing_source
        if source is not None:
            listing = source.listing(path)
            if listing is not None:
                return True, listing  # the source answers only for stable directories
        node = self.lookup(path)
        if isinstance(node, Symlink):  # `mffs ls DemoFlow/latest`, like ls(1) given a link to a directory
            node = self.lookup(posixpath.join(posixpath.dirname(node.path), node.target))
        if not isinstance(node, Dir):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        listing = self._listing(node)
        if source is not None and type(node) is TaskDir:  # not an AttemptDir
            source.after(node.path)
        return node.stable, listing

    def _listing(self, node: Dir) -> Sequence[Entry]:
        """`node`'s listing, built once (concurrent callers wait for the first)."""
        listing = node.listing
        if listing is None:
            with node.listing_lock:
                listing = node.listing
                if listing is None:
                    listing = node.entries()
                    items = listing.head if isinstance(listing, SubdirEntries) else listing
                    for position, item in enumerate(items):
                        if isinstance(item, Node):
                            self._remember(item)
                            # entries keep a stat, not the node: listings must not hold evicted nodes alive
                            items[position] = Entry(
                                item.name, item.path, item.kind, item.stat() if item.kind != FILE else None
                            )
                    node.listing = listing
                    if node.stable:
                        self._remember(node)  # again, now counting its listing
        return listing

    def readlink(self, path: str) -> str:
        node = self.lookup(path)
        if not isinstance(node, Symlink):
            raise OSError(errno.EINVAL, "Not a symbolic link", path)
        return node.target

    def open(self, path: str) -> Reader:
        node = self.lookup(path)
        if isinstance(node, Dir):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not isinstance(node, File):
            raise OSError(errno.EINVAL, "Not a regular file", path)
        return node.open()

    def iter_file(self, path: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The file's bytes in order, in `chunk_size` reads (for `mffs cat`; never the whole file at once)."""
        reader = self.open(path)
        try:
            offset = 0
            while True:
                chunk = reader.read(offset, chunk_size)
                if not chunk:
                    return
                offset += len(chunk)
                yield chunk
        finally:
            reader.close()

    def read_file(self, path: str) -> bytes:
        return b"".join(self.iter_file(path))
