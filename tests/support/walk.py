"""Walk a Client API implementation (`metaflow` or our `client`) over a test datastore and record everything it
returns as plain JSON, so two implementations can be compared field by field.

Run in a subprocess, once per implementation:

    python -m tests.support.walk walk --api metaflow --root ROOT_PARENT --out walk.json
    python -m tests.support.walk walk --api client --root ROOT_PARENT --out walk.json --block-metaflow
    python -m tests.support.walk environment --api client --out env.json --block-metaflow

`--block-metaflow` makes every `import metaflow...` fail (and records the attempt), so our client is walked
exactly as it runs where Metaflow is not installed. The environment (USER, METAFLOW_DATASTORE_SYSROOT_LOCAL,
METAFLOW_CLIENT_CACHE_PATH...) is the caller's.

Recorded values are "comparable": JSON with the type kept where it matters (tuple vs list, bytes, datetime...),
errors as `{"error": [class name, str(error)]}`, children of iterations as groups of equal `created_at` (the
order inside such a group is the backend's listing order, which nobody promises).
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import hashlib
import importlib
import importlib.abc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, List, Optional

from tests.support.datastores import STANDARD_SCENARIOS, load_manifest

# Namespaces walked: label -> argument of namespace(). "default" is the user's (alice's) namespace.
NAMESPACES = {"default": "<default>", "user:bob": "user:bob", "tag:mytag": "mytag", "tag:failtag": "failtag",
              "tag:nosuchtag": "nosuchtag", "None": None}
# Artifacts whose values are not walked: loading `evil` runs code (tests check it separately).
UNSAFE_ARTIFACTS = frozenset({"evil"})
# Internal artifacts read by name (iteration hides `_`-prefixed ones).
INTERNAL_ARTIFACTS = ("_task_ok", "_success", "_exception", "_foreach_stack", "_transition", "_graph_info",
                      "_current_step", "_foreach_var", "_foreach_num_splits", "_foreach_values",
                      "_iteration_stack", "_catch_exception")
MAX_ATTEMPTS = 6
_ADDRESS_RE = re.compile(r" at 0x[0-9a-f]+")


# -- comparable values ----------------------------------------------------------------------------------------

def _sort_key(item: Any) -> str:
    return json.dumps(item, sort_keys=True)


def comparable(value: Any) -> Any:
    """A JSON form of `value` that is equal for equal values from either implementation."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return {"float": repr(value)}
    if kind is bytes:
        if len(value) <= 256:
            return {"bytes": repr(value)}
        return {"bytes_sha1": [len(value), hashlib.sha1(value).hexdigest()]}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {"namedtuple": [kind.__name__, {f: comparable(getattr(value, f)) for f in value._fields}]}
    if kind in (list, tuple):
        return {kind.__name__: [comparable(v) for v in value]}
    if kind is dict:
        return {"dict": sorted(([comparable(k), comparable(v)] for k, v in value.items()), key=_sort_key)}
    if kind in (set, frozenset):
        return {kind.__name__: sorted((comparable(v) for v in value), key=_sort_key)}
    if isinstance(value, BaseException):
        attrs = {k: comparable(v) for k, v in sorted(vars(value).items()) if not k.startswith("_")}
        return {"exception": {"class": kind.__name__, "str": str(value), "attrs": attrs}}
    if kind in (datetime.datetime, datetime.date, datetime.time, datetime.timedelta):
        return {kind.__name__: str(value)}
    if kind is decimal.Decimal:
        return {"Decimal": str(value)}
    package = kind.__module__.split(".")[0]
    if package == "numpy":
        return {"numpy": {"class": kind.__name__, "dtype": str(value.dtype), "shape": list(getattr(value, "shape", ())),
                          "values": comparable(value.tolist())}}
    if package == "pandas" and kind.__name__ == "DataFrame":
        return {"DataFrame": {"columns": comparable(list(value.columns)), "dtypes": [str(d) for d in value.dtypes],
                              "values": comparable(value.to_dict("list"))}}
    if package == "pandas" and kind.__name__ == "Series":
        return {"Series": {"name": comparable(value.name), "dtype": str(value.dtype),
                           "index": comparable(value.index.tolist()), "values": comparable(value.tolist())}}
    if package == "PIL":
        return {"PIL.Image": {"mode": value.mode, "size": list(value.size),
                              "sha1": hashlib.sha1(value.tobytes()).hexdigest()}}
    return {"object": {"class": kind.__name__, "repr": _ADDRESS_RE.sub("", repr(value))}}


