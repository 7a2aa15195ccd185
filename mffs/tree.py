"""The mount's path tree: path -> node, plain Python (no FUSE import), over the `client` object model.

Layout (see README): <Flow>/{latest,latest_successful,tags/<tag>/<run>,<run>/{run.json,parameters.json,code/,
<step>/{step.json,<task>/{task.json,metadata.json,stdout.log,stderr.log,exception.txt,cards/,attempts/<n>/,
<artifact>/{repr.txt,data.pickle,meta.json,value.*|content}}}}}. Names starting with `_` (the `_parameters` step,
internal artifacts) are not listed but resolve by name. A hidden `/.mffs/` directory holds control files registered
by the front end (e.g. `stats`). code/ (CodeArchive), cards/ (CardsDir), attempts/ (AttemptsDir) and the typed
exports (ArtifactDir, mffs/exports.py) are described where they are built.

Unpickling policy. repr.txt, the typed exports and parameters.json load values with
`DataArtifact.load(trusted=Tree.trust_pickles)`. By default (`trust_pickles=False`, the mount without
`--trust-pickles`) that is the client's restricted unpickler: standard-library data types, numpy, pandas and
Metaflow's own stand-ins load; any other class becomes a placeholder whose repr names it and the flag, and none of
its code runs, so indexers, `grep -r` and `ls -lR` can crawl a mount safely. data.pickle is always the raw bytes.
A Tree also sets the client's policy for its process (`client.trust_pickles`), so the internal artifacts behind
`finished`, `successful`, `exception`, `index` and parent/child tasks load the same way, in the daemon, in
`mffs ls/cat` and in the readahead worker (True, False and None are known from their sha and never unpickled).

Bad records hide only themselves. A directory's listing leaves out an entry it cannot build, with a log line
naming it; looking it up by name answers EIO (a malformed record) or ENOENT (no record): flows in the root, runs
in a flow, tasks in a step, artifacts in a task (the metadata provider leaves malformed records out of its lists,
see client/metadata/base.py), attempts. What a neighbour's own listing needs but cannot read does not fail it:
a run or task whose `_task_ok` cannot be loaded is listed, as not finished (its run.json or task.json is EIO);
`latest_successful` skips runs whose `_success` cannot be loaded; a task whose `_exception` cannot be loaded
lists exception.txt (EIO when read); a run whose code package is corrupt lists its files and steps without code/
(code/ answers EIO).

Untrusted values are also rendered in isolation (`Tree.render_artifact`): a small scalar, provably cheap, in this
process; any other value in a sandbox worker process under memory, CPU and wall-time limits (mffs/sandbox.py,
`render_memory_mb`, `render_cpu_seconds`, `render_wall_seconds`), so a bomb costs its own files (EIO), never the
daemon's memory or its other readers. With `trust_pickles` the user opted in: values are rendered here.

Stability. Every node says whether it is *stable*: its attributes, bytes and child names can no longer change.
Everything under a finished run (`Run.finished`) is stable, and so is everything under a finished task
(`Task.finished`) of a running run, and a code package. Flow-level nodes (flows, runs, tags, `latest*`) and the
rest of an unfinished run are not. Stable nodes live in an LRU cache of `cache_entries` nodes; unstable ones in a
TTL cache that expires after `refresh` seconds, so a running run is re-read from the backend at most once per
`refresh` per node and new tasks and growing logs show up within about one `refresh`. The FUSE adapter uses the
same flag to decide what the kernel may cache (see mffs/fuse_ops.py).

File sizes are exact at stat time. JSON files, logs, exception.txt, cards, and the repr.txt and exports of
artifacts whose pickle is known to be at most `render_threshold` bytes (`DataArtifact.blob_size`, known without
unpickling or inflating more than a bounded number of bytes) are rendered when first stat'ed; their bytes go to an LRU cache bounded to `content_cache_bytes`, their size
stays with the node. Code package files take their size from the archive header. The repr.txt and exports of a
larger artifact are *deferred*: they report size 0 until opened (always with direct I/O, so reads are not cut at
the size the kernel knows); opening renders them (`repr_limit` bounds repr.txt), after which the exact size is
reported and `on_size_learned(path)` is called (during the open) so the front end can drop the kernel's stale
size before the opener's fstat (parquet readers need it). So `stat`/`ls -l` never unpickle anything bigger than
`render_threshold`. step.json is deferred the same way in a step of more than `step_json_eager_tasks` tasks
(its `finished_at` is the latest of every task's). data.pickle streams from `DataArtifact.open_blob()` and is
never held in memory whole; its size is 0 (read with direct I/O) when `blob_size` cannot tell it cheaply.

Readahead. With `readahead=N` (the mount uses it), listing a task directory of a finished step also lists the N
tasks after it in a worker process (mffs/readahead.py), so a walk finds them built.

Errors are OSErrors with the errno a filesystem would give: unknown names FileNotFoundError (ENOENT), a backend or
decode failure OSError(EIO) (logged). A file whose rendering fails at stat time is reported with size 0 and fails
with EIO when opened, so listing its directory still works.
"""
from __future__ import annotations

