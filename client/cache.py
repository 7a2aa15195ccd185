"""Caching between the object model and a metadata provider, by what can still change.

  immutable, kept in a bounded LRU     records that exist: flow, step, task, artifact of an explicit attempt;
                                       everything about a *final* task (its metadata, its artifact lists);
                                       the step and task lists of a *final* run
  short TTL (default 1 s)              flow and run lists, run records (tags can be mutated), missing objects,
                                       and everything about tasks and runs that are not final yet

A task is final once its `_task_ok` was read and is True (no retry can follow); a run once the object model saw
its end task complete (it calls `mark_run_final`). Finality is only ever learnt from reads made anyway. Lists are
taken as complete only once their newest record is older than a grace period, because local metadata is written
file by file.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Hashable, List, Optional, Sequence, Tuple

from cachetools import LRUCache

from .config import mffs_setting
from .metadata.base import MetadataProvider
from .recent import Recent

#: Artifact blobs are named by the sha1 of the pickle, so these values are known from a record alone:
#: sha1(pickle.dumps(value, protocol)) for protocols 4 (Metaflow's pickle-v4) and 2 (pickle-v2). `_task_ok`,
#: `_success` and `_exception` hold one of these in almost every task: they are never read nor unpickled.
KNOWN_VALUES = {
    "dbc1aaddc8b7343d6d33b34edcf608b8f8801918": None,
    "f3627f46179fdd95bf0e83101840fd1d71b60e40": None,
    "868436778cb011a1c6230bc12534683ab0b7f1c3": True,
    "69e77141c3eb7a8c9ce864251d70c02723f29332": True,
    "2473d4676d5b2aba674167293142f8031ada401b": False,
    "caa40ab420354941d2127f64360105b8548b8802": False,
}
_GRACE_MS = 5000
_ABSENT = object()  # cached answers may be None


def _approx_size(value: Any) -> int:
    """A cheap estimate of a cached answer's memory: records are small dicts of short strings."""
    if isinstance(value, list):
        return 64 + 400 * len(value)
    return 400


def _settled(records: List[dict]) -> bool:
    now_ms = time.time() * 1000
    return bool(records) and all(now_ms - r.get("ts_epoch", 0) > _GRACE_MS for r in records)


