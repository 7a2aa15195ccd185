"""The metadata layer: one provider per source (Metaflow's local `_meta` files, the metadata service).

Providers return plain dicts ("records") normalised across sources, so the object model never sees
which one it talks to. Ids are always strings, times are epoch milliseconds (ints), missing objects are
None (single objects) or [] (lists). Every list is returned in the provider's natural order (filesystem
or database order); the object model sorts.

Records:
  flow      {"flow_id", "ts_epoch"}
  run       {"flow_id", "run_number", "user_name", "tags": [...], "system_tags": [...], "ts_epoch"}
  step      {"step_name", "ts_epoch"}
  task      {"task_id", "ts_epoch"}
  artifact  {"name", "sha", "content_type", "location", "ds_type", "attempt_id": int, "ts_epoch"}
  metadata  {"field_name", "value", "type", "ts_epoch", "tags": [...]}   (value as the source stores it;
            `foreach-stack` is normalised to a list of "var=value" strings)

The run's tags are authoritative. Steps, tasks and artifacts carry them as "tags"/"system_tags" only when the
source serves the run's current tags with each row (the service does); otherwise the object model reads the run
record (local step/task files hold stale copies, which are never used). Errors other than "not found" are raised as exceptions (OSError / MetaflowBackendError).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Optional


def run_record(r: dict) -> dict:
    """A run record from a source's row (ids as strings, tags as lists)."""
    return {
        "flow_id": r["flow_id"],
        "run_number": str(r["run_number"]),
        "user_name": r.get("user_name"),
        "tags": r.get("tags") or [],
        "system_tags": r.get("system_tags") or [],
        "ts_epoch": r["ts_epoch"],
    }


def artifact_record(r: dict) -> dict:
    """An artifact record from a source's row."""
    return {
        "name": r["name"],
        "sha": r["sha"],
        "content_type": r.get("content_type"),
        "location": r.get("location"),
        "ds_type": r.get("ds_type"),
        "attempt_id": int(r.get("attempt_id") or 0),
        "ts_epoch": r["ts_epoch"],
    }


class MetadataProvider(ABC):
    #: 'local' or 'service', as in Metaflow's `get_metadata()` answer '<TYPE>@<info>'
    TYPE: str = ""

    @abstractmethod
    def info(self) -> str:
        """The part after '@' in get_metadata(): the local root's parent directory, or the service URL."""

    @abstractmethod
    def flows(self) -> List[dict]: ...

    @abstractmethod
    def flow(self, flow: str) -> Optional[dict]: ...

    @abstractmethod
    def runs(self, flow: str) -> List[dict]: ...

    @abstractmethod
    def run(self, flow: str, run: str) -> Optional[dict]: ...

    @abstractmethod
    def steps(self, flow: str, run: str) -> List[dict]: ...

    @abstractmethod
    def step(self, flow: str, run: str, step: str) -> Optional[dict]: ...

    @abstractmethod
    def tasks(self, flow: str, run: str, step: str) -> List[dict]: ...

    @abstractmethod
    def task(self, flow: str, run: str, step: str, task: str) -> Optional[dict]: ...

    @abstractmethod
    def artifacts(self, flow: str, run: str, step: str, task: str, attempt: Optional[int] = None) -> List[dict]:
        """The public artifacts of `attempt`, or of the latest *finished* attempt when None: what iterating a
        Task shows. The internal `_` ones (most of a task's) are reached by name only, with `artifact`."""

    @abstractmethod
    def artifact(
        self, flow: str, run: str, step: str, task: str, name: str, attempt: Optional[int] = None
    ) -> Optional[dict]: ...

    @abstractmethod
    def task_metadata(self, flow: str, run: str, step: str, task: str) -> List[dict]:
        """Every metadata event of every attempt."""

    #: True for a provider whose `task_metadata_field(flow, run, step, task, field_name)` reads less than
    #: `task_metadata` (local: only that field's files). For any other, the caching provider filters the full list,
    #: which it fetches once (a service answers every field in one request).
    reads_single_fields = False

    @abstractmethod
    def filtered_tasks(self, flow: str, run: str, step: str, field_name: str, pattern: str) -> List[str]:
        """Ids of the step's tasks having a `field_name` event whose value matches the regex `pattern` in full
        (`.*` matches every task, with or without the field)."""

    def datastore_root(self) -> Optional[str]:
        """The datastore root to use when a task has no `ds-root` metadata (local provider: its own root)."""
        return None