import errno
import gc
import json
import logging
import posixpath
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, BinaryIO, Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple,
                    Union)

from cachetools import LRUCache

from client.core import NOT_A_SCALAR
from client.recent import Recent

from . import exports, render
from . import sandbox as sandbox_module
from .sandbox import Limits, Sandbox

if TYPE_CHECKING:
    import tarfile

    from .readahead import Readahead

log = logging.getLogger("mffs")

DIR, FILE, LINK = "dir", "file", "link"
CONTROL_DIR = ".mffs"
CODE_DIR, CARDS_DIR, ATTEMPTS_DIR = "code", "cards", "attempts"
#: code packages (whole archives, typically a few MB) kept in memory for reading code/ files
CODE_PACKAGES_KEPT = 4
#: the largest pickle whose value, when a scalar, is loaded and rendered in the daemon rather than the sandbox
IN_PROCESS_SCALAR_BYTES = 4096
_UNKNOWN = object()
#: errors from the client that mean "no such object" (matched by class name, as Metaflow's client names them)
_NOT_FOUND_ERRORS = {"MetaflowNotFound", "MetaflowNamespaceMismatch", "MetaflowInvalidPathspec", "KeyError"}


@dataclass(frozen=True)
class Stat:
    kind: str
    size: int
    mtime: float  # epoch seconds
    stable: bool
    direct_io: bool = False  # read without the page cache: the size is unknown, or was unknown to the kernel


@dataclass(frozen=True)
class Entry:
    """A name in a directory listing. Directories and links carry their `stat` (known without I/O once the node
    is built), so a front end can hand out their attributes with the listing; files only their kind, since a
    file's size may mean rendering it."""

    name: str
    path: str
    kind: str
    stat: Optional[Stat] = None


def _is_not_found(exc: BaseException) -> bool:
    return any(cls.__name__ in _NOT_FOUND_ERRORS for cls in type(exc).__mro__)


class client_errors:
    """Turn client exceptions into OSErrors: not found -> ENOENT, anything else -> EIO (logged).

    With object_lookup=False (rendering a file that exists), "not found" is a backend inconsistency: EIO too.
    A class rather than a @contextmanager generator: it wraps every client call of a walk (tens of thousands).
    """

    __slots__ = ("path", "object_lookup")

    def __init__(self, path: str, object_lookup: bool = True):
        self.path = path
        self.object_lookup = object_lookup

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Optional[BaseException], traceback: Any) -> bool:
        if exc is None or not isinstance(exc, Exception):
            return False
        path = self.path
        if isinstance(exc, OSError):
            if exc.errno:
                return False
            log.warning("backend failure for %s: %s: %s", path, type(exc).__name__, exc)
            raise OSError(errno.EIO, "%s: %s" % (type(exc).__name__, exc), path) from exc
        if self.object_lookup and _is_not_found(exc):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path) from exc
        what = "cannot render" if isinstance(exc, exports.ExportError) else "backend failure for"
        log.warning("%s %s: %s: %s", what, path, type(exc).__name__, exc, exc_info=log.isEnabledFor(10))
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
    """data.pickle: the artifact's decompressed serialized bytes, size from `DataArtifact.blob_size`, streamed."""

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, artifact: Any):
        super().__init__(tree, path, mtime, stable)
        self.artifact = artifact

    def size(self) -> int:
        with client_errors(self.path):
            return self.artifact.blob_size or 0

    def stat(self) -> Stat:
        with client_errors(self.path):
            size = self.artifact.blob_size
        # unknown without inflating the whole blob (DataArtifact.blob_size): size 0, read with direct I/O
        return Stat(FILE, size or 0, self.mtime, self.stable, direct_io=size is None)

    def open(self) -> Reader:
        def opener() -> BinaryIO:
            with client_errors(self.path):
                return self.artifact.open_blob()

        reader = StreamReader(opener, path=self.path)
        reader.read(0, 0)  # open now, so a missing blob fails the open(2), not a later read
        return reader


class StoredFile(File):
    """A stored file served as is (a card): its size from the storage, its bytes read when opened."""

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, size: Callable[[], int],
                 read: Callable[[], bytes]):
        super().__init__(tree, path, mtime, stable)
        self._size, self._read = size, read

    def size(self) -> int:
        with client_errors(self.path):
            return self._size()

    def open(self) -> Reader:
        with client_errors(self.path):
            return BytesReader(self._read())


