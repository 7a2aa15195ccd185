"""Where Metaflow's client has a bug, we differ on purpose. Each test shows Metaflow's behaviour (pinned to
metaflow==2.19.39: a fixed Metaflow makes the test fail, so the note gets revisited) and asserts ours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import walk


def test_parameters_task_parent_tasks(clients: dict, manifest: dict) -> None:
    """Metaflow looks `_parameters` up in the flow graph, where it is not a step, and raises KeyError. The
    `_parameters` pseudo-step has no parents: ours returns none."""
    pathspec = clients["metaflow"].Run(manifest["runs"]["kitchen"]["pathspec"])["_parameters"].task.pathspec
    try:
        list(clients["metaflow"].Task(pathspec).parent_tasks)
    except KeyError as error:
        assert error.args == ("_parameters",)
    else:
        raise AssertionError("metaflow no longer raises KeyError for _parameters' parent tasks")
    assert list(clients["client"].Task(pathspec).parent_tasks) == []


_SIZE_AFTER_STDOUT_SIZE = """
import json, sys
from {api} import DataArtifact, Task, namespace
namespace(None)
task = Task(sys.argv[1])
task.stdout_size
try:
    print(json.dumps(DataArtifact(sys.argv[1] + "/b", attempt=task.current_attempt).size))
except Exception as error:
    print(json.dumps(type(error).__name__))
"""


def _size_after_stdout_size(api: str, pathspec: str, local_root: Path, scratch: Path) -> object:
    """Run in a fresh process with a fresh client cache (Metaflow's poisoned cache must not reach other tests)."""
    proc = subprocess.run([sys.executable, "-c", _SIZE_AFTER_STDOUT_SIZE.format(api=api), pathspec],
                          env=walk.clean_env(local_root, scratch), cwd=str(local_root), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_artifact_size_after_stdout_size(clients: dict, local_root: Path, manifest: dict, tmp_path: Path) -> None:
    """Metaflow's `stdout_size` stores an empty artifact index in its client cache for the task's attempt, after
    which `DataArtifact(..., attempt=n).size` raises TypeError. Ours returns the size."""
    task = clients["metaflow"].Run(manifest["runs"]["kitchen"]["pathspec"])["branch_b"].task
    expected = task["b"].size
    assert _size_after_stdout_size("metaflow", task.pathspec, local_root, tmp_path / "mf") == "TypeError"
    assert _size_after_stdout_size("client", task.pathspec, local_root, tmp_path / "ours") == expected
