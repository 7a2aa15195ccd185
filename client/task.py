"""Task: one execution of a step, with its artifacts (`data`), metadata events, logs, code package, cards and
parent/child tasks in the flow's graph."""
from __future__ import annotations

from collections import namedtuple
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

from .base import MetaflowObject
from .cache import KNOWN_VALUES
from .code import MetaflowCode
from .datastore import CardStore, FlowDatastore, confine_root
from .storage.base import OutsideDatastore
from .values import internal_value

if TYPE_CHECKING:  # imported when first needed
    from datetime import datetime


Metadata = namedtuple("Metadata", ["name", "value", "created_at", "type", "task"])

#: what each property `Task.read_ahead` knows reads: (internal artifacts, metadata fields); "artifacts" also reads
#: the public artifacts' records and their attempt's index (their stored types and sizes)
_PROPERTY_READS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "artifacts": ((), ()),
    "exception": (("_exception",), ()),
    "finished": (("_task_ok",), ()),
    "successful": (("_success",), ()),
    "current_attempt": ((), ("attempt",)),
    "cards": ((), ("origin-task-id", "ds-root")),
}


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

    def _value(self, name: str, missing: Any) -> Any:
        try:
            artifact = self[name]
        except KeyError:
            return missing
        # `_exception` is None and `_task_ok` True in almost every task: their blobs need not be read
        sha = artifact.sha
        return KNOWN_VALUES[sha] if sha in KNOWN_VALUES else internal_value(artifact)

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
            return internal_value(self["_foreach_stack"])[-1].index
        except (KeyError, IndexError):
            return None

    @property
    def runtime_name(self) -> Optional[str]:
        for tag in self.tags:
            if tag.startswith("runtime:"):
                return tag.split(":")[1]
        return None

    def read_ahead(self, *properties: str) -> None:
        """A hint that the caller is about to ask for these properties ("artifacts": the list, with each one's
        stored type; "exception", "finished", "successful", "current_attempt", "cards"). A local datastore keeps
        each record the answers come from in a file of its own: they are all asked of the disk now, so the
        questions that follow wait for it once rather than once a file (docs/benchmarks.md). Answers do not
        change; nothing is raised (the questions meet and report what cannot be read)."""
        reads = [_PROPERTY_READS[name] for name in properties]
        artifacts = [artifact for names, _ in reads for artifact in names]
        fields = [field for _, names in reads for field in names]
        flow, run, step, task = self._components
        try:
            attempt = self._provider.read_ahead_task(
                flow, run, step, task, self._attempt, "artifacts" in properties, artifacts, fields
            )
            root = self._provider.datastore_root()
            if attempt is not None and root and "artifacts" in properties:
                FlowDatastore.at(confine_root(root, self._provider), flow).read_ahead_index(run, step, task, attempt)
        except Exception:  # noqa: BLE001 - a hint: the questions meet and report the same errors
            pass

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
        if len(events) == 1:  # the common case: one event of the field
            return events[0]["value"]
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
        graph = internal_value(self["_graph_info"])
        steps = previous_steps(graph, step)
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
        graph = internal_value(self["_graph_info"])
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
            if len(previous_steps(graph, steps[0])) > 1:
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


def previous_steps(graph: dict, step: str) -> List[str]:
    """The steps of the flow's graph (`_graph_info`) whose next steps include `step`."""
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
