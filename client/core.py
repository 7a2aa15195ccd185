"""The object model: Metaflow's Client API (Metaflow → Flow → Run → Step → Task → DataArtifact), from scratch.

Semantics follow metaflow.client.core 2.19 exactly (reference §4): pathspecs, namespaces and tags, newest-first
iteration, attempts, `successful/finished`, metadata, logs, code packages, parent/child tasks and errors.
Everything is read through a metadata provider (wrapped by `client.cache.CachingProvider`) and the datastore
layer; objects read lazily, so iterating a step of 1000 tasks costs one listing until a task is looked into.
"""
from __future__ import annotations

import functools
import json
from collections import namedtuple
from typing import TYPE_CHECKING, Any, BinaryIO, Dict, FrozenSet, Iterator, List, Optional, Tuple

from .cache import KNOWN_VALUES
from .code import MetaflowCode
from .context import _current_provider, get_metadata, get_namespace, get_trust_pickles
from .datastore import (
    MAX_ATTEMPTS,
    SIZE_INFLATE_LIMIT,
    CardStore,
    FlowDatastore,
    blob_cache,
    confine_root,
    disk_cache,
    root_of_location,
)
from .exceptions import (
    MetaflowInternalError,
    MetaflowInvalidPathspec,
    MetaflowNamespaceMismatch,
    MetaflowNotFound,
)
from .values import (
    _DESCRIPTOR_LIMIT,
    _INCLUDED_FILE_TYPE,
    _SCALAR_MAX_OPCODES,
    _SCALAR_OPCODES,
    _SCALAR_TYPES,
    NOT_A_SCALAR,
    _included_file_descriptor,
    _included_file_size,
    _internal_value,
    _load_value,
    _loads_naming_only,
)

if TYPE_CHECKING:  # imported when first needed
    from datetime import datetime

Metadata = namedtuple("Metadata", ["name", "value", "created_at", "type", "task"])
#: how many sibling tasks' copies of an artifact one read fetches ahead from remote storage
PREFETCH_WINDOW = 64


def _created_at(record: dict) -> "datetime":
    from datetime import datetime

    return datetime.fromtimestamp(record["ts_epoch"] / 1000.0)


