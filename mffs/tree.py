"""The mount's path tree: path -> node, plain Python (no FUSE import), over the `client` object model.

Layout (see README): <Flow>/{latest,latest_successful,tags/<tag>/<run>,<run>/{run.json,parameters.json,
<step>/{step.json,<task>/{task.json,metadata.json,stdout.log,stderr.log,exception.txt,<artifact>/{repr.txt,
data.pickle,meta.json}}}}}. Names starting with `_` (the `_parameters` step, internal artifacts) are not listed but
resolve by name. A hidden `/.mffs/` directory holds control files registered by the front end (e.g. `stats`).

Stability. Every node says whether it is *stable*: its attributes, bytes and child names can no longer change.
Everything under a finished run (`Run.finished`) is stable, and so is everything under a finished task
(`Task.finished`) of a running run. Flow-level nodes (flows, runs, tags, `latest*`) and the rest of an unfinished
run are not. Stable nodes live in an LRU cache of `cache_entries` nodes; unstable ones in a TTL cache that expires
after `refresh` seconds, so a running run is re-read from the backend at most once per `refresh` per node and new
tasks and growing logs show up within about one `refresh`. The FUSE adapter uses the same flag to decide what the
kernel may cache (see mffs/fuse_ops.py).

File sizes are exact at stat time. JSON files, logs, exception.txt and the repr.txt of artifacts whose pickle is at
most `render_threshold` bytes (`DataArtifact.blob_size`, known without loading the blob) are rendered when first
stat'ed; their bytes go to an LRU cache bounded to `content_cache_bytes`, their size stays with the node. The
repr.txt of a larger artifact is *deferred*: it reports size 0 until something reads it (always with direct I/O,
so reads are not cut at the size the kernel knows); that read renders it (`repr_limit` bounds the text), after
which its exact size is reported and `on_size_learned(path)` is called so the front end can drop the kernel's
stale size. So `stat`/`ls -l` never
unpickle anything bigger than `render_threshold`. data.pickle streams from `DataArtifact.open_blob()` and is never
held in memory whole.

Errors are OSErrors with the errno a filesystem would give: unknown names FileNotFoundError (ENOENT), a backend or
decode failure OSError(EIO) (logged). A file whose rendering fails at stat time is reported with size 0 and fails
with EIO when opened, so listing its directory still works.
"""
from __future__ import annotations

import errno
import logging
import posixpath
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

from cachetools import LRUCache, TTLCache

from . import render

log = logging.getLogger("mffs")

DIR, FILE, LINK = "dir", "file", "link"
CONTROL_DIR = ".mffs"
#: errors from the client that mean "no such object" (matched by class name, as Metaflow's client names them)
_NOT_FOUND_ERRORS = {"MetaflowNotFound", "MetaflowNamespaceMismatch", "MetaflowInvalidPathspec", "KeyError"}


@dataclass(frozen=True)
class Stat:
    kind: str
    size: int
    mtime: float  # epoch seconds
    stable: bool
    direct_io: bool = False  # read without the page cache: the size is unknown, or was unknown to the kernel


def _is_not_found(exc: BaseException) -> bool:
    return any(cls.__name__ in _NOT_FOUND_ERRORS for cls in type(exc).__mro__)


