"""Metaflow's local metadata: the `_meta/` directories inside a local `.metaflow` root (see the reference §1.2–1.4).

Reads only what a question needs: a listing of `_meta/` tells which attempts have artifacts, and one file
answers `task['x']`. Tags of steps, tasks and artifacts are never read here: the object model takes the run's.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional

from .. import records
from ..config import mffs_setting
from ..recent import Recent
from ..storage import get_storage
from ..storage.base import OutsideDatastore
from ..storage.local import storage_of
from .base import MetadataProvider, artifact_record, run_record

MAX_ATTEMPTS = 6  # as in Metaflow: attempts 0..5


def _read_json(path: str):
    storage, key = storage_of(path)  # confined like the datastore's own reads: no link out of the root
    return records.loads(storage.read(key))


def _list_dir(path: str) -> List[str]:
    storage, key = storage_of(path)
    return storage.list(key)


def _exists(path: str) -> bool:
    # os.access, not os.path.exists: a missing file costs no exception and no stat_result (half the time). Not
    # confined: it tells only whether a file exists (which attempt to read); the read that follows is confined.
    return os.access(path, os.F_OK)


def _self_record(path: str) -> Optional[dict]:
    try:
        return _read_json(path + "/_meta/_self.json")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OutsideDatastore as exc:  # a link out of the root: this entry alone is left out
        import logging  # not at start: it costs several milliseconds of regex compiling

        logging.getLogger(__name__).warning("%s", exc)
        return None


class LocalMetadataProvider(MetadataProvider):
    TYPE = "local"
    reads_single_fields = True

    def __init__(self, root: Optional[str], ttl: Optional[float] = None):
        #: the `.metaflow` directory, or None when none was found (then nothing exists)
        self.root = root
        if root is not None:
            get_storage(root)  # its records are read through the storage's confinement (`storage_of`)
        ttl = mffs_setting("TTL", 1.0) if ttl is None else ttl
        # meta dir -> attempt: reading two artifacts of a task probes its attempt once
        self._attempts = Recent(ttl)
        # meta dir -> file names: several fields of one task cost one listing
        self._listings = Recent(ttl)

    def info(self) -> str:
        if self.root is None:
            return "<No .metaflow directory found in current working tree>"
        return os.path.dirname(self.root)

    def datastore_root(self) -> Optional[str]:
        return self.root

    def _path(self, *ids: str) -> str:
        return "/".join((self.root,) + ids)

    def _children(self, *ids: str) -> List[dict]:
        """`_self.json` records of the sub-directories that have one, in directory order."""
        if self.root is None:
            return []
        try:
            entries = list(os.scandir(self._path(*ids)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        records = []
        for entry in entries:
            if entry.name.startswith(".") or entry.name == "_meta":
                continue
            record = _self_record(entry.path)
            if record is not None:
                records.append(record)
        return records

    def _one(self, *ids: str) -> Optional[dict]:
        if self.root is None or any(not i or "/" in i or i in (".", "..") for i in ids):
            return None
        return _self_record(self._path(*ids))

    def flows(self) -> List[dict]:
        return [{"flow_id": r["flow_id"], "ts_epoch": r["ts_epoch"]} for r in self._children()]

    def flow(self, flow: str) -> Optional[dict]:
        r = self._one(flow)
        return r and {"flow_id": r["flow_id"], "ts_epoch": r["ts_epoch"]}

    _run = staticmethod(run_record)

    def runs(self, flow: str) -> List[dict]:
        return [self._run(r) for r in self._children(flow)] if self._one(flow) else []

    def run(self, flow: str, run: str) -> Optional[dict]:
        r = self._one(flow, run)
        return r and self._run(r)

    def steps(self, flow: str, run: str) -> List[dict]:
        return [{"step_name": r["step_name"], "ts_epoch": r["ts_epoch"]} for r in self._children(flow, run)]

    def step(self, flow: str, run: str, step: str) -> Optional[dict]:
        r = self._one(flow, run, step)
        return r and {"step_name": r["step_name"], "ts_epoch": r["ts_epoch"]}

    def tasks(self, flow: str, run: str, step: str) -> List[dict]:
        return [{"task_id": str(r["task_id"]), "ts_epoch": r["ts_epoch"]} for r in self._children(flow, run, step)]

    def task(self, flow: str, run: str, step: str, task: str) -> Optional[dict]:
        r = self._one(flow, run, step, task)
        return r and {"task_id": str(r["task_id"]), "ts_epoch": r["ts_epoch"]}

    def _meta_dir(self, flow: str, run: str, step: str, task: str) -> str:
        return self._path(flow, run, step, task, "_meta")

    def _listing(self, flow: str, run: str, step: str, task: str) -> List[str]:
        """A task's `_meta` file names, remembered for the TTL (several fields of one task: one listing)."""
        if self.root is None:
            return []
        meta_dir = self._meta_dir(flow, run, step, task)
        return self._listings.get(meta_dir, lambda: _list_dir(meta_dir))

    def _default_attempt(self, meta_dir: str) -> Optional[int]:
        """The attempt Metaflow shows by default: the latest one that finished. Metaflow reads the value of the
        newest `attempt-done` event; every finished attempt also registers its artifacts, among them the one
        called `name` (the flow's name), so the highest A with `<A>_artifact_name.json` is the same attempt,
        found with a few stat calls instead of a listing and a read (and remembered for the TTL)."""
        return self._attempts.get(meta_dir, lambda: self._latest_attempt_with_artifacts(meta_dir))

    def _latest_attempt_with_artifacts(self, meta_dir: str) -> Optional[int]:
        names = self._listings.fresh(meta_dir)
        if names is not None:  # listed anyway (to list artifacts): no stat needed
            exists, prefix = set(names).__contains__, ""
        else:
            exists, prefix = _exists, meta_dir + "/"
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
        prefix, internal = "%d_artifact_" % attempt, "%d_artifact__" % attempt
        return [
            self._artifact(_read_json(os.path.join(meta_dir, n)))
            for n in names
            if n.startswith(prefix) and n.endswith(".json") and not n.startswith(internal)
        ]

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
        try:
            return self._artifact(_read_json("%s/%d_artifact_%s.json" % (meta_dir, attempt, name)))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def task_metadata(self, flow: str, run: str, step: str, task: str) -> List[dict]:
        names = self._listing(flow, run, step, task)
        return self._events(flow, run, step, task, [n for n in names if n.startswith("sysmeta_")])

    def task_metadata_field(self, flow: str, run: str, step: str, task: str, field_name: str) -> List[dict]:
        """The events of one field."""
        # File names are sysmeta_<field>_<ms>.json: only those are read (a name whose rest is not just digits
        # belongs to a longer field, e.g. attempt_ok for attempt).
        prefix = "sysmeta_%s_" % field_name
        start = len(prefix)
        names = [
            n for n in self._listing(flow, run, step, task) if n.startswith(prefix) and n[start:-5].isdigit()
        ]
        return self._events(flow, run, step, task, names)

    def _events(self, flow: str, run: str, step: str, task: str, names: List[str]) -> List[dict]:
        meta_dir = self._meta_dir(flow, run, step, task)
        events = []
        for n in names:
            if n.endswith(".json"):
                r = _read_json(os.path.join(meta_dir, n))
                events.append(
                    {
                        "field_name": r["field_name"],
                        "value": r["value"],
                        "type": r.get("type"),
                        "ts_epoch": r["ts_epoch"],
                        "tags": r.get("tags") or [],
                    }
                )
        return events

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
