"""Metaflow's local metadata: the `_meta/` directories inside a local `.metaflow` root.

Reads only what a question needs: a listing of `_meta/` tells which attempts have artifacts, and one file
answers `task['x']`. Tags of steps, tasks and artifacts are never read here: the object model takes the run's.

Bad records (see base.py): a `_self.json`, artifact or metadata record that is not valid JSON or lacks a field is
left out of its list with one log line (a task's metadata lacks that event); a `_self.json` or artifact record
looked up by name raises MetaflowInternalError; a `_self.json` that is a directory is no record at all, as for
Metaflow (absent from lists, not found by name).
"""
from __future__ import annotations

import os
import re
from typing import Callable, FrozenSet, List, Optional, Sequence

from .. import records
from ..config import mffs_setting
from ..recent import Recent
from ..storage import get_storage
from ..storage.base import OutsideDatastore, Storage
from .base import (
    RECORD_ERRORS,
    MetadataProvider,
    artifact_record,
    bad_record,
    event_record,
    flow_record,
    run_record,
    skip_record,
    step_record,
    task_record,
)

MAX_ATTEMPTS = 6  # as in Metaflow: attempts 0..5
#: tasks whose `_meta` listing and attempt are remembered (for the TTL): the questions about one task come together
#: (a listing of it asks several), and a walk of a large run must not keep a listing per task it passed
TASKS_REMEMBERED = 1_000


class _MetaNames:
    """The file names of a task's `_meta` directory, in directory order, searched by prefix with `str.find` rather
    than a Python scan of its forty-odd names per question (a task's listing asks for three fields and its
    artifacts). The names are joined with NUL, which no file name holds."""

    __slots__ = ("names", "_text", "_set")

    def __init__(self, names: List[str]):
        self.names = names
        self._text = "\0" + "\0".join(names) + "\0"
        self._set: Optional[FrozenSet[str]] = None

    def starting(self, prefix: str) -> List[str]:
        """The names that start with `prefix`, in directory order."""
        text, found = self._text, []
        start = text.find("\0" + prefix)
        while start >= 0:
            end = text.index("\0", start + 1)
            found.append(text[start + 1 : end])
            start = text.find("\0" + prefix, end)
        return found

    def field(self, field_name: str) -> List[str]:
        """The names `sysmeta_<field_name>_<digits>.json` (a name whose rest is not just digits belongs to a longer
        field, e.g. attempt_ok for attempt)."""
        prefix = "sysmeta_%s_" % field_name
        start = len(prefix)
        return [n for n in self.starting(prefix) if n.endswith(".json") and n[start:-5].isdigit()]

    def __contains__(self, name: str) -> bool:
        if self._set is None:
            self._set = frozenset(self.names)
        return name in self._set


def _public_artifacts(names: _MetaNames, attempt: int) -> List[str]:
    """The record files of the public artifacts of `attempt`."""
    prefix, internal = "%d_artifact_" % attempt, "%d_artifact__" % attempt
    return [n for n in names.starting(prefix) if n.endswith(".json") and not n.startswith(internal)]


def _exists(path: str) -> bool:
    # os.access, not os.path.exists: a missing file costs no exception and no stat_result (half the time). Not
    # confined: it tells only whether a file exists (which attempt to read); the read that follows is confined.
    return os.access(path, os.F_OK)