# -- the objects --------------------------------------------------------------------------------------------------
class MetaflowObject:
    """Base of Flow, Run, Step, Task and DataArtifact: an object addressed by its pathspec."""

    _NAME = "base"
    _DEPTH = 0
    _CHILD: Optional[type] = None
    _PARENT: Optional[type] = None
    _PATHSPEC_FORM = ""

    def __init__(
        self,
        pathspec: Optional[str] = None,
        attempt: Optional[int] = None,
        _object: Optional[dict] = None,
        _parent: Optional["MetaflowObject"] = None,
        _namespace_check: bool = True,
        _current_namespace: Optional[str] = None,
        _run_tags: Optional[Tuple[List[str], List[str]]] = None,
    ):
        self._provider = _current_provider()
        self._parent = _parent
        self._attempt = attempt
        self._current_namespace = _current_namespace or get_namespace()
        self._namespace_check = _namespace_check and self._current_namespace is not None
        if attempt is not None:
            if self._NAME not in ("task", "artifact"):
                raise MetaflowNotFound("Attempts can only be specified for Task or DataArtifact")
            try:
                self._attempt = int(attempt)
            except ValueError:
                raise MetaflowNotFound("Attempt can only be an integer")
            if self._attempt < 0:
                raise MetaflowNotFound("Attempt can only be non-negative")
            if self._attempt >= MAX_ATTEMPTS:
                raise MetaflowNotFound("Attempt can only be smaller than %d" % MAX_ATTEMPTS)
        if _object is None:
            ids = pathspec.split("/") if pathspec else []
            if len(ids) != self._DEPTH:
                raise MetaflowInvalidPathspec("Expects %s" % self._PATHSPEC_FORM)
            self.id = ids[-1]
            self._pathspec = pathspec
            self._components = ids
            self._object = self._fetch(ids) if all(ids) else None
            if self._object is None:
                raise MetaflowNotFound("%s does not exist" % self)
        else:
            self._object = _object
            self.id = self._id_of(_object)
            self._components = (_parent._components + [self.id]) if _parent is not None else pathspec.split("/")
            self._pathspec = "/".join(self._components)
        if _run_tags is None and "tags" in self._object and self._DEPTH >= 3:
            _run_tags = (self._object["tags"], self._object["system_tags"])
        self._run_tags = _run_tags
        # Below a run every object has the run's tags: a child of a checked step or task passes as its parent did.
        inherits_check = _parent is not None and _parent._DEPTH >= 2
        if self._namespace_check and not inherits_check and not self._is_in_namespace(self._current_namespace):
            raise MetaflowNamespaceMismatch(self._current_namespace)

    # -- reads: provider methods are named after the levels (run/runs, step/steps, ...) ------------------------
    def _fetch(self, ids: List[str]) -> Optional[dict]:
        return getattr(self._provider, self._NAME)(*ids)

    def _children(self) -> List[dict]:
        return getattr(self._provider, self._CHILD._NAME + "s")(*self._components)

    def _child(self, id: str) -> Optional[dict]:
        return getattr(self._provider, self._CHILD._NAME)(*self._components, id)

    @staticmethod
    def _id_of(record: dict) -> str:
        raise NotImplementedError

    def _iter_filter(self, id: str) -> bool:
        return True

    # -- tags and namespace ----------------------------------------------------------------------------------
    def _tag_lists(self) -> Tuple[List[str], List[str]]:
        """(user tags, system tags) of the run this object belongs to (the run's are authoritative)."""
        if self._run_tags is None:
            run = self._provider.run(*self._components[:2])
            self._run_tags = (run["tags"], run["system_tags"]) if run else ([], [])
        return self._run_tags

    @property
    def tags(self) -> FrozenSet[str]:
        user, system = self._tag_lists()
        return frozenset(system) | frozenset(user)

    @property
    def user_tags(self) -> FrozenSet[str]:
        return frozenset(self._tag_lists()[0])

    @property
    def system_tags(self) -> FrozenSet[str]:
        return frozenset(self._tag_lists()[1])

    def is_in_namespace(self) -> bool:
        return self._is_in_namespace(get_namespace())

    def _is_in_namespace(self, ns: Optional[str]) -> bool:
        return ns is None or ns in self.tags

    # -- identity --------------------------------------------------------------------------------------------
    @property
    def pathspec(self) -> str:
        return self._pathspec

    @property
    def path_components(self) -> List[str]:
        return list(self._components)

    @property
    def created_at(self) -> datetime:
        return _created_at(self._object)

    @property
    def parent(self) -> Optional["MetaflowObject"]:
        if self._PARENT is None:
            return None
        if self._parent is None:
            attempt = self._attempt if self._NAME == "artifact" else None
            self._parent = self._PARENT("/".join(self._components[:-1]), attempt=attempt, _namespace_check=False)
        return self._parent

    @property
    def origin_pathspec(self) -> Optional[str]:
        parent = self.parent.origin_pathspec if self.parent is not None else None
        return "%s/%s" % (parent, self.id) if parent else None

    def __str__(self) -> str:
        if self._attempt is not None:
            return "%s('%s', attempt=%d)" % (self.__class__.__name__, self.pathspec, self._attempt)
        return "%s('%s')" % (self.__class__.__name__, self.pathspec)

    __repr__ = __str__

    # -- children --------------------------------------------------------------------------------------------
    def _wrap(self, record: dict) -> "MetaflowObject":
        return self._CHILD(
            attempt=self._attempt,
            _object=record,
            _parent=self,
            _namespace_check=self._namespace_check,
            _current_namespace=self._current_namespace if self._namespace_check else None,
            _run_tags=self._tag_lists() if self._DEPTH >= 2 else None,
        )

    def __iter__(self) -> Iterator["MetaflowObject"]:
        records = self._children()
        if self._namespace_check and self._DEPTH >= 2 and self._current_namespace not in self.tags:
            records = []  # below a run every child carries the run's tags: all in, or all out
        children = [self._wrap(r) for r in records if self._iter_filter(self._CHILD._id_of(r))]
        # Newest first; a stable sort keeps the provider's order for equal times, as Metaflow does.
        children.sort(key=lambda c: c._object["ts_epoch"], reverse=True)
        for position, child in enumerate(children):
            child._siblings, child._position = children, position  # lets reads prefetch for what comes next
        return iter(children)

    def _filtered_children(self, *tags: str) -> Iterator["MetaflowObject"]:
        for child in self:
            if all(tag in child.tags for tag in tags):
                yield child

    def __getitem__(self, id: str) -> "MetaflowObject":
        record = self._child(id) if id and "/" not in id else None
        if record is None:
            raise KeyError(id)
        return self._wrap(record)

    def __contains__(self, id: str) -> bool:
        return bool(id) and "/" not in id and self._child(id) is not None

    def _ipython_key_completions_(self) -> List[str]:
        return [child.id for child in self]

    # -- pickling compatible with Metaflow's client objects ------------------------------------------------------
    def __getstate__(self) -> dict:
        return {
            "version": "2.12.27",
            "data": [self.pathspec, self._attempt, get_metadata(), self._current_namespace, self._namespace_check],
        }

    def __setstate__(self, state: dict) -> None:
        if "version" in state and "data" in state:
            data = state["data"]
            pathspec, attempt = data[0], data[1]
            ns_check = data[-1]
            ns = data[-2] if len(data) >= 4 else None
        else:
            pathspec, attempt = state.get("_pathspec"), state.get("_attempt")
            ns_check, ns = state.get("_namespace_check", False), None
        self.__init__(pathspec=pathspec, attempt=attempt, _namespace_check=ns_check, _current_namespace=ns)


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

    def _peer_tasks(self) -> List["Task"]:
        """This artifact's task and the ones a loop reaches next (see Task._peers)."""
        task = self._parent
        return task._peers() if isinstance(task, self._PARENT) else []

    def _prefetch_for_siblings(self, ds: FlowDatastore) -> None:
        """Reading artifact X of a task that a loop reached (a task of an iterated step, or the end task of an
        iterated run): fetch X of the tasks the loop reaches next too, in parallel, since such loops read the same
        artifact from each (remote storage only)."""
        if not ds.remote or blob_cache.get(self.sha) is not None or disk_cache().path(self.sha):
            return
        records = [self._provider.artifact(*t._components, self.id, attempt=t._attempt) for t in self._peer_tasks()]
        ds.prefetch([r["sha"] for r in records if r is not None])

    def load(self, trusted: Optional[bool] = None) -> Any:
        """The value; `trusted=False` loads only allow-listed data types (see client.unpickle), None follows
        `trust_pickles()`. A large blob that is not cached is unpickled from a stream, so its serialized bytes and
        the value are not both in memory."""
        if trusted is None:
            trusted = get_trust_pickles()
        ds = self._datastore()
        self._prefetch_for_siblings(ds)
        self._check_encoding()
        return _load_value(ds, self.sha, self.id, trusted)

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
            value = _loads_naming_only(data, {}, _SCALAR_OPCODES, _SCALAR_MAX_OPCODES)
        except Exception:  # noqa: BLE001 - not a scalar, or a broken pickle: the sandbox loads and reports it
            return NOT_A_SCALAR
        return value if type(value) in _SCALAR_TYPES else NOT_A_SCALAR

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
                ds.prefetch_indexes([(*t._components[1:4], attempt) for t in self._peer_tasks()])
            info = self._own_info_memo = self._attempt_info(attempt)
        return info

    @property
    def size(self) -> int:
        info = self._attempt_info()
        if info.get("type") == _INCLUDED_FILE_TYPE:
            self._check_encoding()
            data = self._datastore().small_blob(self.sha, _DESCRIPTOR_LIMIT)
            if data is None:
                raise MetaflowInternalError("Artifact %s is not an IncludeFile descriptor (too large)" % self.pathspec)
            return _included_file_size(_included_file_descriptor(data))
        return info.get("size", 0)

    # -- for the filesystem view: raw bytes without unpickling ---------------------------------------------------
    @functools.cached_property
    def blob_size(self) -> Optional[int]:
        """Length of the serialized (pickle) bytes, known without unpickling and without inflating more than
        `SIZE_INFLATE_LIMIT` bytes (kept: a blob never changes, and the mount asks once per file of the artifact's
        directory): the stored blob's own size (local storage), else the size its attempt's index records, else
        the blob's when it inflates within the limit; None when none of these tells (a larger blob without a
        recorded size: the mount then shows size 0 until the file is read). Stored sizes are not trusted further
        than that: the gzip trailer of a hostile blob can say anything."""
        stored = self._datastore().stored_blob_size(self.sha)
        if stored is not None:
            return stored
        info = self._own_info()
        if "size" in info and info.get("type") != _INCLUDED_FILE_TYPE:
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