class Dir(Node):
    kind = DIR

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool):
        super().__init__(tree, path, mtime, stable)
        self.listing: Optional[List[Entry]] = None  # kept by Tree.list for as long as this node is cached
        self.listing_lock = threading.Lock()  # one thread builds the listing, others wait for it

    def children(self) -> List[Node]:
        """The listed (visible) children, built in bulk from one client listing."""
        raise NotImplementedError

    def entries(self) -> List[Union[Node, Entry]]:
        """What a listing shows: the children, or (directories whose files cost something to build override
        this) an Entry naming a file that is built only when looked up."""
        return list(self.children())

    def child(self, name: str) -> Node:
        """Any child by name, including hidden ones; FileNotFoundError when there is none."""
        raise NotImplementedError

    def _missing(self, name: str) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, "No such file or directory", join(self.path, name))


def _built(make: Callable[[Any], Node], items: Iterable[Any]) -> List[Node]:
    """`make(item)` for each item, leaving out those whose node cannot be built (client_errors logged why): one bad
    record hides only its own entry."""
    nodes = []
    for item in items:
        try:
            nodes.append(make(item))
        except OSError:
            continue
    return nodes


def _run_finished(run: Any, path: str) -> bool:
    """Whether the run finished; False when its end task's `_task_ok` cannot be read (logged): then run.json alone
    fails, and the run's directories are re-read as those of a running run."""
    try:
        with client_errors(path):
            return bool(run.finished)
    except OSError:
        return False


def _mtime(*times: Any) -> float:
    for value in times:
        if value is not None:
            return render.epoch_seconds(value)
    return 0.0


class RootDir(Dir):
    """All flows with at least one run in the namespace."""

    def children(self) -> List[Node]:
        with client_errors(self.path):
            records = self.tree.client.Metaflow().metadata.flows()
        return _built(self._flow, records)

    def _flow(self, record: dict) -> Node:
        # as Metaflow() iterates, but one flow at a time: a flow out of the namespace is ENOENT, a bad one EIO
        path = join(self.path, record["flow_id"])
        with client_errors(path):
            flow = self.tree.client.Flow(_object=record, pathspec=record["flow_id"])
        return FlowDir(self.tree, path, flow)

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

    def _latest_successful(self, runs: List[Any]) -> Optional[Any]:
        """Flow.latest_successful_run, skipping the runs whose `_success` cannot be read (logged)."""
        for run in runs:
            try:
                with client_errors(join(self.path, run.id)):
                    if run.successful:
                        return run
            except OSError:
                continue
        return None

    def children(self) -> List[Node]:
        runs = self._runs()
        nodes: List[Node] = []
        if runs:
            nodes.append(self._link("latest", runs[0]))
            successful = self._latest_successful(runs)
            if successful is not None:
                nodes.append(self._link("latest_successful", successful))
        nodes.append(TagsDir(self.tree, join(self.path, "tags"), self.mtime, self.flow))
        nodes.extend(_built(lambda run: RunDir(self.tree, join(self.path, run.id), run), runs))
        return nodes

    def child(self, name: str) -> Node:
        if name == "tags":
            return TagsDir(self.tree, join(self.path, name), self.mtime, self.flow)
        with client_errors(join(self.path, name)):
            if name == "latest":
                run = self.flow.latest_run
            elif name == "latest_successful":
                run = self._latest_successful(self._runs())
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
    """run.json, parameters.json, code/ (only when the run has a code package) and the run's steps (`_parameters`
    hidden). A step named `code` wins over the code package: a name the flow chose is never made unreachable."""

    def __init__(self, tree: "Tree", path: str, run: Any):
        with client_errors(path):
            mtime = _mtime(run.created_at)
        super().__init__(tree, path, mtime, _run_finished(run, path))
        self.run = run
        self._archive: Any = _UNKNOWN  # CodeArchive, or None without a code package; read once per node

    def _files(self) -> List[Node]:
        run, stable, mtime, tree = self.run, self.stable, self.mtime, self.tree
        return [
            RenderedFile(
                self.tree, join(self.path, "run.json"), mtime, stable, lambda: render.json_bytes(render.run_record(run))
            ),
            RenderedFile(
                self.tree,
                join(self.path, "parameters.json"),
                mtime,
                stable,
                lambda: render.json_bytes(render.parameters_record(run, tree.record_value)),
            ),
        ]

    def _code_dir(self) -> Optional[Node]:
        path = join(self.path, CODE_DIR)
        if self._archive is _UNKNOWN:
            with client_errors(path, object_lookup=False):
                code = self.tree.code_package(self.run)
                self._archive = CodeArchive(self.run, code) if code is not None else None
        if self._archive is None:
            return None
        return CodeDir(self.tree, path, self.mtime, self._archive, ())

    def children(self) -> List[Node]:
        with client_errors(self.path):
            steps = list(self.run)
        nodes = self._files()
        if CODE_DIR not in {step.id for step in steps}:
            try:
                code = self._code_dir()
            except OSError:
                code = None  # a corrupt code package (logged): code/ alone is left out, and EIO by name
            if code is not None:
                nodes.append(code)
        return nodes + _built(lambda step: StepDir(self.tree, join(self.path, step.id), step, self.stable), steps)

    def child(self, name: str) -> Node:
        for node in self._files():
            if node.name == name:
                return node
        path = join(self.path, name)
        try:
            with client_errors(path):
                step = self.run[name]
        except FileNotFoundError:
            code = self._code_dir() if name == CODE_DIR else None
            if code is None:
                raise
            return code
        return StepDir(self.tree, path, step, self.stable)