@contextmanager
def client_errors(path: str, object_lookup: bool = True) -> Iterator[None]:
    """Turn client exceptions into OSErrors: not found -> ENOENT, anything else -> EIO (logged).

    With object_lookup=False (rendering a file that exists), "not found" is a backend inconsistency: EIO too.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno:
            raise
        log.warning("backend failure for %s: %s: %s", path, type(exc).__name__, exc)
        raise OSError(errno.EIO, "%s: %s" % (type(exc).__name__, exc), path) from exc
    except Exception as exc:
        if object_lookup and _is_not_found(exc):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from exc
        log.warning("backend failure for %s: %s: %s", path, type(exc).__name__, exc, exc_info=log.isEnabledFor(10))
        raise OSError(errno.EIO, "%s: %s" % (type(exc).__name__, exc), path) from exc


def join(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name


def normalize(path: str) -> str:
    return posixpath.normpath("/" + path.strip("/")).replace("//", "/")


class Node:
    kind = ""

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool):
        self.tree = tree
        self.path = path
        self.mtime = mtime
        self.stable = stable

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def stat(self) -> Stat:
        return Stat(self.kind, 0, self.mtime, self.stable)


class Symlink(Node):
    kind = LINK

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, target: str):
        super().__init__(tree, path, mtime, stable)
        self.target = target

    def stat(self) -> Stat:
        return Stat(LINK, len(self.target.encode("utf-8")), self.mtime, self.stable)


class Reader:
    """An open file: random-access reads, then close()."""

    def read(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class BytesReader(Reader):
    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data[offset : offset + size]


class StreamReader(Reader):
    """Random-access reads over a forward stream (a gunzipping blob stream).

    The kernel reads sequentially but, with several FUSE threads and readahead, requests can arrive slightly out of
    order. The last `window` bytes read are kept (as a few chunks, no copying), gaps ahead up to `window` bytes are
    read and kept rather than skipped, and only a read before the window reopens the stream.
    """

    def __init__(self, opener: Callable[[], BinaryIO], window: int = 8 << 20, path: str = ""):
        self._opener = opener
        self._path = path
        self._window = window
        self._lock = threading.Lock()
        self._stream: Optional[BinaryIO] = None
        self._pos = 0  # stream position == end of the kept chunks
        self._chunks: Deque[Tuple[int, bytes]] = deque()  # (offset, bytes), contiguous, ending at _pos
        self._kept = 0

    def _reopen(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._stream = self._opener()
        self._pos = 0
        self._chunks.clear()
        self._kept = 0

    def _take(self, count: int) -> None:
        data = self._stream.read(count)
        if data:
            self._chunks.append((self._pos, data))
            self._pos += len(data)
            self._kept += len(data)

    def _trim(self, keep_from: int) -> None:
        while self._chunks and self._kept > self._window:
            start, data = self._chunks[0]
            if start + len(data) > keep_from:
                break
            self._chunks.popleft()
            self._kept -= len(data)

    def read(self, offset: int, size: int) -> bytes:
        with self._lock, client_errors(self._path, object_lookup=False):  # a corrupt stream fails this read: EIO
            kept_from = self._chunks[0][0] if self._chunks else self._pos
            if self._stream is None or offset < kept_from:
                self._reopen()
            if offset > self._pos + self._window:
                self._stream.seek(offset)
                self._pos = offset
                self._chunks.clear()
                self._kept = 0
            end = offset + size
            while self._pos < end:
                before = self._pos
                self._take(end - self._pos)
                if self._pos == before:
                    break  # end of stream
            parts = []
            for start, data in self._chunks:
                if start + len(data) <= offset or start >= end:
                    continue
                parts.append(data[max(offset - start, 0) : end - start])
            self._trim(offset)
            return b"".join(parts)

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None


class File(Node):
    kind = FILE

    def size(self) -> int:
        raise NotImplementedError

    def open(self) -> Reader:
        raise NotImplementedError

    def stat(self) -> Stat:
        return Stat(FILE, self.size(), self.mtime, self.stable)


class RenderedFile(File):
    """A file whose bytes come from `render()`; eager ones are rendered at stat time, deferred ones when read.

    `eager` may be a callable deciding on first stat (so merely listing a directory costs nothing). A volatile
    file (control files) is rendered afresh at every open and always read with direct I/O, size 0.
    """

    def __init__(
        self,
        tree: "Tree",
        path: str,
        mtime: float,
        stable: bool,
        render: Callable[[], bytes],
        eager: Union[bool, Callable[[], bool]] = True,
        volatile: bool = False,
    ):
        super().__init__(tree, path, mtime, stable)
        self._render = render
        self._size: Optional[int] = None
        self._eager = False if volatile else eager
        self._volatile = volatile
        self._failed = False
        self._lock = threading.Lock()

    def _rendered(self) -> bytes:
        with self._lock:
            data = self.tree.cached_content(self.path) if self._size is not None else None
            if data is None:
                with client_errors(self.path, object_lookup=False):
                    data = self._render()
                learned = self._size is None and not self._is_eager()
                self._size = len(data)
                self.tree.keep_content(self.path, data)
                if learned:
                    self.tree.on_size_learned(self.path)
            return data

    def _is_eager(self) -> bool:
        if callable(self._eager):
            with client_errors(self.path, object_lookup=False):
                self._eager = bool(self._eager())
        return self._eager

    def size(self) -> int:
        if self._size is None and not self._failed and self._is_eager():
            try:
                self._rendered()
            except OSError:
                # Keep the directory listable: report 0 now and fail with EIO on open; retry on the next lookup.
                self._failed = True
                self.stable = False
                self.tree.forget(self.path)
        return self._size or 0

    def stat(self) -> Stat:
        size = self.size()
        # Deferred files stay direct I/O even once their size is known: the kernel may still hold size 0.
        return Stat(FILE, size, self.mtime, self.stable, direct_io=self._size is None or not self._is_eager())

    def open(self) -> Reader:
        if self._volatile:
            with client_errors(self.path, object_lookup=False):
                return BytesReader(self._render())
        return BytesReader(self._rendered())


class BlobFile(File):
    """data.pickle: the artifact's decompressed serialized bytes, size from the artifact index, streamed."""

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, artifact: Any):
        super().__init__(tree, path, mtime, stable)
        self.artifact = artifact

    def size(self) -> int:
        with client_errors(self.path):
            return self.artifact.blob_size

    def open(self) -> Reader:
        def opener() -> BinaryIO:
            with client_errors(self.path):
                return self.artifact.open_blob()

        reader = StreamReader(opener, path=self.path)
        reader.read(0, 0)  # open now, so a missing blob fails the open(2), not a later read
        return reader