class MetaflowData:
    """`task.data`: attribute access to artifact values; `in` and `dir()` list the public ones."""

    def __init__(self, task: "Task"):
        self._task = task
        self._names: Optional[List[str]] = None

    def _artifact_names(self) -> List[str]:
        if self._names is None:
            self._names = [a.id for a in self._task]
        return self._names

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._task[name].data
        except KeyError:
            raise AttributeError(name) from None

    def __contains__(self, name: str) -> bool:
        return name in self._artifact_names()

    def __dir__(self) -> List[str]:
        return self._artifact_names() + object.__dir__(self)

    def __str__(self) -> str:
        return "<MetaflowData: %s>" % ", ".join(self._artifact_names())

    __repr__ = __str__


class Task(MetaflowObject):
    """One execution of a step; artifacts come from the latest finished attempt unless `attempt` is given."""

    _NAME = "task"
    _DEPTH = 4
    _PATHSPEC_FORM = "Task('FlowName/RunID/StepName/TaskID')"

    def _children(self) -> List[dict]:
        return self._provider.artifacts(*self._components, attempt=self._attempt)

    def _child(self, id: str) -> Optional[dict]:
        return self._provider.artifact(*self._components, id, attempt=self._attempt)

    @staticmethod
    def _id_of(record: dict) -> str:
        return record["task_id"]

    def _peers(self) -> List["Task"]:
        """This task and the ones a loop is likely to read next (at most PREFETCH_WINDOW): the next tasks of an
        iterated step, or the end tasks of the next runs of an iterated flow when this is a run's end task."""
        siblings = getattr(self, "_siblings", None)
        if siblings:
            return siblings[self._position : self._position + PREFETCH_WINDOW]
        run = self.__dict__.get("_end_of")
        runs = getattr(run, "_siblings", None)
        if not runs:
            return []
        window = runs[run._position : run._position + PREFETCH_WINDOW]
        return [end for end in (r.end_task for r in window) if end is not None]

    def _value(self, name: str, missing: Any) -> Any:
        try:
            artifact = self[name]
        except KeyError:
            return missing
        # `_exception` is None and `_task_ok` True in almost every task: their blobs need not be read
        sha = artifact.sha
        return KNOWN_VALUES[sha] if sha in KNOWN_VALUES else _internal_value(artifact)

    @property
    def data(self) -> MetaflowData:
        return MetaflowData(self)

    @property
    def artifacts(self) -> Any:
        arts = list(self)
        return namedtuple("MetaflowArtifacts", [a.id for a in arts])._make(arts)

    @property
    def successful(self) -> bool:
        return self._value("_success", False)

    @property
    def finished(self) -> bool:
        return self._value("_task_ok", False)

    @property
    def exception(self) -> Optional[Any]:
        return self._value("_exception", None)

    @property
    def finished_at(self) -> Optional[datetime]:
        try:
            return self["_task_ok"].created_at
        except KeyError:
            return None

    @property
    def index(self) -> Optional[int]:
        # Metaflow reads `_foreach_stack[-1].index`. The task registered the same stack as metadata,
        # foreach-execution-path = "step:index,...", which costs no blob read (a GET on S3); the artifact is read
        # only when that is missing (tasks outside a foreach, older Metaflow) or not a plain index.
        path = self._latest_field("foreach-execution-path")
        if isinstance(path, str) and path:
            last = path.rsplit(",", 1)[-1].rpartition(":")[2]
            if last.isdigit():
                return int(last)
        try:
            return _internal_value(self["_foreach_stack"])[-1].index
        except (KeyError, IndexError):
            return None

    @property
    def runtime_name(self) -> Optional[str]:
        for tag in self.tags:
            if tag.startswith("runtime:"):
                return tag.split(":")[1]
        return None

    # -- metadata --------------------------------------------------------------------------------------------
    def _events(self) -> List[dict]:
        events = self._provider.task_metadata(*self._components)
        if self._attempt is not None:
            events = _events_of_attempt(events, self._attempt)
        return events

    @property
    def metadata(self) -> List[Metadata]:
        events = self._events()
        result = [Metadata(e["field_name"], e["value"], e["ts_epoch"], e["type"], self) for e in events]
        origin_run = origin_task = None
        for e in events:
            if e["field_name"] == "origin-run-id":
                origin_run = e["value"]
            elif e["field_name"] == "origin-task-id":
                origin_task = e["value"]
        if origin_task:
            # A cloned (resumed) task borrows what it lacks, e.g. ds-type/ds-root, from its origin.
            flow, _, step, _ = self._components
            origin = Task("/".join((flow, origin_run, step, origin_task)), _namespace_check=False)
            present = {e["field_name"] for e in events}
            latest = {m.name: m for m in sorted(origin.metadata, key=lambda m: m.created_at)}
            result.extend(
                Metadata(m.name, m.value, m.created_at, m.type, self) for m in latest.values() if m.name not in present
            )
        return result

    @property
    def metadata_dict(self) -> Dict[str, Any]:
        return {m.name: m.value for m in sorted(self.metadata, key=lambda m: m.created_at)}

    @property
    def current_attempt(self) -> int:
        """The explicit attempt, else the latest started one (its `attempt` event), 0 when none is recorded."""
        if self._attempt is not None:
            return self._attempt
        return int(self._latest_field("attempt", 0))

    def _latest_field(self, field: str, default: Any = None) -> Any:
        """`metadata_dict.get(field, default)`, reading only that field's events: the full list is needed only by
        an explicit attempt (events are selected by attempt) and by a cloned task that lacks the field (it
        borrows its origin's)."""
        if self._attempt is not None:
            return self.metadata_dict.get(field, default)
        events = self._provider.task_metadata_field(*self._components, field)
        if events:
            return sorted(events, key=lambda e: e["ts_epoch"])[-1]["value"]
        if field != "origin-task-id" and self._latest_field("origin-task-id"):
            return self.metadata_dict.get(field, default)
        return default

    @property
    def origin_pathspec(self) -> Optional[str]:
        parent = self.parent.origin_pathspec
        if not parent:
            return None
        origin_task = [m.value for m in self.metadata if m.name == "origin-task-id"]
        return "%s/%s" % (parent, origin_task[0]) if origin_task else None

    # -- logs ------------------------------------------------------------------------------------------------
    def _log_location(self, meta: Optional[Dict[str, Any]] = None) -> Optional[Tuple[FlowDatastore, int]]:
        """(datastore, attempt) of the task's logs, from `meta` (a metadata_dict) or else from the three fields
        needed (a task has about twenty)."""
        field = meta.get if meta is not None else self._latest_field
        ds_type, ds_root = field("ds-type"), field("ds-root")
        if ds_type is None or ds_root is None:
            return None
        attempt = self._attempt if self._attempt is not None else int(field("attempt", 0))
        return FlowDatastore.at(confine_root(ds_root, self._provider), self._components[0]), attempt

    def loglines(self, stream: str, as_unicode: bool = True, meta_dict: Optional[Dict[str, Any]] = None) -> Iterator[
        Tuple[Optional[datetime], Any]
    ]:
        """(UTC timestamp, line) for every line of 'stdout' or 'stderr' of the task's current attempt."""
        location = self._log_location(meta_dict)
        if location is None:
            yield None, ""
            return
        from . import mflog

        ds, attempt = location
        for ts, msg in mflog.merge(ds.logs(*self._components[1:], attempt, stream)):
            yield ts, (msg.decode("utf-8") if as_unicode else msg)

    def _log_text(self, stream: str) -> str:
        return "".join(line + "\n" for _, line in self.loglines(stream))

    @property
    def stdout(self) -> str:
        return self._log_text("stdout")

    @property
    def stderr(self) -> str:
        return self._log_text("stderr")

    def _log_size(self, stream: str) -> int:
        location = self._log_location()
        if location is None:
            return 0
        ds, attempt = location
        return ds.log_size(*self._components[1:], attempt, stream)

    @property
    def stdout_size(self) -> int:
        return self._log_size("stdout")

    @property
    def stderr_size(self) -> int:
        return self._log_size("stderr")

    # -- code ------------------------------------------------------------------------------------------------
    @property
    def code(self) -> Optional[MetaflowCode]:
        if "_code" not in self.__dict__:
            package = self._latest_field("code-package")
            self.__dict__["_code"] = MetaflowCode(self._components[0], package) if package else None
        return self.__dict__["_code"]

    @property
    def environment_info(self) -> Optional[Any]:
        code = self.code
        if not code or not code.info.get("environment_type"):
            return None
        return "Local environment" if code.info["environment_type"] == "local" else None

    # -- cards -----------------------------------------------------------------------------------------------
    def cards(self) -> Optional[CardStore]:
        """The task's Metaflow cards (HTML files, as stored), or None when the task has no datastore root.
        A cloned (resumed) task shows its origin's cards, as Metaflow's `get_cards` does."""
        flow, run, step, task = self._components
        origin_task = self._latest_field("origin-task-id")
        origin_run = self._latest_field("origin-run-id") if origin_task else None
        if origin_run:
            run, task = origin_run, origin_task
        ds_root = self._latest_field("ds-root")
        if not ds_root:
            return None
        from .storage.base import OutsideDatastore

        try:
            return CardStore(confine_root(ds_root, self._provider), flow, run, step, task)
        except OutsideDatastore as exc:  # no cards from elsewhere; the task's other files stay readable
            import logging

            logging.getLogger(__name__).warning("cards of %s not read: %s", self.pathspec, exc)
            return None

    # -- graph neighbours ------------------------------------------------------------------------------------
    def _matching(self, steps: List[str], pattern: str) -> Iterator[str]:
        flow, run = self._components[:2]
        for step in steps:
            for task_id in self._provider.filtered_tasks(flow, run, step, "foreach-execution-path", pattern):
                yield "%s/%s/%s/%s" % (flow, run, step, task_id)

    @property
    def parent_task_pathspecs(self) -> Iterator[str]:
        step = self._components[2]
        graph = _internal_value(self["_graph_info"])
        steps = _previous_steps(graph, step)
        path = self._latest_field("foreach-execution-path")
        if len(steps) > 1:
            pattern = path or ".*"
        elif not steps:
            return
        elif not path:
            pattern = ".*"
        elif graph["steps"][step]["type"] == "join":
            pattern = "%s,.*" % path
        else:
            parent_type = graph["steps"][steps[0]]["type"]
            pattern = _enclosing_path(path) if parent_type in ("split-foreach", "split-parallel") else path
        yield from self._matching(steps, pattern)

    @property
    def child_task_pathspecs(self) -> Iterator[str]:
        step = self._components[2]
        graph = _internal_value(self["_graph_info"])
        steps = graph["steps"][step]["next"]
        path = self._latest_field("foreach-execution-path")
        if len(steps) > 1:
            pattern = path or ".*"
        elif not steps:
            return
        elif not path:
            pattern = ".*"
        elif graph["steps"][step]["type"] in ("split-foreach", "split-parallel"):
            pattern = "%s,.*" % path
        else:
            child_type = graph["steps"][steps[0]]["type"]
            if len(_previous_steps(graph, steps[0])) > 1:
                child_type = "static-join"
            pattern = _enclosing_path(path) if child_type == "join" else path
        yield from self._matching(steps, pattern)

    @property
    def parent_tasks(self) -> Iterator["Task"]:
        for pathspec in self.parent_task_pathspecs:
            yield Task(pathspec, _namespace_check=False)

    @property
    def child_tasks(self) -> Iterator["Task"]:
        for pathspec in self.child_task_pathspecs:
            yield Task(pathspec, _namespace_check=False)