def code_member_parts(member: tarfile.TarInfo) -> Optional[Tuple[str, ...]]:
    """The path components under which a code package member is served, or None when it is never served: links
    (symbolic and hard), devices and FIFOs, absolute names and names with a `..` component."""
    if not (member.isreg() or member.isdir()):
        return None
    parts = tuple(part for part in member.name.split("/") if part not in ("", "."))
    if member.name.startswith("/") or ".." in parts or not parts:
        return None
    return parts


class CodeArchive:
    """The directory index of a run's code package: which paths code/ serves and the archive members behind them.

    Served: the members `MetaflowCode.user_members()` lists (what Metaflow's `extract()` extracts) that
    `code_member_parts` accepts. `./` and empty components are dropped; when a path occurs twice the later
    member wins, as extraction would overwrite it; a path that is a directory (explicitly or as the parent of
    another member) is a directory even if a file member has the same name. Only the index is kept here (member
    headers, not the package): file bytes are read from the package through `Tree.read_code_member`.
    """

    def __init__(self, run: Any, code: Any):
        self.run = run
        #: directory path components -> {name: file member, or None for a subdirectory}
        self.dirs: Dict[Tuple[str, ...], Dict[str, Optional[tarfile.TarInfo]]] = {(): {}}
        files = []
        for member in code.user_members():
            parts = code_member_parts(member)
            if parts is None:
                continue
            for depth in range(1, len(parts) if member.isreg() else len(parts) + 1):
                self._add_dir(parts[:depth])
            if member.isreg():
                files.append((parts, member))
        for parts, member in files:
            if parts not in self.dirs:
                self.dirs[parts[:-1]][parts[-1]] = member

    def _add_dir(self, parts: Tuple[str, ...]) -> None:
        if parts not in self.dirs:
            self.dirs[parts] = {}
            self.dirs[parts[:-1]][parts[-1]] = None


class ArchiveFile(File):
    """A regular file of a code package: size from the archive header, bytes read when opened."""

    def __init__(self, tree: "Tree", path: str, archive: CodeArchive, member: tarfile.TarInfo):
        super().__init__(tree, path, float(member.mtime), stable=True)
        self.archive = archive
        self.member = member

    def size(self) -> int:
        return self.member.size

    def open(self) -> Reader:
        data = self.tree.cached_content(self.path)
        if data is None:
            with client_errors(self.path, object_lookup=False):
                data = self.tree.read_code_member(self.archive.run, self.member)
            self.tree.keep_content(self.path, data)
        return BytesReader(data)


class CodeDir(Dir):
    """code/ and its subdirectories: a read-only view of the code package's user files (see CodeArchive)."""

    def __init__(self, tree: "Tree", path: str, mtime: float, archive: CodeArchive, parts: Tuple[str, ...]):
        super().__init__(tree, path, mtime, stable=True)  # a code package never changes
        self.archive = archive
        self.parts = parts

    def _node(self, name: str, member: Optional[tarfile.TarInfo]) -> Node:
        path = join(self.path, name)
        if member is None:
            return CodeDir(self.tree, path, self.mtime, self.archive, self.parts + (name,))
        return ArchiveFile(self.tree, path, self.archive, member)

    def children(self) -> List[Node]:
        return [self._node(name, member) for name, member in sorted(self.archive.dirs[self.parts].items())]

    def child(self, name: str) -> Node:
        entries = self.archive.dirs[self.parts]
        if name not in entries:
            raise self._missing(name)
        return self._node(name, entries[name])