class Dir(Node):
    kind = DIR

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool):
        super().__init__(tree, path, mtime, stable)
        self.listed_names: Optional[List[str]] = None  # set by Tree.list once the children are cached

    def children(self) -> List[Node]:
        """The listed (visible) children, built in bulk from one client listing."""
        raise NotImplementedError

    def child(self, name: str) -> Node:
        """Any child by name, including hidden ones; FileNotFoundError when there is none."""
        raise NotImplementedError

    def _missing(self, name: str) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, "No such file or directory", join(self.path, name))


def _mtime(*times: Any) -> float:
    for value in times:
        if value is not None:
            return render.epoch_seconds(value)
    return 0.0


class RootDir(Dir):
    """All flows with at least one run in the namespace."""

    def children(self) -> List[Node]:
        with client_errors(self.path):
            return [FlowDir(self.tree, join(self.path, flow.id), flow) for flow in self.tree.client.Metaflow()]

    def child(self, name: str) -> Node:
        with client_errors(join(self.path, name)):
            flow = self.tree.client.Flow(name)
        return FlowDir(self.tree, join(self.path, name), flow)


class FlowDir(Dir):
    """latest, latest_successful, tags/ and the flow's runs in the namespace (newest first)."""

    def __init__(self, tree: "Tree", path: str, flow: Any):
        with client_errors(path):
            mtime = _mtime(flow.created_at)
        super().__init__(tree, path, mtime, stable=False)
        self.flow = flow

    def _runs(self) -> List[Any]:
        with client_errors(self.path):
            return list(self.flow)

    def _link(self, name: str, run: Any) -> Symlink:
        with client_errors(self.path):
            return Symlink(self.tree, join(self.path, name), _mtime(run.created_at), False, run.id)

    def children(self) -> List[Node]:
        runs = self._runs()
        nodes: List[Node] = []
        if runs:
            nodes.append(self._link("latest", runs[0]))
            with client_errors(self.path):
                successful = next((run for run in runs if run.successful), None)
            if successful is not None:
                nodes.append(self._link("latest_successful", successful))
        nodes.append(TagsDir(self.tree, join(self.path, "tags"), self.mtime, self.flow))
        nodes.extend(RunDir(self.tree, join(self.path, run.id), run) for run in runs)
        return nodes

    def child(self, name: str) -> Node:
        if name == "tags":
            return TagsDir(self.tree, join(self.path, name), self.mtime, self.flow)
        with client_errors(join(self.path, name)):
            if name == "latest":
                run = self.flow.latest_run
            elif name == "latest_successful":
                run = self.flow.latest_successful_run
            else:
                return RunDir(self.tree, join(self.path, name), self.flow[name])
        if run is None:
            raise self._missing(name)
        return self._link(name, run)