def _enclosing_path(path: str) -> str:
    """The foreach-execution-path pattern of the foreach enclosing `path` ("a:1,b:2" -> "a:1"; outermost: any)."""
    frames = path.split(",")
    return ",".join(frames[:-1]) if len(frames) > 1 else ".*"


def _previous_steps(graph: dict, step: str) -> List[str]:
    return [name for name, node in graph["steps"].items() if step in node["next"]]


def _events_of_attempt(events: List[dict], attempt: int) -> List[dict]:
    """Events of one attempt: those tagged `attempt_id:<n>`; when some events carry no attempt tag, those
    registered between the start of attempt n and the start of attempt n+1 (as Metaflow does)."""
    tag = "attempt_id:%d" % attempt
    if all(any(t.startswith("attempt_id:") for t in e["tags"]) for e in events):
        return [e for e in events if tag in e["tags"]]
    starts = {int(e["value"]): e["ts_epoch"] for e in events if e["field_name"] == "attempt"}
    if attempt not in starts:
        return []
    end = starts.get(attempt + 1)
    return [e for e in events if starts[attempt] <= e["ts_epoch"] and (end is None or e["ts_epoch"] < end)]


class Step(MetaflowObject):
    _NAME = "step"
    _DEPTH = 3
    _PATHSPEC_FORM = "Step('FlowName/RunID/StepName')"

    @staticmethod
    def _id_of(record: dict) -> str:
        return record["step_name"]

    @property
    def task(self) -> Optional[Task]:
        return next(iter(self), None)  # the newest

    def tasks(self, *tags: str) -> Iterator[Task]:
        return self._filtered_children(*tags)  # type: ignore[return-value]

    @property
    def finished_at(self) -> Optional[datetime]:
        try:
            return max(task.finished_at for task in self)
        except (TypeError, ValueError):
            return None

    @property
    def environment_info(self) -> Optional[Any]:
        task = self.task
        return task.environment_info if task else None

    @property
    def parent_steps(self) -> Iterator["Step"]:
        graph = _internal_value(self.task["_graph_info"])
        if self.id != graph.get("start_step", "start"):
            flow, run, _ = self._components
            for name in _previous_steps(graph, self.id):
                yield Step("%s/%s/%s" % (flow, run, name), _namespace_check=False)

    @property
    def child_steps(self) -> Iterator["Step"]:
        graph = _internal_value(self.task["_graph_info"])
        if self.id != graph.get("end_step", "end"):
            flow, run, _ = self._components
            for name in graph["steps"][self.id]["next"]:
                yield Step("%s/%s/%s" % (flow, run, name), _namespace_check=False)


