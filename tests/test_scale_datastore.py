"""The scale datastores (scripts/make_scale_datastore.py) are valid runs for Metaflow's client, and ours reads them
the same: small clones (50 foreach tasks from a 3-task real run, 30 runs) so the test takes seconds."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from tests.conftest import reset_client_state
from tests.support.datastores import load_manifest

REPO = Path(__file__).resolve().parents[1]
SOURCE = {"source_tasks": 3, "source_runs": 1}  # a tiny real Metaflow datastore (built once, cached)
N_TASKS = 50
N_RUNS = 30


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_scale_datastore", REPO / "scripts" / "make_scale_datastore.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def maker() -> ModuleType:
    return _maker()


def _views(root: Path, monkeypatch: pytest.MonkeyPatch, view: Callable[[ModuleType], dict]) -> dict:
    """`view(api)` with Metaflow's client and with ours on `root`, all namespaces: {"metaflow": ..., "client": ...}."""
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(root))
    monkeypatch.setenv("USER", "alice")
    reset_client_state()
    import metaflow

    import client

    views = {}
    for api in (metaflow, client):
        api.metadata("local@%s" % root)
        api.namespace(None)
        views[api.__name__] = view(api)
    return views


def _task_view(task) -> dict:
    return {
        "pathspec": task.pathspec,
        "index": task.index,
        "square": task.data.square,
        "finished": task.finished,
        "successful": task.successful,
        "parents": sorted(parent.pathspec for parent in task.parent_tasks),
        "children": sorted(child.pathspec for child in task.child_tasks),
    }


def test_foreach_clone_reads_the_same_in_both_clients(maker: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = maker.build_foreach_clone(N_TASKS, workers=2, **SOURCE)
    wide = load_manifest(parent)["runs"]["wide"]

    def view(api: ModuleType) -> dict:
        run = api.Run(wide["pathspec"])
        body = list(run["body"])
        by_index = {task.index: task for task in body}
        join = run["join"].task
        return {
            "count": len(body),
            "indexes": sorted(by_index),
            "ids": sorted(int(task.id) for task in body),
            "tasks": [_task_view(by_index[i]) for i in (0, 1, 2, 3, N_TASKS // 2, N_TASKS - 1)],
            "join_parents": sorted(task.pathspec for task in join.parent_tasks),
            "join": join.id,
            "items": run["start"].task.data.items,
            "width": run["end"].task.data.width,
            "successful": run.successful,
        }

    views = _views(parent, monkeypatch, view)
    mf = views["metaflow"]
    assert mf["count"] == N_TASKS and mf["indexes"] == list(range(N_TASKS))
    assert mf["ids"] == list(range(wide["first_task_id"], wide["first_task_id"] + N_TASKS))
    assert mf["join"] == str(wide["join_task_id"]) and len(mf["join_parents"]) == N_TASKS
    assert mf["items"] == list(range(N_TASKS)) and mf["width"] == N_TASKS and mf["successful"] is True
    assert [task["square"] for task in mf["tasks"]] == [0, 1, 4, 0, 1, 1]  # index i mod 3 of the source, squared
    assert views["client"] == mf


def test_runs_clone_reads_the_same_in_both_clients(maker: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = maker.build_runs_clone(N_RUNS, workers=2, **SOURCE)
    runs = load_manifest(parent)["runs"]["runs"]

    def view(api: ModuleType) -> dict:
        flow = api.Flow(runs["flow"])
        return {
            "order": [run.id for run in flow],
            "latest_successful": flow.latest_successful_run.id,
            "latest": flow.latest_run.id,
            "state": {run.id: (run.successful, run.finished, sorted(run.tags)) for run in flow},
        }

    views = _views(parent, monkeypatch, view)
    mf = views["metaflow"]
    assert mf["order"] == runs["run_ids"][::-1]
    assert mf["latest_successful"] == runs["latest_successful_run_id"] != mf["latest"]
    assert {run_id for run_id, state in mf["state"].items() if not state[0]} == set(runs["failed_run_ids"])
    assert views["client"] == mf


def test_clones_are_reused(maker: ModuleType) -> None:
    first = maker.build_runs_clone(N_RUNS, workers=1, **SOURCE)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    assert maker.build_runs_clone(N_RUNS, workers=1, **SOURCE) == first
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
