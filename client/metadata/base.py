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
record (local step/task files hold stale copies, which are never used). Errors other than "not found" are raised
as exceptions (OSError / MetaflowBackendError).

A source's rows are untrusted: the record builders below check the fields the object model relies on (ids are
non-empty names without '/', times are numbers, tags are lists of strings) and raise ValueError, KeyError or
TypeError (`RECORD_ERRORS`) for a malformed row. A provider leaves such a row out of a list, with one log line
naming it (`skip_record`), so one bad record hides only itself; looking it up by name raises
MetaflowInternalError naming it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, List, Optional, Sequence

from ..exceptions import MetaflowInternalError

#: what a record builder raises for a malformed row
RECORD_ERRORS = (ValueError, KeyError, TypeError)
_reported: set = set()


_NOT_NAMES = ("", ".", "..")
_NUMBERS = (int, float)
_OPTIONAL_STRINGS = (str, type(None))


def _all_str(items: list) -> bool:
    """Whether every item of `items` is a str (the common case of a short tag list, in one C call)."""
    try:
        "".join(items)
    except TypeError:
        return False
    return True


def _name(r: dict, key: str) -> str:
    """An id field as a string: a non-empty name without '/' (ints, as the service stores run and task ids)."""
    value = r[key]
    if type(value) is str and value and "/" not in value and value != "." and value != "..":
        return value
    if type(value) is int:
        return str(value)
    raise ValueError("%s is not a name: %r" % (key, value))


def _ts(r: dict) -> Any:
    value = r["ts_epoch"]
    if type(value) is not int and type(value) is not float:
        raise ValueError("ts_epoch is not a number: %r" % (value,))
    return value


def _strings(r: dict, key: str) -> List[str]:
    value = r.get(key) or []
    if not isinstance(value, list) or not _all_str(value):
        raise ValueError("%s is not a list of strings: %r" % (key, value))
    return value


def _string(r: dict, key: str, required: bool = False) -> Optional[str]:
    value = r[key] if required else r.get(key)
    if (value is not None or required) and not isinstance(value, str):
        raise ValueError("%s is not a string: %r" % (key, value))
    return value


def flow_record(r: dict) -> dict:
    return {"flow_id": _name(r, "flow_id"), "ts_epoch": _ts(r)}


def run_record(r: dict) -> dict:
    """A run record from a source's row (ids as strings, tags as lists)."""
    flow_id, run_number, ts = r["flow_id"], r["run_number"], r["ts_epoch"]
    if (type(flow_id) is not str or "/" in flow_id or flow_id in _NOT_NAMES or type(run_number) is not str
            or "/" in run_number or run_number in _NOT_NAMES or type(ts) not in _NUMBERS):
        flow_id, run_number, ts = _name(r, "flow_id"), _name(r, "run_number"), _ts(r)
    return {
        "flow_id": flow_id,
        "run_number": run_number,
        "user_name": r.get("user_name"),
        "tags": _strings(r, "tags"),
        "system_tags": _strings(r, "system_tags"),
        "ts_epoch": ts,
    }


def run_tags(r: dict) -> dict:
    """A row's run tags (`tags`, `system_tags`), checked to be lists of strings."""
    return {"tags": _strings(r, "tags"), "system_tags": _strings(r, "system_tags")}


def step_record(r: dict) -> dict:
    return {"step_name": _name(r, "step_name"), "ts_epoch": _ts(r)}


def task_record(r: dict) -> dict:
    task_id, ts = r["task_id"], r["ts_epoch"]
    if type(task_id) is not str or "/" in task_id or task_id in _NOT_NAMES or type(ts) not in _NUMBERS:
        task_id, ts = _name(r, "task_id"), _ts(r)  # an int id, or a malformed record: checked one by one
    return {"task_id": task_id, "ts_epoch": ts}


def artifact_record(r: dict) -> dict:
    """An artifact record from a source's row."""
    name, sha, content_type, location, ts = r["name"], r["sha"], r.get("content_type"), r.get("location"), r["ts_epoch"]
    if (type(name) is not str or "/" in name or name in _NOT_NAMES or type(sha) is not str
            or type(content_type) not in _OPTIONAL_STRINGS or type(location) not in _OPTIONAL_STRINGS
            or type(ts) not in _NUMBERS):
        # the uncommon case (a str subclass, an int name) or a malformed record: checked field by field
        name, sha, ts = _name(r, "name"), _string(r, "sha", required=True), _ts(r)
        content_type, location = _string(r, "content_type"), _string(r, "location")
    return {
        "name": name,
        "sha": sha,
        "content_type": content_type,
        "location": location,
        "ds_type": r.get("ds_type"),
        "attempt_id": int(r.get("attempt_id") or 0),
        "ts_epoch": ts,
    }


def event_record(r: dict) -> dict:
    """A metadata event from a source's row."""
    field_name, ts = r["field_name"], r["ts_epoch"]
    if type(field_name) is not str or type(ts) not in _NUMBERS:
        field_name, ts = _string(r, "field_name", required=True), _ts(r)
    tags = _strings(r, "tags")
    return {"field_name": field_name, "value": r["value"], "type": r.get("type"), "ts_epoch": ts, "tags": tags}


def skip_record(where: str, exc: BaseException) -> None:
    """Log, once per process and record, that a list leaves out the malformed or unreadable record `where`."""
    if where not in _reported and len(_reported) < 100_000:
        import logging  # only when a datastore has a bad record: `import client` stays light

        _reported.add(where)
        logging.getLogger("client").warning("left out %s: %s: %s", where, type(exc).__name__, exc)


def bad_record(where: str, exc: BaseException) -> MetaflowInternalError:
    """The error for looking up a malformed record by name."""
    return MetaflowInternalError("Malformed metadata record %s: %s: %s" % (where, type(exc).__name__, exc))


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

    def read_ahead_task(
        self, flow: str, run: str, step: str, task: str, attempt: Optional[int], public: bool,
        artifacts: Sequence[str], fields: Sequence[str],
    ) -> Optional[int]:
        """A hint (`Task.read_ahead`): the records of the task's public artifacts (when `public`), of the artifacts
        named in `artifacts` and the events of the metadata `fields` are about to be read. Returns the attempt
        whose artifacts were read ahead (`attempt`, or the latest finished one when None), None when nothing was.
        Nothing by default: a provider that answers each question with one request has nothing to start early."""
        return None