class CachingProvider(MetadataProvider):
    """Wraps any MetadataProvider with the caching policy above (thread-safe)."""

    def __init__(self, source: MetadataProvider, ttl: Optional[float] = None, max_bytes: Optional[int] = None):
        self.source = source
        self.TYPE = source.TYPE
        ttl = mffs_setting("TTL", 1.0) if ttl is None else ttl
        max_bytes = mffs_setting("METADATA_CACHE_MB", 256) * 2**20 if max_bytes is None else max_bytes
        self._ttl = ttl
        self._fresh = Recent(ttl, 100_000)
        #: (key, answer, deadline) of the last answer too large for the LRU (a step's 100,000 tasks), kept for the
        #: TTL only and then dropped, where `_fresh` would keep it until 100,000 other answers replaced it
        self._oversize: Optional[Tuple[Hashable, Any, float]] = None
        self._immutable: LRUCache = LRUCache(maxsize=max_bytes, getsizeof=_approx_size)
        self._final_tasks: LRUCache = LRUCache(maxsize=1_000_000)
        self._final_runs: set = set()
        self._lock = threading.RLock()

    # -- the two stores ------------------------------------------------------------------------------------------
    def _get(self, key: Hashable, fetch: Callable[[], Any], keep: Callable[[Any], bool]) -> Any:
        with self._lock:
            value = self._immutable.get(key, _ABSENT)
            if value is _ABSENT:
                value = self._fresh.fresh(key, _ABSENT)
            oversize = self._oversize
            if oversize is not None:
                if oversize[2] <= time.monotonic():
                    self._oversize = None
                elif oversize[0] == key:
                    value = oversize[1]
        if value is not _ABSENT:
            return value
        value = fetch()
        with self._lock:
            if _approx_size(value) > self._immutable.maxsize:  # the LRU refuses it
                self._oversize = (key, value, time.monotonic() + self._ttl)
            elif keep(value):
                self._immutable[key] = value
                self._fresh.pop(key)
            else:
                self._fresh.put(key, value)
        return value

    # -- finality ------------------------------------------------------------------------------------------------
    def mark_run_final(self, flow: str, run: str) -> None:
        with self._lock:
            self._final_runs.add((flow, run))

    def _run_final(self, flow: str, run: str) -> bool:
        return (flow, run) in self._final_runs

    def _task_final(self, key: Tuple[str, str, str, str]) -> bool:
        # Decided from what was already read (never an extra request just to decide what to keep).
        return key in self._final_tasks or self._run_final(key[0], key[1])

    def _note_task_ok(self, key: Tuple[str, str, str, str], record: Optional[dict]) -> bool:
        final = record is not None and KNOWN_VALUES.get(record["sha"]) is True and _settled([record])
        if final:
            with self._lock:
                self._final_tasks[key] = True
        return final

    # -- the provider interface ----------------------------------------------------------------------------------
    def info(self) -> str:
        return self.source.info()

    def datastore_root(self) -> Optional[str]:
        return self.source.datastore_root()

    def read_ahead_task(
        self, flow: str, run: str, step: str, task: str, attempt: Optional[int], public: bool,
        artifacts: Sequence[str], fields: Sequence[str],
    ) -> Optional[int]:
        """Passed on, unless the task's artifact list is cached: its records were read before, and reading them
        ahead again would read from the disk what the answers come from here."""
        key = ("artifacts", flow, run, step, task, attempt)
        with self._lock:
            if key in self._immutable or self._fresh.fresh(key, _ABSENT) is not _ABSENT:
                return None
        return self.source.read_ahead_task(flow, run, step, task, attempt, public, artifacts, fields)

    def flows(self) -> List[dict]:
        return self._get(("flows",), self.source.flows, lambda v: False)

    def flow(self, flow: str) -> Optional[dict]:
        return self._get(("flow", flow), lambda: self.source.flow(flow), lambda v: v is not None)

    def runs(self, flow: str) -> List[dict]:
        def fetch() -> List[dict]:
            runs = self.source.runs(flow)
            with self._lock:  # a run of the list looked up by name (each entry of `ls -l FLOW`) reads nothing more
                for record in runs:
                    self._fresh.put(("run", flow, record["run_number"]), record)
            return runs

        return self._get(("runs", flow), fetch, lambda v: False)

    def run(self, flow: str, run: str) -> Optional[dict]:
        return self._get(("run", flow, run), lambda: self.source.run(flow, run), lambda v: False)

    def steps(self, flow: str, run: str) -> List[dict]:
        return self._get(
            ("steps", flow, run), lambda: self.source.steps(flow, run), lambda v: self._run_final(flow, run)
        )

    def step(self, flow: str, run: str, step: str) -> Optional[dict]:
        return self._get(("step", flow, run, step), lambda: self.source.step(flow, run, step), lambda v: v is not None)

    def tasks(self, flow: str, run: str, step: str) -> List[dict]:
        return self._get(
            ("tasks", flow, run, step),
            lambda: self.source.tasks(flow, run, step),
            lambda v: self._run_final(flow, run),
        )

    def task(self, flow: str, run: str, step: str, task: str) -> Optional[dict]:
        return self._get(
            ("task", flow, run, step, task), lambda: self.source.task(flow, run, step, task), lambda v: v is not None
        )

    def artifacts(self, flow: str, run: str, step: str, task: str, attempt: Optional[int] = None) -> List[dict]:
        # A done attempt never changes; the latest finished one is known for good once the task is final.
        key = (flow, run, step, task)
        return self._get(
            ("artifacts",) + key + (attempt,),
            lambda: self.source.artifacts(flow, run, step, task, attempt),
            lambda v: _settled(v) and (attempt is not None or self._task_final(key)),
        )

    def artifact(
        self, flow: str, run: str, step: str, task: str, name: str, attempt: Optional[int] = None
    ) -> Optional[dict]:
        key = (flow, run, step, task)
        if attempt is not None:
            return self._get(
                ("artifact",) + key + (name, attempt),
                lambda: self.source.artifact(flow, run, step, task, name, attempt),
                lambda v: v is not None,
            )
        if name == "_task_ok":
            return self._get(
                ("artifact",) + key + (name, None),
                lambda: self.source.artifact(flow, run, step, task, name),
                lambda v: self._note_task_ok(key, v) or (v is not None and self._run_final(flow, run)),
            )
        return self._get(
            ("artifact",) + key + (name, None),
            lambda: self.source.artifact(flow, run, step, task, name),
            lambda v: v is not None and self._task_final(key),
        )

    def task_metadata(self, flow: str, run: str, step: str, task: str) -> List[dict]:
        key = (flow, run, step, task)
        return self._get(
            ("metadata",) + key,
            lambda: self.source.task_metadata(flow, run, step, task),
            lambda v: _settled(v) and self._task_final(key),
        )

    def task_metadata_field(self, flow: str, run: str, step: str, task: str, field_name: str) -> List[dict]:
        """The events of one field (see MetadataProvider.reads_single_fields)."""
        if not self.source.reads_single_fields:
            return [e for e in self.task_metadata(flow, run, step, task) if e["field_name"] == field_name]
        key = (flow, run, step, task)
        return self._get(
            ("metadata",) + key + (field_name,),
            lambda: self.source.task_metadata_field(flow, run, step, task, field_name),
            lambda v: _settled(v) and self._task_final(key),
        )

    def filtered_tasks(self, flow: str, run: str, step: str, field_name: str, pattern: str) -> List[str]:
        return self._get(
            ("filtered", flow, run, step, field_name, pattern),
            lambda: self.source.filtered_tasks(flow, run, step, field_name, pattern),
            lambda v: self._run_final(flow, run),
        )