class StepDir(Dir):
    """step.json and the step's tasks (newest first)."""

    def __init__(self, tree: "Tree", path: str, step: Any, stable: bool):
        with client_errors(path):
            mtime = _mtime(step.created_at)
        super().__init__(tree, path, mtime, stable)
        self.step = step
        self._positions: Optional[Dict[str, int]] = None  # task path -> position in the listing
        self._handed_out = 0  # listing positions before this were returned by `tasks_after`

    def _step_json(self) -> Node:
        step, tree = self.step, self.tree
        return RenderedFile(
            tree,
            join(self.path, "step.json"),
            self.mtime,
            self.stable,
            lambda: render.json_bytes(render.step_record(step)),
            # its finished_at reads every task's `_task_ok`: a glob such as `body/*/x` stats step.json too
            eager=lambda: sum(1 for _ in step) <= tree.step_json_eager_tasks,
        )

    def children(self) -> List[Node]:
        with client_errors(self.path):
            tasks = list(self.step)
        return [self._step_json()] + _built(lambda t: TaskDir(self.tree, join(self.path, t.id), t, self.stable), tasks)

    def tasks_after(self, task_path: str, count: int) -> List[str]:
        """Paths of the (up to) `count` tasks listed after `task_path`, except those an earlier call returned;
        [] until this directory was listed (for Readahead, which calls it under its lock)."""
        if self.listing is None:
            return []
        if self._positions is None:
            self._positions = {entry.path: number for number, entry in enumerate(self.listing)}
        position = self._positions.get(task_path)
        if position is None:
            return []
        start, end = max(position + 1, self._handed_out), min(position + 1 + count, len(self.listing))
        self._handed_out = max(self._handed_out, end)
        return [entry.path for entry in self.listing[start:end] if entry.kind == DIR]

    def child(self, name: str) -> Node:
        if name == "step.json":
            return self._step_json()
        path = join(self.path, name)
        with client_errors(path):
            task = self.step[name]
        return TaskDir(self.tree, path, task, self.stable)


class TaskDir(Dir):
    """task.json, metadata.json, stdout.log, stderr.log, exception.txt (only when there is one), cards/ (only when
    the task has stored cards), attempts/ (listed only when the task was retried) and the artifacts.

    The files and artifacts are those of the task's current attempt, as in Metaflow's client: logs of the latest
    started attempt, artifacts of the latest finished one. `attempts/<n>/` (AttemptDir) has the same layout for
    each attempt 0..current_attempt; attempts/ is listed only for retried tasks but resolves for every task (see
    `_special_dirs`). cards/ and attempts/ win over artifacts named `cards` or `attempts`, which stay reachable in
    `attempts/<n>/` (n = `current_attempt` in task.json).

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
            try:
                with client_errors(self.path):
                    self._contents_stable = self.stable or bool(self.task.finished)
            except OSError:
                self._contents_stable = False  # `_task_ok` cannot be read (logged): task.json alone fails
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
        try:
            with client_errors(self.path):
                mtime = _mtime(task.finished_at, task.created_at)
        except OSError:
            mtime = self.mtime  # its `_task_ok` record is bad (logged): task.json alone fails
        return RenderedFile(self.tree, join(self.path, name), mtime, self.contents_stable(), renderers[name])

    def _has_exception(self) -> bool:
        """Whether exception.txt exists: also when `_exception` cannot be read (logged), so that reading it tells."""
        try:
            with client_errors(self.path):
                return self.task.exception is not None
        except OSError:
            return True

    def _special_dirs(self, listing: bool) -> Dict[str, Callable[[], Node]]:
        """name -> node factory of the directories mffs adds to the task: cards/ when it registered cards;
        attempts/ always reachable, but listed only when the task was retried (one attempt: attempts/0 is this
        directory again, and `find`, `grep -r` or an indexer would read every task twice)."""
        path, stable = self.path, self.contents_stable()
        with client_errors(path):
            cards = self.task.cards()  # one listing of the task's card directory
            has_cards = bool(cards and cards.names)
            show_attempts = not listing or self.task.current_attempt > 0
        dirs: Dict[str, Callable[[], Node]] = {}
        if has_cards:
            dirs[CARDS_DIR] = lambda: CardsDir(self.tree, join(path, CARDS_DIR), self.mtime, stable, self.task)
        if show_attempts:
            dirs[ATTEMPTS_DIR] = lambda: AttemptsDir(
                self.tree, join(path, ATTEMPTS_DIR), self.mtime, stable, self.task
            )
        return dirs

    def entries(self) -> List[Union[Node, Entry]]:
        with client_errors(self.path):
            artifacts = list(self.task)  # first: the task's metadata listing it makes serves the questions below
        names = [name for name in self.FILES if name != "exception.txt" or self._has_exception()]
        listing: List[Union[Node, Entry]] = [Entry(name, join(self.path, name), FILE) for name in names]
        try:
            listing.extend(make() for make in self._special_dirs(listing=True).values())
        except OSError:
            pass  # logged: cards/ and attempts/ stay reachable by name (and fail there)
        stable = self.contents_stable()
        listing.extend(_built(lambda a: ArtifactDir(self.tree, join(self.path, a.id), a, stable), artifacts))
        return listing

    def child(self, name: str) -> Node:
        if name in self.FILES:
            if name == "exception.txt" and not self._has_exception():
                raise self._missing(name)
            return self._file(name)
        if name in (CARDS_DIR, ATTEMPTS_DIR):
            make = self._special_dirs(listing=False).get(name)
            if make is not None:
                return make()
        path = join(self.path, name)
        with client_errors(path):
            artifact = self.task[name]
        return ArtifactDir(self.tree, path, artifact, self.contents_stable())


class AttemptDir(TaskDir):
    """attempts/<n>/: task.json, metadata.json, logs, exception.txt and artifacts of attempt n, from
    `Task(pathspec, attempt=n)` as in Metaflow's client; no cards/ or attempts/ (they belong to the task)."""

    def _special_dirs(self, listing: bool) -> Dict[str, Callable[[], Node]]:
        return {}