class LocalMetadataProvider(MetadataProvider):
    TYPE = "local"
    reads_single_fields = True

    def __init__(self, root: Optional[str], ttl: Optional[float] = None):
        #: the `.metaflow` directory, or None when none was found (then nothing exists)
        self.root = root
        #: the root's storage: every record is read through it, so it is confined like the datastore's own reads
        self._storage: Optional[Storage] = get_storage(root) if root is not None else None
        ttl = mffs_setting("TTL", 1.0) if ttl is None else ttl
        # meta dir -> attempt: reading two artifacts of a task probes its attempt once
        self._attempts = Recent(ttl, TASKS_REMEMBERED)
        # meta dir -> _MetaNames: several fields of one task cost one listing
        self._listings = Recent(ttl, TASKS_REMEMBERED)

    def info(self) -> str:
        if self.root is None:
            return "<No .metaflow directory found in current working tree>"
        return os.path.dirname(self.root)

    def datastore_root(self) -> Optional[str]:
        return self.root

    def _path(self, *ids: str) -> str:
        return "/".join((self.root,) + ids)

    def _read_json(self, key: str) -> dict:
        return records.loads(self._storage.read(key))

    def _self_record(self, key: str) -> Optional[dict]:
        """The `_self.json` record of the directory `key`, or None when it has none (or one that leads out of the
        root, logged)."""
        try:
            return self._read_json(key + "/_meta/_self.json")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OutsideDatastore as exc:  # a link out of the root: no record here, as for a missing one (logged)
            skip_record(self._path(key), exc)
            return None

    def _children(self, make: Callable[[dict], dict], *ids: str) -> List[dict]:
        """`make(record)` of the `_self.json` of each sub-directory that has one, in directory order (a bad record
        is left out, logged)."""
        if self.root is None:
            return []
        try:
            names = [e.name for e in os.scandir(self._path(*ids))]
        except (FileNotFoundError, NotADirectoryError):
            return []
        prefix = "/".join(ids + ("",))
        names = [name for name in names if not name.startswith(".") and name != "_meta"]
        self._storage.read_ahead([prefix + name + "/_meta/_self.json" for name in names])
        records = []
        for name in names:
            try:
                record = self._self_record(prefix + name)
                if record is not None:
                    records.append(make(record))
            except (OSError, *RECORD_ERRORS) as exc:
                skip_record(self._path(prefix + name, "_meta/_self.json"), exc)
        return records

    def _one(self, make: Callable[[dict], dict], *ids: str) -> Optional[dict]:
        if self.root is None or any(not i or "/" in i or i in (".", "..") for i in ids):
            return None
        key = "/".join(ids)
        try:
            record = self._self_record(key)
            return None if record is None else make(record)
        except RECORD_ERRORS as exc:
            raise bad_record(self._path(key, "_meta/_self.json"), exc) from exc

    def flows(self) -> List[dict]:
        return self._children(flow_record)

    def flow(self, flow: str) -> Optional[dict]:
        return self._one(flow_record, flow)

    _run = staticmethod(run_record)

    def runs(self, flow: str) -> List[dict]:
        return self._children(self._run, flow) if self._one(flow_record, flow) else []

    def run(self, flow: str, run: str) -> Optional[dict]:
        return self._one(self._run, flow, run)

    def steps(self, flow: str, run: str) -> List[dict]:
        return self._children(step_record, flow, run)

    def step(self, flow: str, run: str, step: str) -> Optional[dict]:
        return self._one(step_record, flow, run, step)

    def tasks(self, flow: str, run: str, step: str) -> List[dict]:
        return self._children(task_record, flow, run, step)

    def task(self, flow: str, run: str, step: str, task: str) -> Optional[dict]:
        return self._one(task_record, flow, run, step, task)

    @staticmethod
    def _meta_dir(flow: str, run: str, step: str, task: str) -> str:
        """The key of a task's `_meta` directory."""
        return "%s/%s/%s/%s/_meta" % (flow, run, step, task)

    def _listing(self, flow: str, run: str, step: str, task: str) -> _MetaNames:
        """A task's `_meta` file names, remembered for the TTL (several fields of one task: one listing)."""
        if self.root is None:
            return _MetaNames([])
        meta_dir = self._meta_dir(flow, run, step, task)
        return self._listings.get(meta_dir, lambda: _MetaNames(self._storage.list(meta_dir)))

    def _default_attempt(self, meta_dir: str) -> Optional[int]:
        """The attempt Metaflow shows by default: the latest one that finished. Metaflow reads the value of the
        newest `attempt-done` event; every finished attempt also registers its artifacts, among them the one
        called `name` (the flow's name), so the highest A with `<A>_artifact_name.json` is the same attempt,
        found with a few stat calls instead of a listing and a read (and remembered for the TTL)."""
        return self._attempts.get(meta_dir, lambda: self._latest_attempt_with_artifacts(meta_dir))

    def _latest_attempt_with_artifacts(self, meta_dir: str) -> Optional[int]:
        names = self._listings.fresh(meta_dir)
        if names is not None:  # listed anyway (to list artifacts): no stat needed
            exists, prefix = names.__contains__, ""
        else:
            exists, prefix = _exists, "%s/%s/" % (self.root, meta_dir)
        for attempt in range(MAX_ATTEMPTS - 1, -1, -1):
            if exists("%s%d_artifact_name.json" % (prefix, attempt)):
                return attempt
        return None

    _artifact = staticmethod(artifact_record)

    def artifacts(self, flow: str, run: str, step: str, task: str, attempt: Optional[int] = None) -> List[dict]:
        names = self._listing(flow, run, step, task)
        meta_dir = self._meta_dir(flow, run, step, task)
        if attempt is None:
            attempt = self._default_attempt(meta_dir)
            if attempt is None:
                return []
        return self._records(self._artifact, meta_dir, _public_artifacts(names, attempt))

    def read_ahead_task(
        self, flow: str, run: str, step: str, task: str, attempt: Optional[int], public: bool,
        artifacts: Sequence[str], fields: Sequence[str],
    ) -> Optional[int]:
        """Has the storage start reading the task's records together (`Storage.read_ahead`): from a disk, the
        questions that follow then wait for them once rather than once a record."""
        names = self._listing(flow, run, step, task)
        meta_dir = self._meta_dir(flow, run, step, task)
        if attempt is None:
            attempt = self._default_attempt(meta_dir)
        wanted = [name for field in fields for name in names.field(field)]
        if attempt is not None:
            if public:
                wanted += _public_artifacts(names, attempt)
            wanted += [name for name in ("%d_artifact_%s.json" % (attempt, a) for a in artifacts) if name in names]
        if wanted:
            self._storage.read_ahead([meta_dir + "/" + name for name in wanted])
        return attempt

    def _records(self, make: Callable[[dict], dict], meta_dir: str, names: List[str]) -> List[dict]:
        """`make(record)` of each file `names` of `meta_dir` (a bad record is left out, logged)."""
        if not names:
            return []
        read, loads, built = self._storage.read, records.loads, []
        for n in names:
            try:
                built.append(make(loads(read(meta_dir + "/" + n))))
            except (OSError, *RECORD_ERRORS) as exc:
                skip_record(self._path(meta_dir, n), exc)
        return built

    def artifact(
        self, flow: str, run: str, step: str, task: str, name: str, attempt: Optional[int] = None
    ) -> Optional[dict]:
        if "/" in name:
            return None
        meta_dir = self._meta_dir(flow, run, step, task)
        if attempt is None:
            attempt = self._default_attempt(meta_dir)
            if attempt is None:
                return None
        key = "%s/%d_artifact_%s.json" % (meta_dir, attempt, name)
        try:
            return self._artifact(self._read_json(key))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except RECORD_ERRORS as exc:
            raise bad_record(self._path(key), exc) from exc

    def task_metadata(self, flow: str, run: str, step: str, task: str) -> List[dict]:
        return self._events(flow, run, step, task, self._listing(flow, run, step, task).starting("sysmeta_"))

    def task_metadata_field(self, flow: str, run: str, step: str, task: str, field_name: str) -> List[dict]:
        """The events of one field: only its files, sysmeta_<field>_<ms>.json, are read."""
        return self._events(flow, run, step, task, self._listing(flow, run, step, task).field(field_name))

    def _events(self, flow: str, run: str, step: str, task: str, names: List[str]) -> List[dict]:
        meta_dir = self._meta_dir(flow, run, step, task)
        return self._records(event_record, meta_dir, [n for n in names if n.endswith(".json")])

    def filtered_tasks(self, flow: str, run: str, step: str, field_name: str, pattern: str) -> List[str]:
        ids = [t["task_id"] for t in self.tasks(flow, run, step)]
        if pattern == ".*":
            return ids
        regex = re.compile(pattern)
        return [
            t
            for t in ids
            if any(
                e["field_name"] == field_name and isinstance(e["value"], str) and regex.fullmatch(e["value"])
                for e in self.task_metadata(flow, run, step, t)
            )
        ]