class Run(MetaflowObject):
    _NAME = "run"
    _DEPTH = 2
    _PATHSPEC_FORM = "Run('FlowName/RunID')"

    @staticmethod
    def _id_of(record: dict) -> str:
        return record["run_number"]

    def _iter_filter(self, id: str) -> bool:
        return not id.startswith("_")

    def _tag_lists(self) -> Tuple[List[str], List[str]]:
        if self._run_tags is None:
            self._run_tags = (self._object["tags"], self._object["system_tags"])
        return self._run_tags

    def steps(self, *tags: str) -> Iterator[Step]:
        return self._filtered_children(*tags)  # type: ignore[return-value]

    def _newest_task(self, step: str) -> Optional["Task"]:
        """`self[step].task` without reading the step's own record (a step without tasks and a missing step
        both give None, as `end_task` and `_parameters` lookups need)."""
        tasks = self._provider.tasks(*self._components, step)
        if not tasks:
            return None
        newest = sorted(tasks, key=lambda t: t["ts_epoch"], reverse=True)[0]
        return Task(
            pathspec="/".join(self._components + [step, newest["task_id"]]),
            _object=newest,
            _namespace_check=self._namespace_check,
            _current_namespace=self._current_namespace if self._namespace_check else None,
            _run_tags=self._tag_lists(),
        )

    def _endpoint(self, field: str, default: str) -> str:
        """The start or end step's name ('start_step'/'end_step'), as the `_parameters` task registered it
        (resumed runs have none: then the default)."""
        params = self._newest_task("_parameters")
        events = self._provider.task_metadata_field(*params._components, field) if params else []
        # the latest event wins; for equal times the later one in the list, as in metadata_dict
        return sorted(events, key=lambda e: e["ts_epoch"])[-1]["value"] if events else default

    @property
    def end_task(self) -> Optional[Task]:
        end = self.__dict__.get("_end_task")
        if end is None:
            end = self.__dict__["_end_task"] = self._newest_task(self._endpoint("end_step", "end"))
            if end is not None:
                end._end_of = self  # reading its artifacts prefetches those of the next runs' end tasks
        return end

    @property
    def data(self) -> Optional[MetaflowData]:
        end = self.end_task
        return end.data if end else None

    def _settled(self, done: bool) -> bool:
        if done is True:
            # The end task completed (successful implies finished): no step or task can be added any more.
            self._provider.mark_run_final(*self._components)
        return done

    @property
    def successful(self) -> bool:
        end = self.end_task
        return self._settled(end.successful if end else False)

    @property
    def finished(self) -> bool:
        end = self.end_task
        return self._settled(end.finished if end else False)

    @property
    def finished_at(self) -> Optional[datetime]:
        end = self.end_task
        return end.finished_at if end else None

    @property
    def code(self) -> Optional[MetaflowCode]:
        for step in self:
            task = step.task
            if task:
                code = task.code
                if code:
                    return code
        return None

    @property
    def origin_pathspec(self) -> Optional[str]:
        latest_step = next(iter(self), None)
        task = latest_step.task if latest_step else None
        if task:
            origin = [m.value for m in task.metadata if m.name == "origin-run-id"]
            if origin:
                return "%s/%s" % (self._components[0], origin[0])
        return None

    @property
    def trigger(self) -> Optional[Any]:
        start = self._endpoint("start_step", "start")
        if start in self and self[start].task:
            meta = self[start].task.metadata_dict.get("execution-triggers")
            if meta:
                return json.loads(meta)
        return None


