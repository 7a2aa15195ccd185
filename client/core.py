"""The object model: Metaflow's Client API (Metaflow → Flow → Run → Step → Task → DataArtifact), from scratch.

Semantics follow metaflow.client.core 2.19 exactly: pathspecs, namespaces and tags, newest-first iteration,
attempts, `successful/finished`, metadata, logs, code packages, parent/child tasks and errors. Everything is read
through a metadata provider (wrapped by `client.cache.CachingProvider`) and the datastore layer; objects read
lazily, so iterating a step's tasks costs one listing until a task is looked into.

One module per level: client/base.py (MetaflowObject), client/artifact.py, client/task.py, and here Step, Run,
Flow and Metaflow, where the levels are linked. `client.core` stays the object model's public home, as
`metaflow.client.core` is Metaflow's: it exports every class, and what mffs imports from it of the settings
(client/context.py) and of value loading (client/values.py).
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple

from .artifact import DataArtifact
from .base import MetaflowObject
from .code import MetaflowCode
from .context import current_context, current_provider, restore_context
from .exceptions import MetaflowNamespaceMismatch
from .peers import newest
from .pickled_classes import register_client_classes
from .task import Metadata, MetaflowData, Task, previous_steps
from .values import NOT_A_SCALAR, internal_value, load_stored

if TYPE_CHECKING:  # imported when first needed
    from datetime import datetime

__all__ = [
    "DataArtifact", "Flow", "Metadata", "Metaflow", "MetaflowCode", "MetaflowData", "MetaflowObject", "Run", "Step",
    "Task", "NOT_A_SCALAR", "load_stored", "current_context", "restore_context",
]


class Step(MetaflowObject):
    _NAME = "step"
    _DEPTH = 3
    _PATHSPEC_FORM = "Step('FlowName/RunID/StepName')"

    @staticmethod
    def _id_of(record: dict) -> str:
        return record["step_name"]

    @property
    def task(self) -> Optional[Task]:
        return self._alone(next(iter(self), None))  # the newest

    def tasks(self, *tags: str) -> Iterator[Task]:
        return self._filtered_children(*tags)  # type: ignore[return-value]

    def task_ids_and_times(self) -> Iterator[Tuple[str, int]]:
        """(task id, creation time in epoch ms) of each task, in the order iterating the step gives its tasks,
        without a Task object per task: what listing a step of 100,000 tasks needs."""
        for record in self._listed_records():
            yield record["task_id"], record["ts_epoch"]

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
        graph = internal_value(self.task["_graph_info"])
        if self.id != graph.get("start_step", "start"):
            flow, run, _ = self._components
            for name in previous_steps(graph, self.id):
                yield Step("%s/%s/%s" % (flow, run, name), _namespace_check=False)

    @property
    def child_steps(self) -> Iterator["Step"]:
        graph = internal_value(self.task["_graph_info"])
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
        record = newest(self._provider.tasks(*self._components, step))
        if record is None:
            return None
        return Task(
            pathspec="/".join(self._components + [step, record["task_id"]]),
            _object=record,
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
            ns = self._current_namespace
            runs = [r for r in runs if ns in r["tags"] or ns in r["system_tags"]]
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
        return self._alone(next(iter(self), None))  # the newest in the namespace, running or not

    @property
    def latest_successful_run(self) -> Optional[Run]:
        for run in self:
            if run.successful:
                return self._alone(run)
        return None

    def runs(self, *tags: str) -> Iterator[Run]:
        return self._filtered_children(*tags)  # type: ignore[return-value]


class Metaflow:
    """The root: every flow with at least one run in the current namespace (in the provider's order)."""

    def __init__(self, _current_metadata: Optional[str] = None):
        self.metadata = current_provider()

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


Flow._CHILD, Run._CHILD, Step._CHILD, Task._CHILD = Run, Step, Task, DataArtifact
Run._PARENT, Step._PARENT, Task._PARENT, DataArtifact._PARENT = Flow, Run, Step, Task
# The classes' public home stays client.core, as when the object model was one module: reprs and pickles name it.
for _cls in (MetaflowObject, DataArtifact, MetaflowData, MetaflowCode, Metadata, Task, Step, Run, Flow, Metaflow):
    _cls.__module__ = __name__
register_client_classes({cls.__name__: cls for cls in (Flow, Run, Step, Task, DataArtifact)})
