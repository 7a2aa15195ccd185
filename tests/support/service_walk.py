"""The client walk that produced tests/data/metadata-service/expected-client.json, for either client.

`python -m tests.support.service_walk metaflow|client` walks everything the metadata service knows in several
namespaces with that client (Metaflow's own, or ours) and prints the document as JSON. The service and the user
come from the environment (METAFLOW_SERVICE_URL, METAFLOW_DEFAULT_METADATA=service, USER=alice), which is why
it runs in a subprocess: both clients read their settings and keep their namespace per process.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPR_CHARS = 200
EXCEPTION_CHARS = 300
_STANDIN_NAMES: Dict[type, Tuple[str, str]] = {}


def _time(value) -> Optional[str]:
    return None if value is None else value.isoformat()


def _outcome(action: Callable[[], Any]) -> Any:
    """The action's result, or '!<ExceptionClass>' when it raised."""
    try:
        return action()
    except Exception as ex:  # the class name is the answer being compared
        return "!" + type(ex).__name__


class _AsMetaflowPickler(pickle._Pickler):
    """Pickles our stand-ins for Metaflow's classes under the names of the classes they stand for, so a value
    loaded by our client fingerprints like the same value loaded by Metaflow's (same state, same bytes)."""

    def __init__(self, file, standin_names: Dict[type, Tuple[str, str]]):
        super().__init__(file, protocol=4)
        self.standin_names = standin_names

    def save_global(self, obj, name=None):
        names = self.standin_names.get(obj)
        if names is None:
            return super().save_global(obj, name)
        # What pickle writes for a global at protocol 4.
        self.save(names[0])
        self.save(names[1])
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def _standin_names(mf) -> Dict[type, Tuple[str, str]]:
    if mf.__name__ != "client":
        return {}
    from client.unpickle import METAFLOW_STANDINS

    names: Dict[type, Tuple[str, str]] = {}
    for module_and_name, cls in METAFLOW_STANDINS.items():
        names.setdefault(cls, module_and_name)
    return names


def _fingerprint(value: Any, standin_names: Dict[type, Tuple[str, str]]) -> str:
    buffer = io.BytesIO()
    _AsMetaflowPickler(buffer, standin_names).dump(value)
    return hashlib.sha1(buffer.getvalue()).hexdigest()[:12]


def _value(value: Any) -> dict:
    text = repr(value)
    return {
        "pickle": _fingerprint(value, _STANDIN_NAMES),
        "repr": text[:REPR_CHARS],
        "repr_len": len(text),
        "type": type(value).__name__,
    }


def _artifact(artifact) -> dict:
    return {
        "created_at": _time(artifact.created_at),
        "data": _value(artifact.data),
        "id": artifact.id,
        "pathspec": artifact.pathspec,
        "sha": artifact.sha,
        "size": artifact.size,
    }


def _tags(obj) -> dict:
    return {
        "system_tags": sorted(obj.system_tags),
        "tags": sorted(obj.tags),
        "user_tags": sorted(obj.user_tags),
    }


def _task(task) -> dict:
    exception = task.exception
    metadata_dict = dict(task.metadata_dict)
    metadata_dict.pop("runtime", None)  # the recorded walk leaves it out (it is in metadata_names)
    return {
        "artifacts": [_artifact(a) for a in sorted(task, key=lambda a: a.id)],
        "children": sorted(task.child_task_pathspecs),
        "created_at": _time(task.created_at),
        "current_attempt": task.current_attempt,
        "data_names": sorted(a.id for a in task),
        "exception": None if exception is None else {"str": str(exception)[-EXCEPTION_CHARS:]},
        "finished": task.finished,
        "finished_at": _time(task.finished_at),
        "has_accuracy": "accuracy" in task.data,
        "id": task.id,
        "index": task.index,
        "metadata_dict": metadata_dict,
        "metadata_names": sorted({m.name for m in task.metadata}),
        "parents": sorted(task.parent_task_pathspecs),
        "pathspec": task.pathspec,
        "stderr": task.stderr,
        "stdout": task.stdout,
        "successful": task.successful,
        **_tags(task),
    }


def _step(step) -> dict:
    tasks = list(step)
    return {
        "created_at": _time(step.created_at),
        "finished_at": _time(step.finished_at),
        "id": step.id,
        "pathspec": step.pathspec,
        "task": step.task.pathspec,
        "task_order": [t.id for t in tasks],
        "tasks": [_task(t) for t in sorted(tasks, key=lambda t: int(t.id))],
    }