class Flow(MetaflowObject):
    _NAME = "flow"
    _DEPTH = 1
    _PATHSPEC_FORM = "Flow('FlowName')"

    def _children(self) -> List[dict]:
        runs = self._provider.runs(self.id)
        if self._namespace_check and self._current_namespace:
            runs = [r for r in runs if self._current_namespace in r["tags"] or self._current_namespace in r["system_tags"]]
        return runs

    @staticmethod
    def _id_of(record: dict) -> str:
        return record["flow_id"]

    def _tag_lists(self) -> Tuple[List[str], List[str]]:
        return [], []

    def _is_in_namespace(self, ns: Optional[str]) -> bool:
        # As in Metaflow: whether the flow lists a run in its own namespace (whatever `ns`), decided on the run
        # records without building Run objects.
        return bool(self._children())

    @property
    def latest_run(self) -> Optional[Run]:
        return next(iter(self), None)  # the newest in the namespace, running or not

    @property
    def latest_successful_run(self) -> Optional[Run]:
        for run in self:
            if run.successful:
                return run
        return None

    def runs(self, *tags: str) -> Iterator[Run]:
        return self._filtered_children(*tags)  # type: ignore[return-value]


Flow._CHILD, Run._CHILD, Step._CHILD, Task._CHILD = Run, Step, Task, DataArtifact
Run._PARENT, Step._PARENT, Task._PARENT, DataArtifact._PARENT = Flow, Run, Step, Task


class Metaflow:
    """The root: every flow with at least one run in the current namespace (in the provider's order)."""

    def __init__(self, _current_metadata: Optional[str] = None):
        self.metadata = _current_provider()

    @property
    def flows(self) -> List[Flow]:
        return list(self)

    def __iter__(self) -> Iterator[Flow]:
        for record in self.metadata.flows():
            try:
                yield Flow(_object=record, pathspec=record["flow_id"])
            except MetaflowNamespaceMismatch:
                continue

    def __getitem__(self, name: str) -> Flow:
        return Flow(name)

    def __str__(self) -> str:
        return "Metaflow()"

    def _ipython_key_completions_(self) -> List[str]:
        return [flow.id for flow in self]


# Where mffs (and code written against the single-module client) imports the settings from.
from .context import (  # noqa: E402,F401
    current_context,
    default_metadata,
    default_namespace,
    metadata,
    namespace,
    restore_context,
    trust_pickles,
)
from .values import load_stored  # noqa: E402,F401
