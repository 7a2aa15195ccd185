"""The client walk that produced tests/data/metadata-service/expected-client.json, for either client.

`python -m tests.support.service_walk metaflow|client` walks everything the metadata service knows in several
namespaces with that client (Metaflow's own, or ours) and prints the document as JSON. The service and the user
come from the environment (METAFLOW_SERVICE_URL, METAFLOW_DEFAULT_METADATA=service, USER=alice), which is why
it runs in a subprocess: both clients read their settings and keep their namespace per process.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import pickle
import sys
from typing import Any, Callable, Optional

REPR_CHARS = 200
EXCEPTION_CHARS = 300


def _time(value) -> Optional[str]:
    return None if value is None else value.isoformat()


def _outcome(action: Callable[[], Any]) -> Any:
    """The action's result, or '!<ExceptionClass>' when it raised."""
    try:
        return action()
    except Exception as ex:  # the class name is the answer being compared
        return "!" + type(ex).__name__


def _value(value: Any) -> dict:
    text = repr(value)
    return {
        "pickle": hashlib.sha1(pickle.dumps(value, protocol=4)).hexdigest()[:12],
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


def main(argv=None) -> None:
    which = (argv or sys.argv[1:])[0]
    module = importlib.import_module("metaflow" if which == "metaflow" else "client")
    json.dump(walk(module), sys.stdout, sort_keys=True, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
