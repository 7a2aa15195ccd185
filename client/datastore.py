"""Metaflow's datastore layout over a Storage backend: blobs, per-attempt task files, logs.

Blobs are content-addressed (`<F>/data/<sha[:2]>/<sha>`, gzip unless stored raw), so they are cached by sha for
good, within a byte budget. Per-attempt files (`<A>.data.json`, logs) live under `<F>/<R>/<S>/<T>/`.
"""
from __future__ import annotations

import io
import os
import threading
import zlib
from typing import Any, BinaryIO, Dict, FrozenSet, List, Optional, Tuple, Union

from cachetools import LRUCache

from . import records
from .blobcache import BlobCache
from .config import find_local_root, mffs_setting, setting
from .recent import Recent
from .storage import LOCAL_SCHEME, UnknownScheme, get_storage, normal_root, split_scheme
from .storage.base import OutsideDatastore, Storage
from .storage.local import OPEN_FLAGS

MAX_ATTEMPTS = 6
LOG_SOURCES = ("runtime", "task")
_GZIP_MAGIC = b"\x1f\x8b"
#: the most serialized bytes a prefetch inflates per blob (what the blob cache keeps of one blob, by default)
PREFETCH_INFLATE_LIMIT = 32 << 20
#: the most stored bytes a prefetch downloads per blob: a larger one, which a loop may well not read (a guess), is
#: fetched when read (a prefetch holds up to MFFS_S3_THREADS of them in memory at once)
PREFETCH_STORED_LIMIT = 8 << 20
#: the most serialized bytes inflated to learn a gzip blob's length (`stored_blob_size`, `DataArtifact.blob_size`)
SIZE_INFLATE_LIMIT = 256 << 10