class AttemptsDir(Dir):
    """attempts/: one AttemptDir per attempt 0..current_attempt (every attempt that has started)."""

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, task: Any):
        super().__init__(tree, path, mtime, stable)
        self.task = task

    def _attempt(self, number: int) -> Node:
        path = join(self.path, str(number))
        with client_errors(path):
            attempt = self.tree.client.Task(self.task.pathspec, attempt=number)
        return AttemptDir(self.tree, path, attempt, self.stable)

    def _count(self) -> int:
        with client_errors(self.path):
            return self.task.current_attempt + 1

    def children(self) -> List[Node]:
        return _built(self._attempt, range(self._count()))

    def child(self, name: str) -> Node:
        if not (name.isdigit() and name == str(int(name)) and int(name) < self._count()):
            raise self._missing(name)
        return self._attempt(int(name))


def card_file_names(stored_names: List[str], uuids_in_order: List[str]) -> Dict[str, str]:
    """Served card name -> stored card name. A stored name is `<type>[-<id>]-<uuid>.html`; it is served as
    `<type>[-<id>]-<n>.html`, n counting from 0 the cards with the same `<type>[-<id>]`, ordered by the position of
    their uuid in `uuids_in_order`, then (uuid not there) by stored name."""
    position = {}
    for uuid in uuids_in_order:
        position.setdefault(uuid, len(position))

    def stem_parts(stored: str) -> Tuple[str, str]:
        prefix, _, uuid = stored[: -len(".html")].rpartition("-")
        return (prefix, uuid) if prefix else (uuid, "")

    served: Dict[str, str] = {}
    counts: Dict[str, int] = {}
    for stored in sorted(stored_names, key=lambda name: (position.get(stem_parts(name)[1], len(position)), name)):
        prefix = stem_parts(stored)[0]
        number = counts.get(prefix, 0)
        counts[prefix] = number + 1
        served["%s-%d.html" % (prefix, number)] = stored
    return served


class CardsDir(Dir):
    """cards/: the task's Metaflow cards as `<type>[-<id>]-<n>.html`, byte-identical to the stored HTML files.

    Stored names end in a uuid (`default-<uuid>.html`, `<type>-<id>-<uuid>.html`) that means nothing to a reader,
    so n numbers the cards of one `<type>[-<id>]` from 0: in the order of the task's `card-info` metadata events
    (by time, then as listed: the order in which the task registered its @card decorators), then cards with no
    event in stored-name order (see `card_file_names`). A cloned (resumed) task shows its origin's cards, as
    Metaflow's `get_cards` does.
    """

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool, task: Any):
        super().__init__(tree, path, mtime, stable)
        self.task = task
        self._store: Any = None
        self._names: Optional[Dict[str, str]] = None

    def _served_names(self) -> Dict[str, str]:
        if self._names is None:
            with client_errors(self.path):
                store = self.task.cards()
                events = sorted(
                    (entry for entry in self.task.metadata if entry.type == "card-info"), key=lambda e: e.created_at
                )
            self._store = store
            self._names = card_file_names(store.names if store else [], [_card_uuid(e) for e in events])
        return self._names

    def _card(self, name: str, stored: str) -> Node:
        store = self._store
        return StoredFile(
            self.tree, join(self.path, name), self.mtime, self.stable, lambda: store.size(stored), lambda: store.read(stored)
        )

    def children(self) -> List[Node]:
        return [self._card(name, stored) for name, stored in self._served_names().items()]

    def child(self, name: str) -> Node:
        stored = self._served_names().get(name)
        if stored is None:
            raise self._missing(name)
        return self._card(name, stored)


def _card_uuid(event: Any) -> str:
    """The card uuid of a `card-info` metadata event: its value's `card_uuid`, else the field name (the uuid)."""
    try:
        return json.loads(event.value).get("card_uuid") or event.name
    except (TypeError, ValueError, AttributeError):
        return event.name


