"""DataArtifact: one artifact of a task, its value (trusted or restricted unpickling, or only when a cheap scalar),
its stored type and sizes, and its serialized bytes for the filesystem view."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, BinaryIO, List, Optional, Tuple

from .base import MetaflowObject
from .context import get_trust_pickles
from .datastore import (
    SIZE_FETCH_LIMIT,
    SIZE_INFLATE_LIMIT,
    FlowDatastore,
    blob_cache,
    confine_root,
    disk_cache,
    root_of_location,
)
from .exceptions import MetaflowInternalError, MetaflowNotFound
from .peers import Components, peer_tasks
from .values import (
    DESCRIPTOR_LIMIT,
    INCLUDED_FILE_TYPE,
    NOT_A_SCALAR,
    SCALAR_MAX_OPCODES,
    SCALAR_OPCODES,
    SCALAR_TYPES,
    included_file_descriptor,
    included_file_size,
    load_value,
    loads_naming_only,
)

if TYPE_CHECKING:  # imported when first needed
    from datetime import datetime


class DataArtifact(MetaflowObject):
    """One artifact of a task (of the task's latest finished attempt, or of `attempt`)."""

    _NAME = "artifact"
    _DEPTH = 5
    _PATHSPEC_FORM = "DataArtifact('FlowName/RunID/StepName/TaskID/ArtifactName')"

    def _fetch(self, ids: List[str]) -> Optional[dict]:
        return self._provider.artifact(*ids, attempt=self._attempt)

    @staticmethod
    def _id_of(record: dict) -> str:
        return record["name"]

    def _datastore(self) -> FlowDatastore:
        datastore = self.__dict__.get("_datastore_memo")
        if datastore is None:  # a listing asks each artifact twice (its stored type, then its attempt's index)
            location = confine_root(root_of_location(self._object["location"] or ""), self._provider)
            datastore = self._datastore_memo = FlowDatastore.at(location, self._components[0])
        return datastore

    @property
    def sha(self) -> str:
        return self._object["sha"]

    @property
    def finished_at(self) -> datetime:
        return self.created_at

    @property
    def encoding(self) -> str:
        """The serializer encoding ('pickle-v4', 'gzip+pickle-v2', ...)."""
        return self._object.get("content_type") or "gzip+pickle-v2"

    def _check_encoding(self) -> None:
        if not self.encoding.endswith(("pickle-v2", "pickle-v4")):
            raise MetaflowInternalError("Artifact %s has an unsupported encoding '%s'" % (self.pathspec, self.encoding))

    def _serialized(self) -> bytes:
        self._check_encoding()
        return self._datastore().load_blob(self.sha)

    def _peer_tasks(self) -> List[Components]:
        """This artifact's task and the ones a loop reading this artifact reaches next (see client.peers). A guess:
        records that cannot be read while guessing leave it empty; the reads themselves report them."""
        try:
            return peer_tasks(self.parent, self.id)
        except Exception:  # noqa: BLE001 - the guess reads other tasks' records, which may be missing or corrupt
            return []

    def _peer_shas(self) -> List[str]:
        """The blobs of this artifact in the tasks of `_peer_tasks` (its own among them); empty: no guess."""
        attempt = self._attempt
        records = [self._provider.artifact(*t, self.id, attempt=attempt) for t in self._peer_tasks()]
        return [r["sha"] for r in records if r is not None]

    def _prefetch_for_siblings(self, ds: FlowDatastore) -> None:
        """Reading artifact X of a task that a loop reached: fetch X of the tasks the loop reaches next too, in
        parallel, since such loops read the same artifact from each (remote storage only)."""
        if not ds.remote or blob_cache.get(self.sha) is not None or disk_cache().path(self.sha):
            return
        ds.prefetch(self._peer_shas())

    def load(self, trusted: Optional[bool] = None) -> Any:
        """The value; `trusted=False` loads only allow-listed data types (see client.unpickle), None follows
        `trust_pickles()`. A large blob that is not cached is unpickled from a stream, so its serialized bytes and
        the value are not both in memory."""
        if trusted is None:
            trusted = get_trust_pickles()
        ds = self._datastore()
        self._prefetch_for_siblings(ds)
        self._check_encoding()
        return load_value(ds, self.sha, self.id, trusted)

    def stored_at(self) -> Tuple[str, str, str]:
        """(datastore root, flow, sha): where the value is stored, for `load_stored` in another process (the
        mount's sandbox), which then reads exactly the blob this artifact's records name."""
        self._check_encoding()
        ds = self._datastore()
        return ds.storage.root, ds.flow, self.sha

    def load_scalar(self, max_bytes: int) -> Any:
        """The value when it is a scalar (int, float, bool, None, str, bytes) whose pickle is at most `max_bytes`
        long, else `NOT_A_SCALAR`. Provably cheap whatever the blob holds: at most about `max_bytes` are read and
        inflated, and the pickle's opcodes are checked before it is unpickled (a handful, none naming a global or
        building a container). So the mount renders the common small number or string in-process and leaves
        everything else to its sandbox."""
        ds = self._datastore()
        self._prefetch_for_siblings(ds)
        self._check_encoding()
        data = ds.small_blob(self.sha, max_bytes)
        if data is None:
            return NOT_A_SCALAR
        try:
            value = loads_naming_only(data, {}, SCALAR_OPCODES, SCALAR_MAX_OPCODES)
        except Exception:  # noqa: BLE001 - not a scalar, or a broken pickle: the sandbox loads and reports it
            return NOT_A_SCALAR
        return value if type(value) in SCALAR_TYPES else NOT_A_SCALAR

    @property
    def data(self) -> Any:
        return self.load()

    def _attempt_info(self, attempt: Optional[int] = None) -> dict:
        """This artifact's entry in an attempt's `<A>.data.json`: by default the attempt Metaflow's datastore
        considers current (the latest started one, which must be done: what `size` reports)."""
        flow, run, step, task, name = self._components
        ds = self._datastore()
        if attempt is None:
            attempt = self._attempt if self._attempt is not None else ds.latest_started_attempt(run, step, task)
        index = ds.attempt_index(run, step, task, attempt) if attempt is not None else None
        if index is None:
            raise MetaflowNotFound("No completed attempts of the task was found for task '%s'" % self.parent.pathspec)
        return (index.get("info") or {}).get(name) or {}

    def _own_info(self) -> dict:
        """The data.json entry of the attempt this artifact's record belongs to (its blob, its stored type; a
        done attempt's, so kept on the object)."""
        info = self.__dict__.get("_own_info_memo")
        if info is None:
            ds, attempt = self._datastore(), self._object["attempt_id"]
            if ds.remote and ds.cached_index(*self._components[1:4], attempt) is None:
                # A listing of a step's tasks (the mount's) asks each one for its artifacts' stored types. The next
                # tasks are taken to be at the same attempt, which costs no request to learn: a wrong guess only
                # fetches an index that is not read.
                ds.prefetch_indexes([(*t[1:4], attempt) for t in self._peer_tasks()])
            info = self._own_info_memo = self._attempt_info(attempt)
        return info

    @property
    def size(self) -> int:
        info = self._attempt_info()
        if info.get("type") == INCLUDED_FILE_TYPE:
            self._check_encoding()
            data = self._datastore().small_blob(self.sha, DESCRIPTOR_LIMIT)
            if data is None:
                raise MetaflowInternalError("Artifact %s is not an IncludeFile descriptor (too large)" % self.pathspec)
            return included_file_size(included_file_descriptor(data))
        return info.get("size", 0)

    # -- for the filesystem view: raw bytes without unpickling ---------------------------------------------------
    @functools.cached_property
    def blob_size(self) -> Optional[int]:
        """Length of the serialized (pickle) bytes, known without unpickling (kept: a blob never changes, and the
        mount asks once per file of the artifact's directory): the blob's own size (local storage, inflating at
        most `SIZE_INFLATE_LIMIT` bytes; a cached blob), else, from remote storage, the blob's when it is stored
        in at most SIZE_FETCH_LIMIT bytes (fetched with the same blob of the tasks a loop reads next, and inflated
        within a prefetch's bound, as a read does: the render at stat that usually follows then needs no request,
        nor does the size need the attempt's index), else the size its attempt's index records, else the blob's
        when it inflates within `SIZE_INFLATE_LIMIT`; None when none of these tells (a larger blob without a
        recorded size: the mount then shows size 0 until the file is read). Stored sizes are not trusted further
        than that: the gzip trailer of a hostile blob can say anything."""
        ds = self._datastore()
        stored = ds.stored_blob_size(self.sha)
        if stored is None and ds.remote:
            ds.prefetch(self._peer_shas() or [self.sha], max_stored=SIZE_FETCH_LIMIT)
            stored = ds.stored_blob_size(self.sha)
        if stored is not None:
            return stored
        info = self._own_info()
        if "size" in info and info.get("type") != INCLUDED_FILE_TYPE:
            return info["size"]
        data = self._datastore().small_blob(self.sha, SIZE_INFLATE_LIMIT)
        return len(data) if data is not None else None

    @property
    def type_name(self) -> Optional[str]:
        """The value's type as stored at save time, e.g. "<class 'int'>" (no unpickling)."""
        return self._own_info().get("type")

    def open_blob(self) -> BinaryIO:
        """A stream of the serialized bytes, decompressed on the fly: large blobs are never held whole."""
        return self._datastore().open_blob(self.sha)