class TagsDir(Dir):
    """One directory per tag (user and system) of the flow's runs in the namespace."""

    def __init__(self, tree: "Tree", path: str, mtime: float, flow: Any):
        super().__init__(tree, path, mtime, stable=False)
        self.flow = flow

    def children(self) -> List[Node]:
        with client_errors(self.path):
            tags = sorted({tag for run in self.flow for tag in run.tags})
        return [TagDir(self.tree, join(self.path, render.encode_tag(tag)), self.mtime, self.flow, tag) for tag in tags]

    def child(self, name: str) -> Node:
        tag = render.decode_tag(name)
        node = TagDir(self.tree, join(self.path, name), self.mtime, self.flow, tag)
        if not node.children():
            raise self._missing(name)
        return node


class TagDir(Dir):
    """<run id> -> ../../<run id> for every run having the tag."""

    def __init__(self, tree: "Tree", path: str, mtime: float, flow: Any, tag: str):
        super().__init__(tree, path, mtime, stable=False)
        self.flow = flow
        self.tag = tag

    def children(self) -> List[Node]:
        with client_errors(self.path):
            return [
                Symlink(self.tree, join(self.path, run.id), _mtime(run.created_at), False, "../../" + run.id)
                for run in self.flow.runs(self.tag)
            ]

    def child(self, name: str) -> Node:
        for node in self.children():
            if node.name == name:
                return node
        raise self._missing(name)


class RunDir(Dir):
    """run.json, parameters.json and the run's steps (`_parameters` hidden)."""

    def __init__(self, tree: "Tree", path: str, run: Any):
        with client_errors(path):
            mtime = _mtime(run.created_at)
            stable = bool(run.finished)
        super().__init__(tree, path, mtime, stable)
        self.run = run

    def _files(self) -> List[Node]:
        run, stable, mtime = self.run, self.stable, self.mtime
        return [
            RenderedFile(
                self.tree, join(self.path, "run.json"), mtime, stable, lambda: render.json_bytes(render.run_record(run))
            ),
            RenderedFile(
                self.tree,
                join(self.path, "parameters.json"),
                mtime,
                stable,
                lambda: render.json_bytes(render.parameters_record(run)),
            ),
        ]

    def children(self) -> List[Node]:
        with client_errors(self.path):
            steps = list(self.run)
        return self._files() + [StepDir(self.tree, join(self.path, step.id), step, self.stable) for step in steps]

    def child(self, name: str) -> Node:
        for node in self._files():
            if node.name == name:
                return node
        path = join(self.path, name)
        with client_errors(path):
            step = self.run[name]
        return StepDir(self.tree, path, step, self.stable)


class StepDir(Dir):
    """step.json and the step's tasks (newest first)."""

    def __init__(self, tree: "Tree", path: str, step: Any, stable: bool):
        with client_errors(path):
            mtime = _mtime(step.created_at)
        super().__init__(tree, path, mtime, stable)
        self.step = step

    def _step_json(self) -> Node:
        step = self.step
        return RenderedFile(
            self.tree,
            join(self.path, "step.json"),
            self.mtime,
            self.stable,
            lambda: render.json_bytes(render.step_record(step)),
        )

    def children(self) -> List[Node]:
        with client_errors(self.path):
            tasks = list(self.step)
        return [self._step_json()] + [TaskDir(self.tree, join(self.path, t.id), t, self.stable) for t in tasks]

    def child(self, name: str) -> Node:
        if name == "step.json":
            return self._step_json()
        path = join(self.path, name)
        with client_errors(path):
            task = self.step[name]
        return TaskDir(self.tree, path, task, self.stable)


