"""The directories of flows, runs and steps: the root (all flows), a flow with its `latest*` links and tags/, a
run (run.json, parameters.json, code/) and a step (step.json and its tasks).

A run or task whose `_task_ok` cannot be loaded is listed, as not finished (its run.json or task.json is EIO);
`latest_successful` skips runs whose `_success` cannot be loaded; a run whose code package is corrupt lists its
files and steps without code/ (code/ answers EIO).
"""
from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from .. import render
from .code import CODE_DIR, CodeArchive, CodeDir
from .nodes import (
    Dir,
    Node,
    RenderedFile,
    SubdirEntries,
    Symlink,
    built_nodes,
    client_errors,
    join,
)
from .tasks import TaskDir

if TYPE_CHECKING:
    from .tree import Tree

_UNKNOWN = object()


def run_finished(run: Any, path: str) -> bool:
    """Whether the run finished; False when its end task's `_task_ok` cannot be read (logged): then run.json alone
    fails, and the run's directories are re-read as those of a running run."""
    try:
        with client_errors(path):
            return bool(run.finished)
    except OSError:
        return False


class RootDir(Dir):
    """All flows with at least one run in the namespace."""

    def children(self) -> List[Node]:
        with client_errors(self.path):
            records = self.tree.client.Metaflow().metadata.flows()
        return built_nodes(self._flow, records)

    def _flow(self, record: dict) -> Node:
        # as Metaflow() iterates, but one flow at a time: a flow out of the namespace is ENOENT, a bad one EIO
        path = join(self.path, record["flow_id"])
        with client_errors(path):
            flow = self.tree.client.Flow(_object=record, pathspec=record["flow_id"])
        return FlowDir(self.tree, path, flow)

    def child(self, name: str) -> Node:
        with client_errors(join(self.path, name)):
            flow = self.tree.client.Flow(name)
        return FlowDir(self.tree, join(self.path, name), flow)


class FlowDir(Dir):
    """latest, latest_successful, tags/ and the flow's runs in the namespace (newest first)."""

    def __init__(self, tree: "Tree", path: str, flow: Any):
        with client_errors(path):
            mtime = flow.created_epoch
        super().__init__(tree, path, mtime, stable=False)
        self.flow = flow
        # what the last listing showed: run id -> run, and the links it made
        self._listed: Dict[str, Any] = {}
        self._links: Dict[str, Symlink] = {}

    def _runs(self) -> List[Any]:
        with client_errors(self.path):
            return list(self.flow)

    def _link(self, name: str, run: Any) -> Symlink:
        return Symlink(self.tree, join(self.path, name), run.created_epoch, False, run.id)

    def _latest_successful(self, runs: List[Any]) -> Optional[Any]:
        """Flow.latest_successful_run, skipping the runs whose `_success` cannot be read (logged)."""
        for run in runs:
            try:
                with client_errors(join(self.path, run.id)):
                    if run.successful:
                        return run
            except OSError:
                continue
        return None

    def entries(self) -> SubdirEntries:
        """latest, latest_successful and tags/ as nodes, then the runs by name and time (SubdirEntries), remembered
        with this node for `child`: a listing of 10,000 runs builds no node per run, nor floods the tree's cache of
        live nodes (which would push out this directory and its links before the `readlink` after `ls -l`)."""
        runs = self._runs()
        links = {}
        if runs:
            links["latest"] = self._link("latest", runs[0])
            successful = self._latest_successful(runs)
            if successful is not None:
                links["latest_successful"] = self._link("latest_successful", successful)
        head: List[Node] = [*links.values(), TagsDir(self.tree, join(self.path, "tags"), self.mtime, self.flow)]
        self._listed, self._links = {run.id: run for run in runs}, links
        return SubdirEntries(self.path, head, list(self._listed), array("d", (run.created_epoch for run in runs)),
                             False)

    def children(self) -> List[Node]:
        entries = self.entries()
        return [*entries.head, *(self.child(name) for name in entries.names)]

    def child(self, name: str) -> Node:
        if name == "tags":
            return TagsDir(self.tree, join(self.path, name), self.mtime, self.flow)
        if name in self._links:
            return self._links[name]
        if name in self._listed:
            return ListedRunDir(self.tree, join(self.path, name), self._listed[name])
        with client_errors(join(self.path, name)):
            if name == "latest":
                run = self.flow.latest_run
            elif name == "latest_successful":
                run = self._latest_successful(self._runs())
            else:
                return ListedRunDir(self.tree, join(self.path, name), self.flow[name])
        if run is None:
            raise self._missing(name)
        return self._link(name, run)


class ListedRunDir(Dir):
    """A run as its flow shows it: attributes from the run record alone. Whether a run finished (what makes its
    RunDir stable) means reading its end task, which `ls -l` of a flow of thousands of runs must not do per run:
    the RunDir is built once the run itself is listed or a name in it looked up, and from then on this node is as
    stable as the RunDir is."""

    def __init__(self, tree: "Tree", path: str, run: Any):
        super().__init__(tree, path, run.created_epoch, stable=False)
        self.run = run
        self._run_dir: Optional[RunDir] = None

    def _resolved(self) -> "RunDir":
        if self._run_dir is None:
            self._run_dir = RunDir(self.tree, self.path, self.run)
            self.stable = self._run_dir.stable
        return self._run_dir

    def children(self) -> List[Node]:
        return self._resolved().children()

    def entries(self) -> List[Any]:
        return self._resolved().entries()

    def child(self, name: str) -> Node:
        return self._resolved().child(name)