class ArtifactDir(Dir):
    """repr.txt, data.pickle, meta.json and the artifact's typed exports (value.json, value.csv, ...; which ones
    is decided by mffs/exports.py from the stored type, without loading the value).

    repr.txt and the exports render the value loaded with the mount's unpickling policy (`Tree.trust_pickles`):
    by default the restricted unpickler, so an object of a class that is not allow-listed appears as a placeholder
    naming the class and `--trust-pickles`, and nothing of it runs; such a value has no exports. data.pickle is the
    stored bytes, never unpickled. Exports are rendered and cached like repr.txt (at first stat when the pickle is
    at most `render_threshold` bytes, else deferred); one that fails to render is EIO for that file only.
    """

    FILES = ("repr.txt", "data.pickle", "meta.json")

    def __init__(self, tree: "Tree", path: str, artifact: Any, stable: bool):
        with client_errors(path):
            mtime = _mtime(artifact.created_at)
        super().__init__(tree, path, mtime, stable)
        self.artifact = artifact

    def _names(self) -> List[str]:
        with client_errors(self.path):
            type_name = self.artifact.type_name or ""
        return list(self.FILES) + exports.export_names(type_name, trusted=self.tree.trust_pickles)

    def _file(self, name: str) -> Node:
        artifact, tree, path = self.artifact, self.tree, join(self.path, name)
        if name == "data.pickle":
            return BlobFile(tree, path, self.mtime, self.stable, artifact)
        if name == "meta.json":
            return RenderedFile(
                tree, path, self.mtime, self.stable, lambda: render.json_bytes(render.artifact_record(artifact))
            )
        return RenderedFile(
            tree, path, self.mtime, self.stable, lambda: tree.render_artifact(artifact, name),
            eager=lambda: tree.renders_at_stat(artifact),
        )

    def entries(self) -> List[Union[Node, Entry]]:
        return [Entry(name, join(self.path, name), FILE) for name in self._names()]

    def child(self, name: str) -> Node:
        if name not in self.FILES and name not in self._names():
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