def _run(run) -> dict:
    steps = list(run)
    end_task = run.end_task
    code = run.code
    return {
        "code": None if code is None else code.path,
        "created_at": _time(run.created_at),
        "end_task": None if end_task is None else end_task.pathspec,
        "finished": run.finished,
        "finished_at": _time(run.finished_at),
        "has_params_step": "_parameters" in run,
        "has_start": "start" in run,
        "id": run.id,
        "pathspec": run.pathspec,
        "step_order": [s.id for s in steps],
        "steps": [_step(s) for s in sorted(steps, key=lambda s: s.id)],
        "successful": run.successful,
        **_tags(run),
    }


def _flow(flow) -> dict:
    runs = list(flow)
    latest_run = flow.latest_run
    latest_successful_run = flow.latest_successful_run
    return {
        "id": flow.id,
        "latest_run": None if latest_run is None else latest_run.id,
        "latest_successful_run": None if latest_successful_run is None else latest_successful_run.id,
        "pathspec": flow.pathspec,
        "run_order": [r.id for r in runs],
        "runs": [_run(r) for r in sorted(runs, key=lambda r: int(r.id))],
    }


def walk(mf) -> dict:
    """The walk document, using `mf` (a module with Metaflow's client API)."""
    _STANDIN_NAMES.update(_standin_names(mf))
    doc: dict = {"default_namespace": mf.get_namespace()}
    doc["none_namespace"] = mf.namespace(None)
    doc["flows"] = [_flow(f) for f in sorted(mf.Metaflow().flows, key=lambda f: f.id)]
    doc["missing_flow"] = _outcome(lambda: mf.Flow("NoSuchFlow").id)
    doc["missing_run"] = _outcome(lambda: mf.Run("RecShapesFlow/999").id)
    doc["missing_step"] = _outcome(lambda: mf.Step("RecShapesFlow/1/no_such_step").id)
    doc["missing_artifact"] = _outcome(lambda: mf.DataArtifact("RecShapesFlow/1/end/19/no_such_artifact").id)
    doc["bad_pathspec"] = _outcome(lambda: mf.Run("RecShapesFlow").id)

    mf.namespace("user:alice")
    doc["alice_flows"] = sorted(f.id for f in mf.Metaflow().flows)
    doc["alice_userflow_runs"] = [r.id for r in mf.Flow("RecTeamFlow")]
    doc["alice_reads_bob_run"] = _outcome(lambda: mf.Run("RecTeamFlow/6").id)
    doc["alice_reads_bob_task"] = _outcome(lambda: mf.Task("RecTeamFlow/6/start/999999").id)

    mf.namespace("user:bob")
    doc["bob_userflow_runs"] = [r.id for r in mf.Flow("RecTeamFlow")]
    doc["bob_latest"] = mf.Flow("RecTeamFlow").latest_run.id

    mf.namespace("shared")
    doc["tag_namespace_runs"] = [r.id for r in mf.Flow("RecTeamFlow")]

    doc["after_default"] = mf.namespace(mf.default_namespace())
    return doc


def client_env(service_url: str, home: str) -> dict:
    """The environment of a client process: user alice, the service at `service_url` as default metadata,
    nothing from this machine's Metaflow configuration, caches under `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "MFFS_"))}
    for name in ("SUDO_USER", "USERNAME"):
        env.pop(name, None)
    env.update(
        USER="alice",
        HOME=home,
        METAFLOW_HOME=os.path.join(home, "metaflowconfig"),
        METAFLOW_CLIENT_CACHE_PATH=os.path.join(home, "client-cache"),
        METAFLOW_DEFAULT_METADATA="service",
        METAFLOW_SERVICE_URL=service_url,
        PYTHONPATH=REPO_ROOT,
    )
    return env


def run_walk(which: str, service_url: str, datastore_root: str, timeout: float = 240) -> dict:
    """Run the walk with client `which` ('metaflow' or 'client') in a clean subprocess as user alice against
    the service at `service_url`; the document with `datastore_root` written as `{DATASTORE_ROOT}`. The recorded
    datastore is no configured root of this machine, so the walk allows it (MFFS_ALLOWED_ROOTS)."""
    with tempfile.TemporaryDirectory() as home:
        # cwd = an empty directory, so no project `.metaflow/config.json` is picked up.
        env = dict(client_env(service_url, home), MFFS_ALLOWED_ROOTS=datastore_root)
        done = subprocess.run(
            [sys.executable, "-m", "tests.support.service_walk", which],
            cwd=home, env=env, capture_output=True, text=True, timeout=timeout,
        )
    if done.returncode != 0:
        raise RuntimeError("the %s walk failed:\n%s" % (which, done.stderr[-4000:]))
    return json.loads(done.stdout.replace(datastore_root, "{DATASTORE_ROOT}"))


def main(argv=None) -> None:
    which = (argv or sys.argv[1:])[0]
    module = importlib.import_module("metaflow" if which == "metaflow" else "client")
    json.dump(walk(module), sys.stdout, sort_keys=True, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