class TagsDir(Dir):
    """One directory per tag (user and system) of the flow's runs in the namespace."""

    def __init__(self, tree: "Tree", path: str, mtime: float, flow: Any):
        super().__init__(tree, path, mtime, stable=False)
        self.flow = flow

    def children(self) -> List[Node]:
        with client_errors(self.path):
            tags = sorted({tag for run in self.flow for tag in run.tags})
        return [TagDir(self.tree, join(self.path, render.encode_tag(tag)), self.mtime, self.flow, tag) for tag in tags]

    def child(self, name: str) -> Node:
        tag = render.decode_tag(name)
        node = TagDir(self.tree, join(self.path, name), self.mtime, self.flow, tag)
        if not node.children():
            raise self._missing(name)
        return node


class TagDir(Dir):
    """<run id> -> ../../<run id> for every run having the tag."""

    def __init__(self, tree: "Tree", path: str, mtime: float, flow: Any, tag: str):
        super().__init__(tree, path, mtime, stable=False)
        self.flow = flow
        self.tag = tag

    def children(self) -> List[Node]:
        with client_errors(self.path):
            return [
                Symlink(self.tree, join(self.path, run.id), run.created_epoch, False, "../../" + run.id)
                for run in self.flow.runs(self.tag)
            ]

    def child(self, name: str) -> Node:
        for node in self.children():
            if node.name == name:
                return node
        raise self._missing(name)


class RunDir(Dir):
    """run.json, parameters.json, code/ (only when the run has a code package) and the run's steps (`_parameters`
    hidden). A step named `code` wins over the code package: a name the flow chose is never made unreachable."""

    def __init__(self, tree: "Tree", path: str, run: Any):
        with client_errors(path):
            mtime = run.created_epoch
        super().__init__(tree, path, mtime, run_finished(run, path))
        self.run = run
        self._archive: Any = _UNKNOWN  # CodeArchive, or None without a code package; read once per node

    def _files(self) -> List[Node]:
        run, stable, mtime, tree = self.run, self.stable, self.mtime, self.tree
        return [
            RenderedFile(
                self.tree, join(self.path, "run.json"), mtime, stable, lambda: render.json_bytes(render.run_record(run))
            ),
            RenderedFile(
                self.tree,
                join(self.path, "parameters.json"),
                mtime,
                stable,
                lambda: render.json_bytes(render.parameters_record(run, tree.record_value)),
            ),
        ]

    def _code_dir(self) -> Optional[Node]:
        path = join(self.path, CODE_DIR)
        if self._archive is _UNKNOWN:
            with client_errors(path, object_lookup=False):
                code = self.tree.code_package(self.run)
                self._archive = CodeArchive(self.run, code) if code is not None else None
        if self._archive is None:
            return None
        return CodeDir(self.tree, path, self.mtime, self._archive, ())

    def children(self) -> List[Node]:
        with client_errors(self.path):
            steps = list(self.run)
        nodes = self._files()
        if CODE_DIR not in {step.id for step in steps}:
            try:
                code = self._code_dir()
            except OSError:
                code = None  # a corrupt code package (logged): code/ alone is left out, and EIO by name
            if code is not None:
                nodes.append(code)
        return nodes + built_nodes(lambda step: StepDir(self.tree, join(self.path, step.id), step, self.stable), steps)

    def child(self, name: str) -> Node:
        for node in self._files():
            if node.name == name:
                return node
        path = join(self.path, name)
        try:
            with client_errors(path):
                step = self.run[name]
        except FileNotFoundError:
            code = self._code_dir() if name == CODE_DIR else None
            if code is None:
                raise
            return code
        return StepDir(self.tree, path, step, self.stable)


class StepDir(Dir):
    """step.json and the step's tasks (newest first)."""

    def __init__(self, tree: "Tree", path: str, step: Any, stable: bool):
        with client_errors(path):
            mtime = step.created_epoch
        super().__init__(tree, path, mtime, stable)
        self.step = step

    def _step_json(self, tasks: Optional[int] = None) -> Node:
        """step.json; `tasks`, the step's number of tasks, when the caller knows it."""
        step, tree = self.step, self.tree
        most = tree.settings.step_json_eager_tasks
        return RenderedFile(
            tree,
            join(self.path, "step.json"),
            self.mtime,
            self.stable,
            lambda: render.json_bytes(render.step_record(step)),
            # its finished_at reads every task's `_task_ok`: a glob such as `body/*/x` stats step.json too
            eager=tasks <= most if tasks is not None else lambda: sum(1 for _ in step.task_ids_and_times()) <= most,
        )

    def entries(self) -> SubdirEntries:
        """step.json and each task with its stat, as TaskDir would give it: no node is kept per task of a step that
        may have 100,000, no client Task is built for the listing (the step's task records, as ids and times), and
        each task's Entry is made when asked for (SubdirEntries); a task's node is built when looked up."""
        names: List[str] = []
        mtimes = array("d")
        with client_errors(self.path):
            for task_id, created_ms in self.step.task_ids_and_times():
                names.append(task_id)
                mtimes.append(created_ms / 1000.0)
        return SubdirEntries(self.path, [self._step_json(len(names))], names, mtimes, self.stable)

    def child(self, name: str) -> Node:
        if name == "step.json":
            return self._step_json()
        path = join(self.path, name)
        with client_errors(path):
            task = self.step[name]
        return TaskDir(self.tree, path, task, self.stable)