class TaskDir(Dir):
    """task.json, metadata.json, stdout.log, stderr.log, exception.txt (only when there is one), artifacts.

    The directory itself is stable when its run is; its contents also when the task has finished, which is learned
    (one `_task_ok` load) only when the contents are first needed.
    """

    FILES = ("task.json", "metadata.json", "stdout.log", "stderr.log", "exception.txt")

    def __init__(self, tree: "Tree", path: str, task: Any, run_stable: bool):
        with client_errors(path):
            mtime = _mtime(task.created_at)
        super().__init__(tree, path, mtime, run_stable)
        self.task = task
        self._contents_stable: Optional[bool] = None

    def contents_stable(self) -> bool:
        if self._contents_stable is None:
            with client_errors(self.path):
                self._contents_stable = self.stable or bool(self.task.finished)
        return self._contents_stable

    def _file(self, name: str) -> Node:
        task = self.task
        renderers: Dict[str, Callable[[], bytes]] = {
            "task.json": lambda: render.json_bytes(render.task_record(task)),
            "metadata.json": lambda: render.json_bytes(render.metadata_records(task)),
            "stdout.log": lambda: render.text_bytes(task.stdout),
            "stderr.log": lambda: render.text_bytes(task.stderr),
            "exception.txt": lambda: render.exception_bytes(task.exception),
        }
        with client_errors(self.path):
            mtime = _mtime(task.finished_at, task.created_at)
        return RenderedFile(self.tree, join(self.path, name), mtime, self.contents_stable(), renderers[name])

    def _has_exception(self) -> bool:
        with client_errors(self.path):
            return self.task.exception is not None

    def children(self) -> List[Node]:
        names = [name for name in self.FILES if name != "exception.txt" or self._has_exception()]
        nodes = [self._file(name) for name in names]
        with client_errors(self.path):
            artifacts = list(self.task)
        stable = self.contents_stable()
        nodes.extend(ArtifactDir(self.tree, join(self.path, a.id), a, stable) for a in artifacts)
        return nodes

    def child(self, name: str) -> Node:
        if name in self.FILES:
            if name == "exception.txt" and not self._has_exception():
                raise self._missing(name)
            return self._file(name)
        path = join(self.path, name)
        with client_errors(path):
            artifact = self.task[name]
        return ArtifactDir(self.tree, path, artifact, self.contents_stable())


class ArtifactDir(Dir):
    """repr.txt, data.pickle and meta.json of one artifact."""

    FILES = ("repr.txt", "data.pickle", "meta.json")

    def __init__(self, tree: "Tree", path: str, artifact: Any, stable: bool):
        with client_errors(path):
            mtime = _mtime(artifact.created_at)
        super().__init__(tree, path, mtime, stable)
        self.artifact = artifact

    def _file(self, name: str) -> Node:
        artifact, tree, path = self.artifact, self.tree, join(self.path, name)
        if name == "data.pickle":
            return BlobFile(tree, path, self.mtime, self.stable, artifact)
        if name == "meta.json":
            return RenderedFile(
                tree, path, self.mtime, self.stable, lambda: render.json_bytes(render.artifact_record(artifact))
            )
        return RenderedFile(
            tree,
            path,
            self.mtime,
            self.stable,
            lambda: render.repr_bytes(artifact.data, tree.repr_limit),
            eager=lambda: artifact.blob_size <= tree.render_threshold,
        )

    def children(self) -> List[Node]:
        return [self._file(name) for name in self.FILES]

    def child(self, name: str) -> Node:
        if name not in self.FILES:
            raise self._missing(name)
        return self._file(name)


class ControlDir(Dir):
    """/.mffs: files registered by the front end (never listed in the root, reachable by name)."""

    def children(self) -> List[Node]:
        return [self.child(name) for name in sorted(self.tree.control_files)]

    def child(self, name: str) -> Node:
        render_control = self.tree.control_files.get(name)
        if render_control is None:
            raise self._missing(name)
        return RenderedFile(self.tree, join(self.path, name), time.time(), False, render_control, volatile=True)


_KEEP_NAMESPACE = object()