def capture(get: Callable[[], Any], convert: Callable[[Any], Any] = comparable) -> Any:
    """`convert(get())`, or the error it raised as `{"error": [class name, message]}`."""
    try:
        return convert(get())
    except Exception as error:  # every error is a recorded result here
        return {"error": [type(error).__name__, str(error)]}


def _pathspec(obj: Any) -> Optional[str]:
    return None if obj is None else obj.pathspec


def _str(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _public_names(data: Any) -> List[str]:
    """The artifact names `dir(MetaflowData)` lists (the rest of `dir()` is the implementation's)."""
    return sorted(name for name in dir(data) if not name.startswith("_"))


def order_groups(children: Iterable[Any]) -> List[List[str]]:
    """Ids in iteration order, grouped by equal `created_at` (ties have no defined order, so sorted)."""
    groups: List[List[str]] = []
    last = object()
    for child in children:
        if child.created_at != last:
            groups.append([])
            last = child.created_at
        groups[-1].append(child.id)
    return [sorted(group) for group in groups]


# -- the walk -------------------------------------------------------------------------------------------------

class Walker:
    def __init__(self, api: ModuleType, root_parent: Path):
        self.api = api
        self.root_parent = Path(root_parent)
        self.manifest = load_manifest(root_parent)
        self.runs = self.manifest["runs"]
        self.flow_names = sorted({r["flow"] for r in self.runs.values()})
        self.timings: dict = {}

    def timed(self, label: str, walk: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return walk()
        finally:
            self.timings[label] = round(time.perf_counter() - started, 3)

    def walk(self) -> dict:
        """Everything, keyed by section (a section is one comparison unit for the tests)."""
        sections = {"state": self.timed("state", self.state)}
        for label, ns in NAMESPACES.items():
            self.set_namespace(ns)
            sections["ns:%s" % label] = self.timed("ns:%s" % label, self.namespace_view)
        self.set_namespace("<default>")
        sections["lookups"] = self.timed("lookups", self.lookups)
        self.api.namespace(None)
        for scenario in STANDARD_SCENARIOS:
            sections["run:%s" % scenario] = self.timed(
                "run:%s" % scenario, lambda: self.run_view(self.api.Run(self.runs[scenario]["pathspec"]), deep=True))
        return sections

    def set_namespace(self, ns: Optional[str]) -> None:
        if ns == "<default>":
            self.api.default_namespace()
        else:
            self.api.namespace(ns)

    # module-level functions
    def state(self) -> dict:
        api = self.api
        root = str(self.root_parent)
        out = {
            "get_metadata": capture(api.get_metadata),
            "get_namespace": capture(api.get_namespace),
            "default_namespace": capture(api.default_namespace),
            "default_metadata": capture(api.default_metadata),
            "namespace(None)": capture(lambda: api.namespace(None)),
            "get_namespace after namespace(None)": capture(api.get_namespace),
            "namespace(user:bob)": capture(lambda: api.namespace("user:bob")),
            "metadata(local@root)": capture(lambda: api.metadata("local@" + root)),
            "metadata(root)": capture(lambda: api.metadata(root)),
            "metadata(local@missing)": capture(lambda: api.metadata("local@/nonexistent/mffs")),
            "get_metadata after missing": capture(api.get_metadata),
        }
        api.metadata("local@" + root)
        api.default_namespace()
        return out

    def namespace_view(self) -> dict:
        api = self.api
        out = {
            "get_namespace": capture(api.get_namespace),
            "Metaflow().flows": capture(lambda: sorted(f.id for f in api.Metaflow().flows)),
            "iter(Metaflow())": capture(lambda: sorted(f.id for f in api.Metaflow())),
            "str(Metaflow())": capture(lambda: str(api.Metaflow())),
            "Metaflow()[KitchenFlow]": capture(lambda: api.Metaflow()["KitchenFlow"].pathspec),
        }
        for name in self.flow_names + ["NoSuchFlow"]:
            out["flow:" + name] = capture(lambda: self.flow_view(api.Flow(name)), convert=lambda v: v)
        for scenario, record in self.runs.items():
            out["run:" + scenario] = capture(lambda: self.run_view(api.Run(record["pathspec"]), deep=False),
                                             convert=lambda v: v)
        return out

    def common(self, obj: Any) -> dict:
        return {
            "id": capture(lambda: obj.id),
            "pathspec": capture(lambda: obj.pathspec),
            "str": capture(lambda: str(obj)),
            "repr": capture(lambda: repr(obj)),
            "path_components": capture(lambda: obj.path_components),
            "created_at": capture(lambda: str(obj.created_at)),
            "tags": capture(lambda: sorted(obj.tags)),
            "user_tags": capture(lambda: sorted(obj.user_tags)),
            "system_tags": capture(lambda: sorted(obj.system_tags)),
            "origin_pathspec": capture(lambda: obj.origin_pathspec),
            "parent": capture(lambda: _pathspec(obj.parent)),
        }

    def flow_view(self, flow: Any) -> dict:
        run_ids = [r["run_id"] for r in self.runs.values() if r["flow"] == flow.id] + ["123"]
        tag_queries = [(), ("mytag",), ("mytag", "exp:1"), ("mytag", "failtag"), ("failtag",), ("resumetag",),
                       ("user:bob",), ("runtime:dev",)]
        return {
            **self.common(flow),
            "runs": capture(lambda: order_groups(flow)),
            "runs(*tags)": {",".join(tags): capture(lambda: order_groups(flow.runs(*tags))) for tags in tag_queries},
            "latest_run": capture(lambda: _pathspec(flow.latest_run)),
            "latest_successful_run": capture(lambda: _pathspec(flow.latest_successful_run)),
            "in": {run_id: capture(lambda: run_id in flow) for run_id in run_ids},
            "getitem": {run_id: capture(lambda: flow[run_id].pathspec) for run_id in run_ids},
        }

    def run_view(self, run: Any, deep: bool) -> dict:
        out = {
            **self.common(run),
            "finished_at": capture(lambda: _str(run.finished_at)),
            "successful": capture(lambda: run.successful),
            "finished": capture(lambda: run.finished),
            "end_task": capture(lambda: _pathspec(run.end_task)),
            "steps": capture(lambda: order_groups(run)),
            "steps()": capture(lambda: order_groups(run.steps())),
            "_parameters in run": capture(lambda: "_parameters" in run),
            "nostep in run": capture(lambda: "nostep" in run),
            "run[nostep]": capture(lambda: run["nostep"].pathspec),
            "step:_parameters": capture(lambda: self.step_view(run["_parameters"], deep), convert=lambda v: v),
        }
        for step in run:
            out["step:" + step.id] = self.step_view(step, deep)
        if deep:
            out["data"] = capture(lambda: None if run.data is None else _public_names(run.data))
            out["code"] = capture(lambda: self.code_view(run.code), convert=lambda v: v)
            out["trigger"] = capture(lambda: run.trigger)
        return out

    def step_view(self, step: Any, deep: bool) -> dict:
        out = {
            **self.common(step),
            "finished_at": capture(lambda: _str(step.finished_at)),
            "task": capture(lambda: _pathspec(step.task)),
            "tasks": capture(lambda: order_groups(step)),
            "tasks()": capture(lambda: order_groups(step.tasks())),
            "step[999999]": capture(lambda: step["999999"].pathspec),
        }
        if deep:
            out.update({
                "parent_steps": capture(lambda: sorted(s.id for s in step.parent_steps)),
                "child_steps": capture(lambda: sorted(s.id for s in step.child_steps)),
                "environment_info": capture(lambda: step.environment_info),
            })
        for task in step:
            out["task:" + task.id] = self.task_view(task, deep)
            out["in:" + task.id] = capture(lambda: task.id in step)
            out["getitem:" + task.id] = capture(lambda: step[task.id].pathspec)
        return out

    def task_view(self, task: Any, deep: bool) -> dict:
        out = {}
        if deep:
            # Attempt-specific reads first: Metaflow's `stdout_size` poisons its cache for explicit attempts
            # (tests/test_client_bugs.py).
            out["attempts"] = capture(lambda: self.attempts_view(task), convert=lambda v: v)
        out.update({
            **self.common(task),
            "finished_at": capture(lambda: _str(task.finished_at)),
            "finished": capture(lambda: task.finished),
            "successful": capture(lambda: task.successful),
            "exception": capture(lambda: task.exception),
            "index": capture(lambda: task.index),
            "current_attempt": capture(lambda: task.current_attempt),
            "artifacts": capture(lambda: sorted(a.id for a in task)),
        })
        if deep:
            out.update(self.task_details(task))
        return out

    def task_details(self, task: Any) -> dict:
        names = sorted(a.id for a in task)
        out = {
            "metadata": capture(lambda: self.metadata_view(task.metadata)),
            "metadata_dict": capture(lambda: task.metadata_dict),
            "stdout": capture(lambda: task.stdout),
            "stderr": capture(lambda: task.stderr),
            "stdout_size": capture(lambda: task.stdout_size),
            "stderr_size": capture(lambda: task.stderr_size),
            "loglines(stdout)": capture(lambda: [[_str(ts), line] for ts, line in task.loglines("stdout")]),
            "loglines(stderr)": capture(lambda: [[_str(ts), line] for ts, line in task.loglines("stderr")]),
            "loglines(stdout, bytes)": capture(
                lambda: [[_str(ts), line] for ts, line in task.loglines("stdout", as_unicode=False)]),
            "parent_tasks": capture(lambda: sorted(t.pathspec for t in task.parent_tasks)),
            "child_tasks": capture(lambda: sorted(t.pathspec for t in task.child_tasks)),
            "parent_task_pathspecs": capture(lambda: sorted(task.parent_task_pathspecs)),
            "child_task_pathspecs": capture(lambda: sorted(task.child_task_pathspecs)),
            "runtime_name": capture(lambda: task.runtime_name),
            "environment_info": capture(lambda: task.environment_info),
            "artifacts namedtuple": capture(lambda: sorted(task.artifacts._fields)),
            "code": capture(lambda: _str(task.code and task.code.path)),
            "dir(data)": capture(lambda: _public_names(task.data)),
            "str(data)": capture(lambda: str(task.data)),
            "in data": {name: capture(lambda: name in task.data) for name in names + ["_task_ok", "nope"]},
            "data.nope": capture(lambda: task.data.nope),
            "task[nope]": capture(lambda: task["nope"]),
            "nope in task": capture(lambda: "nope" in task),
        }
        for name in names:
            if name not in UNSAFE_ARTIFACTS:
                out["data." + name] = capture(lambda: getattr(task.data, name))
        for name in names + [n for n in INTERNAL_ARTIFACTS if n not in names]:
            out["artifact:" + name] = capture(lambda: self.artifact_view(task[name]), convert=lambda v: v)
            out["in:" + name] = capture(lambda: name in task)
        return out

    def metadata_view(self, metadata: List[Any]) -> list:
        rows = [[m.name, comparable(m.value), m.created_at, m.type, m.task.pathspec] for m in metadata]
        return sorted(rows, key=_sort_key)

    def artifact_view(self, artifact: Any) -> dict:
        out = {
            **self.common(artifact),
            "sha": capture(lambda: artifact.sha),
            "size": capture(lambda: artifact.size),
            "finished_at": capture(lambda: _str(artifact.finished_at)),
        }
        if artifact.id not in UNSAFE_ARTIFACTS:
            out["data"] = capture(lambda: artifact.data)
        return out

    def attempts_view(self, task: Any) -> dict:
        """`Task(p, attempt=n)` for every attempt up to one past the last, and one out of range."""
        api = self.api
        last = task.current_attempt
        out = {}
        for attempt in list(range(last + 2)) + [MAX_ATTEMPTS]:
            out[str(attempt)] = capture(lambda: self.attempt_view(api.Task(task.pathspec, attempt=attempt)),
                                        convert=lambda v: v)
        return out

    def attempt_view(self, task: Any) -> dict:
        api = self.api
        names = capture(lambda: sorted(a.id for a in task))
        out = {
            "repr": capture(lambda: repr(task)),
            "current_attempt": capture(lambda: task.current_attempt),
            "finished": capture(lambda: task.finished),
            "successful": capture(lambda: task.successful),
            "finished_at": capture(lambda: _str(task.finished_at)),
            "exception": capture(lambda: task.exception),
            "artifacts": names,
            "metadata": capture(lambda: self.metadata_view(task.metadata)),
            "metadata_dict": capture(lambda: task.metadata_dict),
            "stdout": capture(lambda: task.stdout),
            "stderr": capture(lambda: task.stderr),
        }
        if isinstance(names, list):
            for name in names:
                out["DataArtifact:" + name] = capture(
                    lambda: self.attempt_artifact_view(
                        api.DataArtifact("%s/%s" % (task.pathspec, name), attempt=task.current_attempt)),
                    convert=lambda v: v)
        return out

    def attempt_artifact_view(self, artifact: Any) -> dict:
        out = {
            "repr": capture(lambda: repr(artifact)),
            "sha": capture(lambda: artifact.sha),
            "size": capture(lambda: artifact.size),
            "created_at": capture(lambda: str(artifact.created_at)),
        }
        if artifact.id not in UNSAFE_ARTIFACTS:
            out["data"] = capture(lambda: artifact.data)
        return out

    def code_view(self, code: Any) -> Optional[dict]:
        if code is None:
            return None
        out = {
            "str": capture(lambda: str(code)),
            "path": capture(lambda: code.path),
            "script_name": capture(lambda: code.script_name),
            "info": capture(lambda: code.info),
            "flowspec": capture(lambda: code.flowspec),
            "tarball members": capture(lambda: sorted(code.tarball.getnames())),
            "extract()": capture(lambda: self.extracted_files(code)),
        }
        return out

    @staticmethod
    def extracted_files(code: Any) -> dict:
        """Relative path -> sha1 of every file `code.extract()` produces."""
        with code.extract() as tmp:
            base = Path(tmp)
            return {str(p.relative_to(base)): hashlib.sha1(p.read_bytes()).hexdigest()
                    for p in sorted(base.rglob("*")) if p.is_file()}

    # lookups and errors (default namespace)
    def lookups(self) -> dict:
        api = self.api
        kitchen = self.runs["kitchen"]["pathspec"]
        bob_run = self.runs["codepkg"]["pathspec"]
        start = capture(lambda: api.Run(kitchen)["start"].task.pathspec, convert=str)
        bob_start = "%s/start/1" % bob_run
        checks = {
            "Flow(NoSuchFlow)": lambda: api.Flow("NoSuchFlow"),
            "Run(missing)": lambda: api.Run("KitchenFlow/123"),
            "Step(missing)": lambda: api.Step(kitchen + "/nostep"),
            "Task(missing)": lambda: api.Task(kitchen + "/start/999999"),
            "DataArtifact(missing)": lambda: api.DataArtifact(start + "/nope"),
            "Flow(a/b)": lambda: api.Flow("KitchenFlow/1"),
            "Run(flow only)": lambda: api.Run("KitchenFlow"),
            "Run(too long)": lambda: api.Run(kitchen + "/start"),
            "Step(run only)": lambda: api.Step(kitchen),
            "Task(step only)": lambda: api.Task(kitchen + "/start"),
            "DataArtifact(task only)": lambda: api.DataArtifact(start),
            "Task(attempt=6)": lambda: api.Task(start, attempt=6),
            "Task(attempt=-1)": lambda: api.Task(start, attempt=-1),
            "Task(attempt=5)": lambda: api.Task(start, attempt=5),
            "Task(attempt='0')": lambda: api.Task(start, attempt="0"),
            "Run(attempt=0)": lambda: api.Run(kitchen, attempt=0),
            "Step(attempt=0)": lambda: api.Step(kitchen + "/start", attempt=0),
            "Flow(attempt=0)": lambda: api.Flow("KitchenFlow", attempt=0),
            "DataArtifact(attempt=6)": lambda: api.DataArtifact(start + "/rows", attempt=6),
            "DataArtifact(attempt=5)": lambda: api.DataArtifact(start + "/rows", attempt=5),
            "Run(bob)": lambda: api.Run(bob_run),
            "Step(bob)": lambda: api.Step(bob_run + "/start"),
            "Task(bob)": lambda: api.Task(bob_start),
            "DataArtifact(bob)": lambda: api.DataArtifact(bob_start + "/greeting"),
            "Flow(HelloFlow)": lambda: api.Flow("HelloFlow"),
            "Flow(KitchenFlow)[999]": lambda: api.Flow("KitchenFlow")["999"],
            "Flow(FailFlow)[bob run]": lambda: api.Flow("FailFlow")[self.runs["codepkg"]["run_id"]],
            "bob run in Flow(FailFlow)": lambda: self.runs["codepkg"]["run_id"] in api.Flow("FailFlow"),
            "Run(kitchen)[_parameters]": lambda: api.Run(kitchen)["_parameters"],
            "Run(kitchen)[_parameters].task": lambda: api.Run(kitchen)["_parameters"].task,
        }
        out = {name: capture(check, convert=_object_or_value) for name, check in checks.items()}
        out["parameters task"] = capture(
            lambda: self.task_view(api.Run(kitchen)["_parameters"].task, deep=True), convert=lambda v: v)
        out["namespace captured at construction"] = capture(self.captured_namespace, convert=lambda v: v)
        return out

    def captured_namespace(self) -> dict:
        """Objects keep the namespace they were built in; `is_in_namespace()` tests the current global one."""
        api = self.api
        api.default_namespace()
        flow = api.Flow("FailFlow")
        run = api.Run(self.runs["fail"]["pathspec"])
        api.namespace("user:bob")
        try:
            return {
                "runs of a flow built in alice's namespace": capture(lambda: order_groups(flow)),
                "its latest_run": capture(lambda: _pathspec(flow.latest_run)),
                "steps of a run built in alice's namespace": capture(lambda: order_groups(run)),
                "run.is_in_namespace() now": capture(run.is_in_namespace),
                "runs of Flow(FailFlow) built now": capture(lambda: order_groups(api.Flow("FailFlow"))),
            }
        finally:
            api.default_namespace()


def _object_or_value(value: Any) -> Any:
    """Client objects as their repr, anything else as a comparable value."""
    return repr(value) if hasattr(value, "pathspec") else comparable(value)


def environment_view(api: ModuleType) -> dict:
    """What the client derives from its environment: user, namespace, metadata provider and local root."""
    def all_flows() -> List[str]:
        api.namespace(None)
        return sorted(flow.id for flow in api.Metaflow())

    return {
        "get_namespace": capture(api.get_namespace),
        "default_namespace": capture(api.default_namespace),
        "get_metadata": capture(api.get_metadata),
        "flows in namespace None": capture(all_flows),
    }


# -- comparing two walks --------------------------------------------------------------------------------------

def flatten(tree: Any, prefix: str = "") -> dict:
    """`{"a": {"b": 1}}` -> `{"/a/b": "1"}`: one JSON-encoded leaf per path. Recorded errors and comparable
    values (single-key dicts tagged with the value's type) are leaves, so they compare as a whole."""
    if isinstance(tree, dict) and tree and not _is_leaf_dict(tree):
        leaves = {}
        for key, value in tree.items():
            leaves.update(flatten(value, "%s/%s" % (prefix, key)))
        return leaves
    return {prefix: json.dumps(tree, sort_keys=True, ensure_ascii=False)}


def _is_leaf_dict(tree: dict) -> bool:
    return len(tree) == 1 and next(iter(tree)) in _LEAF_TAGS


# The single keys of recorded errors and of the dicts `comparable` makes.
_LEAF_TAGS = frozenset({"error", "float", "bytes", "bytes_sha1", "namedtuple", "list", "tuple", "dict", "set",
                        "frozenset", "exception", "datetime", "date", "time", "timedelta", "Decimal", "numpy",
                        "DataFrame", "Series", "PIL.Image", "object"})


MISSING = "<missing>"


def differences(ours: Any, theirs: Any) -> List[tuple]:
    """`(path, ours, theirs)` for every leaf that differs (MISSING where one side has no such path)."""
    mine, other = flatten(ours), flatten(theirs)
    return [(path, mine.get(path, MISSING), other.get(path, MISSING))
            for path in sorted(set(mine) | set(other)) if mine.get(path) != other.get(path)]


def clean_env(local_root: Path, scratch: Path) -> dict:
    """Environment for a walk subprocess: user alice, the datastore as local root, private caches under
    `scratch`, no other METAFLOW_*/MFFS_* settings or user variables."""
    repo = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("METAFLOW_", "MFFS_")) and k not in ("SUDO_USER", "USERNAME")}
    (scratch / "metaflow-home").mkdir(parents=True, exist_ok=True)
    env.update(
        USER="alice",
        METAFLOW_HOME=str(scratch / "metaflow-home"),
        METAFLOW_DATASTORE_SYSROOT_LOCAL=str(local_root),
        METAFLOW_CLIENT_CACHE_PATH=str(scratch / "metaflow-client-cache"),
        MFFS_CACHE_DIR=str(scratch / "mffs-cache"),
        PYTHONPATH=os.pathsep.join([repo] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
    )
    return env


def run_walker(args: List[str], env: dict, cwd: Path, timeout: float) -> "subprocess.CompletedProcess[str]":
    """Run this module with `args` in a subprocess; raise with its stderr if it fails."""
    proc = subprocess.run([sys.executable, "-m", "tests.support.walk", *args], env=env, cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("walker %s failed (%d):\n%s" % (" ".join(args), proc.returncode, proc.stderr[-6000:]))
    return proc


# -- running in a subprocess ----------------------------------------------------------------------------------

class MetaflowBlocker(importlib.abc.MetaPathFinder):
    """Makes `import metaflow` (and submodules) fail as if Metaflow were not installed; remembers attempts."""

    def __init__(self) -> None:
        self.attempts: List[str] = []

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        if fullname == "metaflow" or fullname.startswith("metaflow."):
            self.attempts.append(fullname)
            raise ModuleNotFoundError("No module named %r (blocked for this test)" % fullname, name=fullname)
        return None


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["walk", "environment"])
    parser.add_argument("--api", choices=["metaflow", "client"], required=True)
    parser.add_argument("--root", type=Path, help="datastore parent directory (walk mode)")
    parser.add_argument("--out", type=Path, required=True, help="output JSON file")
    parser.add_argument("--block-metaflow", action="store_true")
    args = parser.parse_args(argv)
    blocker = None
    if args.block_metaflow:
        blocker = MetaflowBlocker()
        sys.meta_path.insert(0, blocker)
    api = importlib.import_module(args.api)
    if args.mode == "environment":
        result = environment_view(api)
    else:
        walker = Walker(api, args.root)
        started = time.perf_counter()
        result = {"sections": walker.walk(), "timings": walker.timings,
                  "total_seconds": round(time.perf_counter() - started, 3)}
    result["blocked_imports"] = sorted(set(blocker.attempts)) if blocker else []
    # A file, not stdout: Metaflow prints messages while it looks for a datastore.
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