def collect_garbage_for_caches() -> None:
    """Garbage collection for a process whose Tree caches fill with tens of thousands of long-lived nodes and
    records while a walk runs: CPython's default thresholds (a collection every 700 allocations) scan them over and
    over (`find` over a 1000-task run takes about 10% less time with these). freeze() takes what start-up made out
    of the collector's view. Called once a process has started up (the daemon, the readahead worker)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


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
        step_json_eager_tasks: int = 100,
        repr_limit: int = 64 << 10,
        trust_pickles: bool = False,
        readahead: int = 0,
        render_memory_mb: int = Limits.memory_mb,
        render_cpu_seconds: float = Limits.cpu_seconds,
        render_wall_seconds: float = Limits.wall_seconds,
    ):
        if client_module is None:
            import client as client_module  # the project's Metaflow-compatible client
        self.client = client_module
        if namespace is not _KEEP_NAMESPACE:
            self.client.namespace(namespace)
        self.pathspec = pathspec
        self.refresh = refresh
        self.render_threshold = render_threshold
        self.step_json_eager_tasks = step_json_eager_tasks
        self.repr_limit = repr_limit
        #: load artifact values with the full unpickler (else the restricted one): repr.txt and exports, and, as
        #: the client's policy for this process, the internal artifacts behind finished, exception, parents, ...
        self.trust_pickles = trust_pickles
        self.client.trust_pickles(trust_pickles)
        #: what rendering one untrusted value may use (mffs/sandbox.py)
        self.render_limits = Limits(render_memory_mb, render_cpu_seconds, render_wall_seconds)
        self._sandbox: Optional[Sandbox] = None
        self.control_files: Dict[str, Callable[[], bytes]] = {}
        #: called with a path whose reported size changed from 0 to its exact size (deferred repr.txt)
        self.on_size_learned: Callable[[str], None] = lambda path: None
        self._lock = threading.Lock()
        self._stable: LRUCache = LRUCache(maxsize=cache_entries)
        self._live = Recent(refresh, cache_entries)
        self._content: LRUCache = LRUCache(maxsize=content_cache_bytes, getsizeof=len)
        self._code_packages: LRUCache = LRUCache(maxsize=CODE_PACKAGES_KEPT)
        self._code_lock = threading.Lock()
        self._started = time.time()
        self._settings = dict(
            pathspec=pathspec, refresh=refresh, cache_entries=cache_entries, content_cache_bytes=content_cache_bytes,
            render_threshold=render_threshold, step_json_eager_tasks=step_json_eager_tasks, repr_limit=repr_limit,
            trust_pickles=trust_pickles, render_memory_mb=render_memory_mb, render_cpu_seconds=render_cpu_seconds,
            render_wall_seconds=render_wall_seconds,
        )
        self._readahead: Optional[Readahead] = None
        self.lookup("/")  # fail now on an unknown pathspec
        if readahead > 0:
            from . import readahead as readahead_module  # which imports this module

            self._readahead = readahead_module.Readahead(self, readahead)

    def close(self) -> None:
        """End the readahead worker and the sandbox's workers, if any."""
        if self._readahead is not None:
            self._readahead.close()
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()

    def sandbox_usage(self) -> Dict[str, Any]:
        """The sandbox's workers (pids), renders, refusals and restarts (zeros before its first render)."""
        with self._lock:
            sandbox = self._sandbox
        return (sandbox or Sandbox(self.render_limits)).usage()

    def readahead_usage(self) -> Dict[str, Any]:
        """pid, CPU seconds and peak RSS of the readahead worker (None and zeros without one)."""
        if self._readahead is None:
            return {"pid": None, "cpu_seconds": 0.0, "max_rss_kb": 0}
        return self._readahead.usage()

    def worker_settings(self) -> Dict[str, Any]:
        """What another process needs to build the same tree (see `from_worker_settings`; mffs/readahead.py)."""
        return dict(self._settings, namespace=self.client.get_namespace(), metadata=self.client.get_metadata())

    @classmethod
    def from_worker_settings(cls, settings: Dict[str, Any]) -> "Tree":
        import client

        settings = dict(settings)
        client.metadata(settings.pop("metadata"))
        return cls(client, **settings)

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
        run_stable = _run_finished(run, self.pathspec) if run is not None else False
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
        return size is not None and size <= self.render_threshold

    def render_artifact(self, artifact: Any, file_name: str) -> bytes:
        """The bytes of an artifact's repr.txt or export `file_name`. With `trust_pickles`, loaded and rendered
        here, as the user asked. Otherwise the value is untrusted: a small scalar (provably cheap to load and
        render: `DataArtifact.load_scalar`) is rendered here, anything else in the sandbox (mffs/sandbox.py)."""
        if self.trust_pickles:
            value = artifact.load(trusted=True)
        else:
            value = artifact.load_scalar(IN_PROCESS_SCALAR_BYTES)
            if value is NOT_A_SCALAR:
                return self.sandbox().render(artifact.stored_at(), artifact.id, file_name, self.repr_limit)
        return sandbox_module.render_value(value, file_name, self.repr_limit)

    def record_value(self, artifact: Any) -> Any:
        """An artifact's value for a JSON record (parameters.json), isolated as `render_artifact` isolates it: an
        untrusted value that is not a small scalar comes back from the sandbox as the JSON data `json_bytes`
        would write for it (its text parsed), so the record's text is the same."""
        if self.trust_pickles:
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
                self._sandbox = Sandbox(self.render_limits)
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

    def _cached(self, path: str) -> Optional[Node]:
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
        node = self._cached(path)  # the kernel's paths are normal already: most lookups end here
        if node is not None:
            return node
        normal = normalize(path)
        if normal != path:  # a path typed to `mffs ls/cat` may name a cached node another way
            path = normal
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
            if self._readahead is not None and isinstance(parent, TaskDir):
                self._readahead.note_lookup_in_task()
        self._remember(node)
        return node

    def stat(self, path: str) -> Stat:
        return self.lookup(path).stat()

    def list(self, path: str) -> List[Entry]:
        """The directory's listing, in the client's order (see `listing`)."""
        return self.listing(path)[1]

    def listing(self, path: str) -> Tuple[bool, List[Entry]]:
        """(whether the directory is stable, its listing in the client's order). A listing is kept with the
        directory's node (so for as long as that is cached); the child nodes built for it go to the node caches for
        the lookups that follow. With readahead, a listing the worker built is taken as it is, without a node."""
        readahead = self._readahead
        if readahead is not None:
            listing = readahead.listing(path)
            if listing is not None:
                return True, listing  # the worker reads ahead only stable directories
        node = self.lookup(path)
        if isinstance(node, Symlink):  # `mffs ls DemoFlow/latest`, like ls(1) given a link to a directory
            node = self.lookup(posixpath.join(posixpath.dirname(node.path), node.target))
        if not isinstance(node, Dir):
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", path)
        listing = self._listing(node)
        if readahead is not None and type(node) is TaskDir:  # not an AttemptDir
            readahead.after(node.path)
        return node.stable, listing

    def _listing(self, node: Dir) -> List[Entry]:
        """`node`'s listing, built once (concurrent callers wait for the first)."""
        listing = node.listing
        if listing is None:
            with node.listing_lock:
                listing = node.listing
                if listing is None:
                    listing = []
                    for item in node.entries():
                        if isinstance(item, Node):
                            self._remember(item)
                            # entries keep a stat, not the node: listings must not hold evicted nodes alive
                            item = Entry(item.name, item.path, item.kind, item.stat() if item.kind != FILE else None)
                        listing.append(item)
                    node.listing = listing
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
