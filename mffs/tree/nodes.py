"""Nodes of the path tree: stats and listing entries, the node and file/directory bases, open-file readers, and
the translation of client exceptions into the errnos a filesystem gives.

Errors are OSErrors with the errno a filesystem would give: unknown names FileNotFoundError (ENOENT), a backend or
decode failure OSError(EIO) (logged). A file whose rendering fails at stat time is reported with size 0 and fails
with EIO when opened, so listing its directory still works.

File sizes are exact at stat time. JSON files, logs, exception.txt, cards, and the repr.txt and exports of
artifacts whose pickle is known to be at most `render_threshold` bytes (`DataArtifact.blob_size`, known without
unpickling or inflating more than a bounded number of bytes) are rendered when first stat'ed; their bytes go to an
LRU cache bounded to `content_cache_bytes`, their size stays with the node. Code package files take their size
from the archive header. The repr.txt and exports of a larger artifact are *deferred*: they report size 0 until
opened (always with direct I/O, so reads are not cut at the size the kernel knows); opening renders them
(`repr_limit` bounds repr.txt), after which the exact size is reported and `on_size_learned(path)` is called
(during the open) so the front end can drop the kernel's stale size before the opener's fstat (parquet readers
need it). So `stat`/`ls -l` never unpickle anything bigger than `render_threshold`. step.json is deferred the same
way in a step of more than `step_json_eager_tasks` tasks (its `finished_at` is the latest of every task's).
data.pickle streams from `DataArtifact.open_blob()` and is never held in memory whole; its size is 0 (read with
direct I/O) when `blob_size` cannot tell it cheaply.

Bad records hide only themselves: a directory's listing leaves out an entry it cannot build (`built_nodes`), with a
log line naming it; looking it up by name answers EIO (a malformed record) or ENOENT (no record).
"""
from __future__ import annotations

import errno
import logging
import posixpath
import threading
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Deque, Iterable, Iterator, List, Optional, Tuple, Union

from .. import exports, render

if TYPE_CHECKING:
    from .tree import Tree

log = logging.getLogger("mffs")

DIR, FILE, LINK = "dir", "file", "link"
#: errors from the client that mean "no such object" (matched by class name, as Metaflow's client names them)
_NOT_FOUND_ERRORS = {"MetaflowNotFound", "MetaflowNamespaceMismatch", "MetaflowInvalidPathspec", "KeyError"}


@dataclass(frozen=True, slots=True)
class Stat:
    kind: str
    size: int
    mtime: float  # epoch seconds
    stable: bool
    direct_io: bool = False  # read without the page cache: the size is unknown, or was unknown to the kernel


@dataclass(frozen=True, slots=True)
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
    #: estimated bytes a cached node of this class keeps alive with what it holds (client objects, closures),
    #: measured with tracemalloc over walks of a run (docs/benchmarks.md); listings add `LISTING_ENTRY_BYTES` each
    footprint = 1_000

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


#: estimated bytes of one listing entry kept with its directory's node (an Entry, its strings, its Stat)
LISTING_ENTRY_BYTES = 300


class SubdirEntries(Sequence):
    """A listing of a few `head` entries, then many subdirectories given by name and mtime (a step's tasks). Each
    of their Entries is made when asked for: a listing of 100,000 tasks keeps a list of names and an array of
    times, not 100,000 Entries with their paths and Stats."""

    __slots__ = ("path", "head", "names", "mtimes", "stable")
    #: estimated bytes of a subdirectory kept: its name (about 55 bytes), the name's slot and its time
    SUBDIR_BYTES = 75

    def __init__(self, path: str, head: List[Any], names: List[str], mtimes: "array[float]", stable: bool):
        self.path, self.head, self.names, self.mtimes, self.stable = path, head, names, mtimes, stable

    def footprint(self) -> int:
        return LISTING_ENTRY_BYTES * len(self.head) + self.SUBDIR_BYTES * len(self.names)

    def _subdir(self, index: int) -> Entry:
        name = self.names[index]
        return Entry(name, join(self.path, name), DIR, Stat(DIR, 0, self.mtimes[index], self.stable))

    def __len__(self) -> int:
        return len(self.head) + len(self.names)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError(index)
        return self.head[position] if position < len(self.head) else self._subdir(position - len(self.head))

    def __iter__(self) -> Iterator[Any]:
        yield from self.head
        for index in range(len(self.names)):
            yield self._subdir(index)


class Dir(Node):
    kind = DIR
    #: estimated bytes a directory keeps alive once listed, beyond its footprint and its listing's entries
    listed_footprint = 0

    def __init__(self, tree: "Tree", path: str, mtime: float, stable: bool):
        super().__init__(tree, path, mtime, stable)
        self.listing: Optional[Sequence[Entry]] = None  # kept by Tree.list for as long as this node is cached
        self.listing_lock = threading.Lock()  # one thread builds the listing, others wait for it

    def children(self) -> List[Node]:
        """The listed (visible) children, built in bulk from one client listing."""
        raise NotImplementedError

    def entries(self) -> Union[List[Union[Node, Entry]], SubdirEntries]:
        """What a listing shows: the children, or (directories whose files cost something to build override
        this) an Entry naming a file that is built only when looked up; for a directory of many subdirectories,
        SubdirEntries (whose head may hold nodes too)."""
        return list(self.children())

    def child(self, name: str) -> Node:
        """Any child by name, including hidden ones; FileNotFoundError when there is none."""
        raise NotImplementedError

    def _missing(self, name: str) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, "No such file or directory", join(self.path, name))


def built_nodes(make: Callable[[Any], Node], items: Iterable[Any]) -> List[Node]:
    """`make(item)` for each item, leaving out those whose node cannot be built (client_errors logged why): one bad
    record hides only its own entry."""
    nodes = []
    for item in items:
        try:
            nodes.append(make(item))
        except OSError:
            continue
    return nodes


def epoch_mtime(*times: Any) -> float:
    for value in times:
        if value is not None:
            return render.epoch_seconds(value)
    return 0.0