class Tree:
    """Resolves paths to nodes and caches them (see the module docstring for what is cached and for how long)."""

    def __init__(
        self,
        client_module: Any = None,
        pathspec: Optional[str] = None,
        namespace: Any = _KEEP_NAMESPACE,
        refresh: float = 0.5,
        cache_entries: int = 50_000,
        content_cache_bytes: int = 64 << 20,
        render_threshold: int = 1 << 20,
        repr_limit: int = 64 << 10,
    ):
        if client_module is None:
            import client as client_module  # the project's Metaflow-compatible client
        self.client = client_module
        if namespace is not _KEEP_NAMESPACE:
            self.client.namespace(namespace)
        self.pathspec = pathspec
        self.refresh = refresh
        self.render_threshold = render_threshold
        self.repr_limit = repr_limit
        self.control_files: Dict[str, Callable[[], bytes]] = {}
        #: called with a path whose reported size changed from 0 to its exact size (deferred repr.txt)
        self.on_size_learned: Callable[[str], None] = lambda path: None
        self._lock = threading.Lock()
        self._stable: LRUCache = LRUCache(maxsize=cache_entries)
        self._live: TTLCache = TTLCache(maxsize=cache_entries, ttl=refresh)
        self._content: LRUCache = LRUCache(maxsize=content_cache_bytes, getsizeof=len)
        self._started = time.time()
        self.lookup("/")  # fail now on an unknown pathspec

    def _root(self) -> Node:
        if not self.pathspec:
            return RootDir(self, "/", self._started, stable=False)
        parts = self.pathspec.strip("/").split("/")
        classes = {1: "Flow", 2: "Run", 3: "Step", 4: "Task"}
        if len(parts) not in classes:
            raise FileNotFoundError(errno.ENOENT, "Not a flow, run, step or task pathspec", self.pathspec)
        with client_errors(self.pathspec):
            obj = getattr(self.client, classes[len(parts)])("/".join(parts))
            run = self.client.Run("/".join(parts[:2])) if len(parts) > 2 else None
            run_stable = bool(run.finished) if run is not None else False
        if len(parts) == 1:
            return FlowDir(self, "/", obj)
        if len(parts) == 2:
            return RunDir(self, "/", obj)
        if len(parts) == 3:
            return StepDir(self, "/", obj, run_stable)
        return TaskDir(self, "/", obj, run_stable)

    # -- caches -----------------------------------------------------------------------------------------------

    def _cached(self, path: str) -> Optional[Node]:
        with self._lock:
            node = self._stable.get(path)
            return node if node is not None else self._live.get(path)

    def _remember(self, node: Node) -> None:
        with self._lock:
            (self._stable if node.stable else self._live)[node.path] = node

    def forget(self, path: str) -> None:
        with self._lock:
            self._stable.pop(path, None)
            self._live.pop(path, None)

    def cached_content(self, path: str) -> Optional[bytes]:
        with self._lock:
            return self._content.get(path)

    def keep_content(self, path: str, data: bytes) -> None:
        with self._lock:
            if len(data) <= self._content.maxsize:
                self._content[path] = data

    def cache_info(self) -> dict:
        with self._lock:
            return {
                "stable_nodes": len(self._stable),
                "live_nodes": len(self._live),
                "content_bytes": int(self._content.currsize),
            }

    # -- the public API ---------------------------------------------------------------------------------------

    def lookup(self, path: str) -> Node:
        path = normalize(path)
        node = self._cached(path)
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
        self._remember(node)
        return node

    def stat(self, path: str) -> Stat:
        return self.lookup(path).stat()

    def list(self, path: str) -> List[Node]:
        """The directory's listed children, in the client's order; they are cached for the stats that follow."""
        node = self.lookup(path)
        if isinstance(node, Symlink):  # `mffs ls DemoFlow/latest`, like ls(1) given a link to a directory
            node = self.lookup(posixpath.join(posixpath.dirname(node.path), node.target))
        if not isinstance(node, Dir):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        if node.listed_names is not None:
            cached = [self._cached(join(node.path, name)) for name in node.listed_names]
            if all(child is not None for child in cached):
                return cached  # type: ignore[return-value]
        children = node.children()
        for child in children:
            self._remember(child)
        node.listed_names = [child.name for child in children]
        return children

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