def _gzip_size_bound(length: int) -> int:
    """The most a gzip file of `length` content bytes takes, as Python's gzip writes it: header and trailer, and 5
    bytes per stored deflate block (at least 16 KB each) for incompressible content; with room to spare."""
    return length + 5 * (length // 16384 + 1) + 1024


#: the most stored bytes fetched per blob to learn its length before it is read (`DataArtifact.blob_size`): a gzip
#: file of SIZE_INFLATE_LIMIT bytes
SIZE_FETCH_LIMIT = _gzip_size_bound(SIZE_INFLATE_LIMIT)

_HEX_DIGITS = "0123456789abcdef"


def is_sha(sha: object) -> bool:
    """Whether a record's sha is one: 40 lowercase hex digits (blob keys and disk cache files are named by it)."""
    return isinstance(sha, str) and len(sha) == 40 and not sha.strip(_HEX_DIGITS)


blob_cache = BlobCache(mffs_setting("BLOB_CACHE_MB", 256) * 2**20)
_disk_cache = None
_CHUNK = 2**20
#: (root, flow) -> FlowDatastore: stateless but for its storage, shared (a race only builds an equal one)
_datastores: dict = {}
#: (card root, `<F>/runs/<R>[/steps/<S>]/tasks`) -> ids of the tasks with a card directory there
_card_task_listings = Recent(mffs_setting("TTL", 1.0), max_entries=10_000)


def _index_size(index: Any) -> int:
    """A parsed index's memory, estimated: about 800 bytes an artifact (its name, sha and info dict)."""
    objects = index.get("objects") if isinstance(index, dict) else None
    return 256 + 800 * (len(objects) if isinstance(objects, dict) else 0)


#: done attempts' indexes by (root, flow, run, step, task, attempt), bounded in estimated bytes
_attempt_indexes: LRUCache = LRUCache(maxsize=int(mffs_setting("INDEX_CACHE_MB", 64.0) * 2**20), getsizeof=_index_size)
_attempt_indexes_lock = threading.Lock()


def _keep_attempt_index(key: Tuple[Any, ...], index: Any) -> None:
    """Keep a parsed index in memory unless it is larger than the whole cache (then it is read again when asked)."""
    if _index_size(index) <= _attempt_indexes.maxsize:
        with _attempt_indexes_lock:
            _attempt_indexes[key] = index


def _index_cache_key(key: Tuple[Any, ...]) -> str:
    """The disk cache's name for a done attempt's index: `index-` and the sha1 of where it is stored."""
    import hashlib

    return "index-" + hashlib.sha1("\0".join(map(str, key)).encode()).hexdigest()


def disk_cache():
    """The persistent blob cache of this process (for remote storage only; MFFS_CACHE_DIR, MFFS_DISK_CACHE_MB)."""
    global _disk_cache
    if _disk_cache is None:
        from .diskcache import BlobDiskCache

        _disk_cache = BlobDiskCache.from_settings()
    return _disk_cache


_PICKLE_PROTO = b"\x80"  # pickles of protocol 2 and later, the only ones Metaflow writes, start with PROTO


def _gunzip(data: bytes) -> bytes:
    # Artifacts are always stored gzipped and a pickle never starts with the gzip magic, so the blob's own bytes
    # say how to read it: no need to fetch the `_meta` sidecar for every artifact. (wbits 31: a gzip container)
    if data[:2] == _GZIP_MAGIC:
        return zlib.decompress(data, 31)
    if data[:1] != _PICKLE_PROTO:
        raise zlib.error("neither gzip nor a pickle")
    return data


class FlowDatastore:
    """One flow's part of a datastore root. Blobs of remote roots also go to the disk cache, decompressed, so a
    second process (or an offset read of a large `data.pickle`) reads a local file instead of downloading."""

    def __init__(self, storage: Storage, flow: str):
        self.storage = storage
        self.flow = flow
        self.remote = storage.local_path("") is None

    @classmethod
    def at(cls, root: str, flow: str) -> "FlowDatastore":
        datastore = _datastores.get((root, flow))
        if datastore is None:
            datastore = _datastores[(root, flow)] = cls(get_storage(root), flow)
        return datastore

    def blob_key(self, sha: str) -> str:
        """The storage key of a blob; `sha` comes from a record, so anything but a sha (`../x`) is refused."""
        if not is_sha(sha):
            raise ValueError("artifact sha %r of flow %s is not 40 lowercase hex digits" % (sha, self.flow))
        return "%s/data/%s/%s" % (self.flow, sha[:2], sha)

    # -- content-addressed blobs -------------------------------------------------------------------------------
    def stored_blob_size(self, sha: str) -> Optional[int]:
        """The serialized length of a blob known without a request: its bytes in the blob cache or, for remote
        storage, in the disk cache (a read or a prefetch has fetched it); for local storage, from its file alone:
        the file's size for a raw pickle; for a gzip file, the length it inflates to when that is at most
        `SIZE_INFLATE_LIMIT` (inflated to learn it, and kept in the blob cache for the read that usually follows).
        Never gzip's trailer alone: a hostile file's says anything (and only mod 2**32, of the last member). None
        when none of these tells (remote storage before the blob is fetched, a larger gzip file), or is missing."""
        data = blob_cache.get(sha)
        if data is not None:
            return len(data)
        if self.remote:
            return self._size_on_disk(sha)
        path = self.storage.local_path(self.blob_key(sha))
        if path is None:
            return None
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError:  # missing, or a link (ELOOP): the blob's read tells, and confines it
            return None
        with open(fd, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            small = size <= _gzip_size_bound(SIZE_INFLATE_LIMIT)
            stored = f.read(size if small else 2)  # a small file in one read: the render that follows needs it
        if stored[:2] != _GZIP_MAGIC:
            return size
        if not small:
            return None
        data = self._inflate_at_most(sha, stored, SIZE_INFLATE_LIMIT)
        return len(data) if data is not None else None

    def small_blob(self, sha: str, limit: int) -> Optional[bytes]:
        """The serialized bytes of a blob when they are at most `limit` long, else None; reads at most about
        `limit` stored bytes and inflates at most `limit` + 1, whatever the blob holds or claims (for questions
        asked at `stat` time: a small file can inflate to gigabytes); None too for a corrupt blob."""
        data = blob_cache.get(sha)
        if data is None and self.remote and disk_cache().path(sha) is not None:
            return self._small_cached_on_disk(sha, limit)
        if data is not None:
            return data if len(data) <= limit else None
        bound = _gzip_size_bound(limit)
        with self.storage.open(self.blob_key(sha)) as f:
            stored = f.read(bound + 1)
        if len(stored) > bound:
            return None  # even a stored pickle, or gzip of incompressible bytes, would be longer than `limit`
        if stored[:2] != _GZIP_MAGIC:
            return stored if len(stored) <= limit and stored[:1] == _PICKLE_PROTO else None
        return self._inflate_at_most(sha, stored, limit)

    @staticmethod
    def _size_on_disk(sha: str) -> Optional[int]:
        try:
            return os.stat(disk_cache().path(sha) or "").st_size
        except OSError:  # not cached, or evicted by another process meanwhile
            return None

    def _small_cached_on_disk(self, sha: str, limit: int) -> Optional[bytes]:
        try:
            with open(disk_cache().path(sha) or "", "rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:  # evicted by another process meanwhile
            return None
        return data if len(data) <= limit else None

    def _inflate_at_most(self, sha: str, stored: bytes, limit: int) -> Optional[bytes]:
        """A gzip file's content when it is one member of at most `limit` bytes (checked by its CRC and length),
        kept in the blob cache; None when it is longer (or has more members: their total would need inflating), or
        corrupt."""
        inflater = zlib.decompressobj(31)
        try:
            data = inflater.decompress(stored, limit + 1)
        except zlib.error:  # corrupt: the full read, later, reports it
            return None
        if len(data) > limit or not inflater.eof or inflater.unused_data:
            return None
        blob_cache.put(sha, data)
        return data

    def load_blob(self, sha: str) -> bytes:
        """The serialized bytes of an artifact blob (gunzipped)."""
        data = blob_cache.get(sha)
        if data is None:
            data = self._cached_on_disk(sha)
            if data is None:
                data = self._decompress(sha, self.storage.read(self.blob_key(sha)))
            blob_cache.put(sha, data)
        return data

    def load_blob_or_stream(self, sha: str, stream_above: int) -> Union[bytes, BinaryIO]:
        """The serialized bytes of a blob, or a stream of them when they are larger than `stream_above` (so a
        large value is unpickled without its bytes in memory; such blobs are not cached in memory)."""
        data = blob_cache.get(sha)
        if data is not None:
            return data
        key = self.blob_key(sha)
        local = self.storage.local_path(key) if not self.remote else disk_cache().path(sha)
        if local is not None and os.stat(local).st_size > stream_above:
            return self.open_blob(sha)
        data = self._cached_on_disk(sha)
        if data is None:
            stored = self.storage.read(key)
            # gzip's trailer holds the uncompressed size (mod 2**32): a small file can still be a huge value
            if stored[:2] == _GZIP_MAGIC and int.from_bytes(stored[-4:], "little") > stream_above:
                import gzip

                return gzip.GzipFile(fileobj=io.BytesIO(stored), mode="rb")
            data = self._decompress(sha, stored)
        blob_cache.put(sha, data)
        return data

    def _decompress(self, sha: str, stored: bytes) -> bytes:
        try:
            data = _gunzip(stored)
        except (EOFError, zlib.error) as exc:
            raise IOError("blob %s of flow %s is corrupt: %s" % (sha, self.flow, exc)) from exc
        if self.remote:
            disk_cache().put_stream(sha, [data])
        return data

    def _cached_on_disk(self, sha: str) -> Optional[bytes]:
        path = disk_cache().path(sha) if self.remote else None
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:  # evicted by another process meanwhile
            return None

    def prefetch(self, shas: List[str], max_stored: int = PREFETCH_STORED_LIMIT) -> None:
        """Start fetching the blobs that are not cached nor being fetched yet, in parallel (remote storage only,
        through its `start_reads`), into the caches, and return: a read of one of them waits for that blob
        alone (`BlobCache.get`). Each is decompressed and written to the disk cache on the thread that fetched
        it. Best effort: a failure here only means the blob is fetched again when read (and fails then, for that
        artifact only); so is a blob stored in more than `max_stored` bytes, of which no more is downloaded."""
        if not self.remote:
            return
        missing = {
            self.blob_key(sha): sha
            for sha in shas
            if is_sha(sha) and not blob_cache.fetching(sha, max_stored) and blob_cache.get(sha, wait=False) is None
            and not disk_cache().path(sha)
        }
        started = self.storage.start_reads(
            missing, then=lambda key, stored: self._prefetched(missing[key], stored), max_bytes=max_stored)
        for key, future in started.items():
            blob_cache.track(missing[key], future, max_stored)

    def _prefetched(self, sha: str, stored: bytes) -> None:
        """Cache a prefetched blob, inflated only when it is at most `PREFETCH_INFLATE_LIMIT` long: prefetching
        runs, on several threads, in whatever process reads (the mount's daemon) for blobs nobody asked for yet,
        and a small hostile file can inflate to gigabytes. A larger blob is fetched again when it is read."""
        if stored[:2] != _GZIP_MAGIC:
            blob_cache.put(sha, self._decompress(sha, stored))
            return
        data = self._inflate_at_most(sha, stored, PREFETCH_INFLATE_LIMIT)
        if data is not None:
            disk_cache().put_stream(sha, [data])

    def open_blob(self, sha: str) -> BinaryIO:
        """A stream of an artifact blob's serialized bytes, decompressed on the fly (for large blobs); from remote
        storage it is decompressed into the disk cache first, so reads at any offset are local."""
        if self.remote:
            path = disk_cache().path(sha)
            if path is None:
                with self._open_stored(sha) as stream:
                    path = disk_cache().put_stream(sha, iter(lambda: stream.read(_CHUNK), b""))
            if path is not None:  # else the disk cache cannot be written: stream from the backend
                return open(path, "rb")
        return self._open_stored(sha)

    def _open_stored(self, sha: str) -> BinaryIO:
        import gzip

        f = self.storage.open(self.blob_key(sha))
        head = f.read(2)
        f.seek(0)
        if head == _GZIP_MAGIC:
            return gzip.GzipFile(fileobj=f, mode="rb")
        if head[:1] != _PICKLE_PROTO:
            f.close()
            raise IOError("blob %s of flow %s is corrupt: neither gzip nor a pickle" % (sha, self.flow))
        return f

    def load_raw_blob(self, sha: str) -> bytes:
        """A blob stored with `cas_raw` (code packages) or gzipped, as its attributes say."""
        key = self.blob_key(sha)
        data = self.storage.read(key)
        attrs = self.storage.user_attributes(key) or {}
        return data if attrs.get("cas_raw") else zlib.decompress(data, 31)

    # -- per-attempt task files --------------------------------------------------------------------------------
    def task_key(self, run: str, step: str, task: str, name: str) -> str:
        return "/".join((self.flow, run, step, task, name))

    def latest_started_attempt(self, run: str, step: str, task: str) -> Optional[int]:
        """The attempt Metaflow's datastore calls current: the last `<A>.attempt.json` of the first run of them."""
        names = set(self.storage.list("/".join((self.flow, run, step, task))))
        latest = None
        for attempt in range(MAX_ATTEMPTS):
            if "%d.attempt.json" % attempt in names:
                latest = attempt
            elif latest is not None:
                break
        return latest

    def attempt_index(self, run: str, step: str, task: str, attempt: int) -> Optional[dict]:
        """`<A>.data.json` ({"objects": {name: sha}, "info": {name: {size, type, encoding}}}) of a done attempt
        (immutable once `<A>.DONE.lock` exists, so kept)."""
        index = self.cached_index(run, step, task, attempt)
        if index is None:
            keys = self._index_keys(run, step, task, attempt)
            index = self._keep_index(run, step, task, attempt, self.storage.read_many(keys), keys)
        return index

    def prefetch_indexes(self, attempts: List[Tuple[str, str, str, int]]) -> None:
        """Fetch the `(run, step, task, attempt)` indexes that are not cached yet in parallel (remote storage
        only). Best effort, like `prefetch`: what fails here is fetched again, and reported, when read."""
        missing = [a for a in attempts if self.cached_index(*a) is None] if self.remote else []
        if not missing:
            return
        keys = {a: self._index_keys(*a) for a in missing}
        try:
            found = self.storage.read_many([key for pair in keys.values() for key in pair])
        except OSError:
            return
        for attempt, pair in keys.items():
            try:
                self._keep_index(*attempt, found, pair)
            except ValueError:  # a corrupt index: its own read reports it
                pass

    def read_ahead_index(self, run: str, step: str, task: str, attempt: int) -> None:
        """A hint: the index of this attempt is about to be read (`Storage.read_ahead`), unless it is kept."""
        if self.cached_index(run, step, task, attempt) is None:
            self.storage.read_ahead(self._index_keys(run, step, task, attempt))

    def _index_keys(self, run: str, step: str, task: str, attempt: int) -> Tuple[str, str]:
        return tuple(self.task_key(run, step, task, "%d.%s" % (attempt, name)) for name in ("DONE.lock", "data.json"))

    def cached_index(self, run: str, step: str, task: str, attempt: int) -> Optional[dict]:
        """A done attempt's index kept by this process or, for remote storage, by the disk cache; else None."""
        key = (self.storage.root, self.flow, run, step, task, attempt)
        with _attempt_indexes_lock:
            index = _attempt_indexes.get(key)
        if index is None and self.remote:
            path = disk_cache().path(_index_cache_key(key))
            try:
                with open(path or "", "rb") as f:
                    index = records.loads(f.read())
            except (OSError, ValueError):  # not cached (or evicted meanwhile), or not ours to trust: read it
                return None
            _keep_attempt_index(key, index)
        return index

    def _keep_index(
        self, run: str, step: str, task: str, attempt: int, found: Dict[str, Optional[bytes]], keys: Tuple[str, str]
    ) -> Optional[dict]:
        done, data = (found.get(key) for key in keys)
        if done is None or data is None:
            return None
        index = records.loads(data)
        key = (self.storage.root, self.flow, run, step, task, attempt)
        _keep_attempt_index(key, index)
        if self.remote:  # a done attempt's index never changes: the next process reads it from disk
            disk_cache().put_stream(_index_cache_key(key), [data])
        return index

    def log_keys(self, run: str, step: str, task: str, attempt: int, stream: str) -> List[str]:
        return [self.task_key(run, step, task, "%d.%s_%s.log" % (attempt, source, stream)) for source in LOG_SOURCES]

    def logs(self, run: str, step: str, task: str, attempt: int, stream: str) -> List[bytes]:
        """The mflog files of one attempt and stream, runtime source first ('' for a missing file)."""
        keys = self.log_keys(run, step, task, attempt, stream)
        found = self.storage.read_many(keys)
        return [found.get(k) or b"" for k in keys]

    def log_size(self, run: str, step: str, task: str, attempt: int, stream: str) -> int:
        total = 0
        for key in self.log_keys(run, step, task, attempt, stream):
            try:
                total += self.storage.size(key)
            except FileNotFoundError:
                pass
        return total


class CardStore:
    """Metaflow cards of one task: `<ds-root>/mf.cards/<F>/runs/<R>/steps/<S>/tasks/<T>/cards/*.html`
    (or the pre-2022 path without `steps/<S>/`).

    Most tasks have no cards, so whether a task has a card directory is answered from a listing of its step's
    (and run's) card task directories, made once per TTL: listing a step of 1000 tasks costs two listings, not two
    per task (on S3, LIST requests)."""

    def __init__(self, ds_root: str, flow: str, run: str, step: str, task: str):
        self.storage = get_storage(ds_root.rstrip("/") + "/mf.cards")
        self.prefix, self.names = "", []
        run_key = "/".join((flow, "runs", run))
        for tasks_key in (run_key + "/steps/" + step + "/tasks", run_key + "/tasks"):
            if task in self._task_ids(tasks_key):
                prefix = "/".join((tasks_key, task, "cards"))
                names = sorted(n for n in self.storage.list(prefix) if n.endswith(".html"))
                if names:
                    self.prefix, self.names = prefix, names
                    return

    def _task_ids(self, tasks_key: str) -> FrozenSet[str]:
        return _card_task_listings.get((self.storage.root, tasks_key), lambda: frozenset(self.storage.list(tasks_key)))

    def _key(self, name: str) -> str:
        if name not in self.names:
            raise FileNotFoundError(name)
        return self.prefix + "/" + name

    def read(self, name: str) -> bytes:
        return self.storage.read(self._key(name))

    def size(self, name: str) -> int:
        return self.storage.size(self._key(name))


def root_of_location(location: str) -> str:
    """The datastore root named by an artifact `location`: ':root:<root>', or an old full blob URL."""
    if location.startswith(":root:"):
        return location[len(":root:"):]
    return root_from_blob_url(location)


def root_from_blob_url(url: str) -> str:
    """The datastore root of an old-style full blob location `<root>/<F>/data/<xx>/<sha>`."""
    parts = url.rstrip("/").split("/")
    return "/".join(parts[:-4])


class AllowedRoots:
    """The datastore roots the records read with metadata root `home` may name, and where IncludeFile contents may
    be read from. Records are written by whoever writes the datastore, so a `location`, `ds-root` or code package
    naming another root, or an IncludeFile url naming any file, is refused unless the user configured it:

      * the configured datastore: `home` (the local metadata's `.metaflow`; compared after resolving links),
        else (a metadata service) the local root Metaflow would use; and METAFLOW_DATASTORE_SYSROOT_S3;
      * MFFS_ALLOWED_ROOTS: comma-separated roots, each allowing itself and everything below it, for teams whose
        runs span several buckets or directories (`s3://other-bucket,/shared/.metaflow`);
      * IncludeFile contents: below those roots, or below Metaflow's datatools roots (DATATOOLS_S3ROOT,
        DATATOOLS_LOCALROOT, default `<the parent of .metaflow>/data`) where IncludeFile uploads them.

    Settings are read once per metadata provider (`of`), as Metaflow reads its configuration once.
    """

    #: id(provider) -> (provider, its roots); the provider is kept so that its id is not reused meanwhile
    _memo: Dict[int, Tuple[Any, "AllowedRoots"]] = {}

    def __init__(self, home: Optional[str]):
        local = home or find_local_root()
        s3 = setting("DATASTORE_SYSROOT_S3")
        self.exact = frozenset(r for r in (normal_root(local or ""), normal_root(s3 or "")) if r)
        extra = [normal_root(r.strip()) for r in os.environ.get("MFFS_ALLOWED_ROOTS", "").split(",") if r.strip()]
        self.below = tuple(r for r in extra if r)
        datatools = [setting("DATATOOLS_S3ROOT"), setting("DATATOOLS_LOCALROOT")]
        if local and os.path.basename(local.rstrip("/")) == ".metaflow":
            datatools.append(os.path.join(os.path.dirname(local.rstrip("/")), "data"))
        #: (root as written, root as compared) of every place IncludeFile contents may be read from
        self.content = [(r, normal_root(r)) for r in [*self.exact, *self.below, *(d for d in datatools if d)]]
        self._answers: Dict[str, Union[str, OutsideDatastore]] = {}

    @classmethod
    def of(cls, provider: Any) -> "AllowedRoots":
        """The allowed roots for the records of a metadata provider (one lookup: asked for every artifact)."""
        entry = cls._memo.get(id(provider))
        if entry is None:
            if len(cls._memo) >= 8:  # providers are few: one, or one per metadata() switch
                cls._memo.clear()
            entry = cls._memo[id(provider)] = (provider, cls(provider.datastore_root()))
        return entry[1]

    @classmethod
    def confine(cls, root: str, provider: Any) -> str:
        """`of(provider).check(root)`, with a root already allowed answered at once: asked for every artifact read."""
        entry = cls._memo.get(id(provider))
        answer = entry[1]._answers.get(root) if entry is not None else None
        return answer if type(answer) is str else cls.of(provider).check(root)

    def _allows(self, normal: Optional[str]) -> bool:
        return normal is not None and (
            normal in self.exact or any(normal == r or normal.startswith(r + "/") for r in self.below)
        )

    def check(self, root: str) -> str:
        """`root` (a datastore root a record names) when it is allowed, else OutsideDatastore."""
        answer = self._answers.get(root)
        if answer is None:
            if self._allows(normal_root(root)):
                answer = root.rstrip("/") or root
            else:
                unknown = _unknown_scheme(root)
                answer = OutsideDatastore(
                    "datastore root %r named by a record cannot be read: %s" % (root, unknown) if unknown else
                    "datastore root %r named by a record is not the configured datastore (%s); list it in "
                    "MFFS_ALLOWED_ROOTS to read it" % (root, ", ".join(sorted(self.exact)) or "none")
                )
            if len(self._answers) >= 10_000:  # roots are few; a datastore naming many must not grow this
                self._answers.clear()
            self._answers[root] = answer
        if isinstance(answer, OutsideDatastore):
            raise OutsideDatastore(str(answer))
        return answer

    def read_url(self, url: str) -> bytes:
        """The bytes at an IncludeFile url (a plain path or a url of a scheme in `storage.SCHEMES`) below an allowed
        root, read through that root's storage (so links are confined too); anything else is OutsideDatastore."""
        unknown = _unknown_scheme(url)
        if unknown:
            raise OutsideDatastore("IncludeFile url %r cannot be read: %s" % (url, unknown))
        scheme, path = split_scheme(url)
        if scheme == LOCAL_SCHEME:
            path = os.path.normpath(path) if os.path.isabs(path) else ""
        for written, normal in self.content:
            for base in (written, normal):
                if base and path.startswith(base.rstrip("/") + "/"):
                    return get_storage(base).read(path[len(base.rstrip("/")) + 1:])
        raise OutsideDatastore("IncludeFile url %r is not in the datastore; list its root in MFFS_ALLOWED_ROOTS to "
                               "read it" % url)


def _unknown_scheme(url: str) -> Optional[str]:
    """Why `url` (a root or IncludeFile url) names no registered storage backend; None when one serves it."""
    try:
        split_scheme(url)
    except UnknownScheme as exc:
        return str(exc)
    return None


def confine_root(root: str, provider: Any) -> str:
    """`root`, a datastore root named by a record of the metadata `provider`, when the user allows reading it (see
    AllowedRoots); else OutsideDatastore. Every datastore root the client reads comes through here."""
    return AllowedRoots.confine(root, provider)


def read_url(url: str, provider: Any) -> bytes:
    """Bytes of an IncludeFile's content, only from where the datastore keeps them (see AllowedRoots)."""
    return AllowedRoots.of(provider).read_url(url)
