"""One bad record hides only itself: hostile copies of real runs, each with one corrupt, missing or malformed record,
mounted and crawled (ls -lR, grep -r, cat of every file) and listed with `mffs ls`. The bad entry alone fails (EIO,
or absent from its listing), every neighbour is listed and readable, the daemon stays alive and logs the entry.

The Python API keeps Metaflow's semantics where Metaflow answers; where Metaflow's client raises on such a record
(`test_api_*`), ours lists the good neighbours and raises only for the bad record itself.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from tests.support.hostile import copy_flows, crawl, flow_dir, replace_artifact, task_dir
from tests.support.mount import mounted, run_mffs

pytestmark = pytest.mark.fuse

FLOWS = ["HelloFlow", "FailFlow", "KitchenFlow"]


@dataclass
class Case:
    """How to spoil a copy, and what the mount must show: `bad` (mount-relative) is absent from its parent's
    listing and answers `bad_errno` by name (None: it is listed, and only the files in `failing` fail);
    `neighbours` are listed and readable."""

    spoil: Callable[[Path, dict], None]
    bad: Callable[[dict], str]
    bad_errno: Optional[int]
    neighbours: Callable[[dict], List[str]]
    failing: Callable[[dict], List[str]] = lambda ids: []
    links: Dict[str, Callable[[dict], str]] = field(default_factory=dict)


def _self_json(path: Path) -> Path:
    return path / "_meta" / "_self.json"


def _flow_record_empty(root: Path, ids: dict) -> None:
    _self_json(flow_dir(root, "HelloFlow")).write_text("{}")


def _flow_record_directory(root: Path, ids: dict) -> None:
    record = _self_json(flow_dir(root, "HelloFlow"))
    record.unlink()
    record.mkdir()


def _run_record_junk(root: Path, ids: dict) -> None:
    _self_json(flow_dir(root, "FailFlow") / ids["fail"]).write_text("junk{")


def _task_ok_garbage(root: Path, ids: dict) -> None:
    replace_artifact(root, task_dir(root, "FailFlow", ids["resume"], "end"), "_task_ok", b"garbage, no pickle")


def _success_garbage(root: Path, ids: dict) -> None:
    # the newest successful run: latest_successful must skip it
    replace_artifact(root, task_dir(root, "FailFlow", ids["codepkg"], "end"), "_success", b"garbage, no pickle")


def _task_record_junk(root: Path, ids: dict) -> None:
    _self_json(task_dir(root, "KitchenFlow", ids["kitchen"], "foreach_inner", "9")).write_text("junk{")


def _artifact_record_junk(root: Path, ids: dict) -> None:
    (task_dir(root, "HelloFlow", ids["hello_bob"], "start") / "_meta" / "0_artifact_score.json").write_text("junk{")


def _task_ok_record_junk(root: Path, ids: dict) -> None:
    (task_dir(root, "HelloFlow", ids["hello_bob"], "start") / "_meta" / "0_artifact__task_ok.json").write_text("junk{")


def _metadata_event_junk(root: Path, ids: dict) -> None:
    meta = task_dir(root, "HelloFlow", ids["hello_bob"], "start") / "_meta"
    next(meta.glob("sysmeta_attempt_[0-9]*.json")).write_text("junk{")


def _code_package_corrupt(root: Path, ids: dict) -> None:
    record = next((flow_dir(root, "FailFlow") / ids["codepkg"]).glob("*/*/_meta/sysmeta_code-package_*.json"))
    sha = json.loads(json.loads(record.read_text())["value"])["sha"]
    blob = flow_dir(root, "FailFlow") / "data" / sha[:2] / sha
    blob.write_bytes(b"\x1f\x8b\x08\x00" + b"not a code package" * 8)


CASES = {
    "flow record {}": Case(
        _flow_record_empty, lambda ids: "HelloFlow", errno.EIO,
        lambda ids: ["FailFlow", "KitchenFlow/%s/start/1/task.json" % ids["kitchen"]],
    ),
    "flow record is a directory": Case(
        _flow_record_directory, lambda ids: "HelloFlow", errno.ENOENT,
        lambda ids: ["FailFlow", "KitchenFlow/%s/run.json" % ids["kitchen"]],
    ),
    "junk run record": Case(
        _run_record_junk, lambda ids: "FailFlow/" + ids["fail"], errno.EIO,
        lambda ids: ["FailFlow/%s/run.json" % ids["resume"], "FailFlow/%s/run.json" % ids["codepkg"]],
        links={"FailFlow/latest": lambda ids: ids["codepkg"]},
    ),
    "garbage _task_ok": Case(
        _task_ok_garbage, lambda ids: "FailFlow/%s/end/3" % ids["resume"], None,
        lambda ids: ["FailFlow/%s/run.json" % ids["fail"], "FailFlow/%s/run.json" % ids["codepkg"],
                     "FailFlow/%s/end/3/stdout.log" % ids["resume"], "FailFlow/%s/start/1/task.json" % ids["resume"]],
        failing=lambda ids: ["FailFlow/%s/run.json" % ids["resume"], "FailFlow/%s/end/3/task.json" % ids["resume"]],
    ),
    "garbage _success of the newest successful run": Case(
        _success_garbage, lambda ids: "FailFlow/%s/end/3" % ids["codepkg"], None,
        lambda ids: ["FailFlow/%s/run.json" % ids["resume"], "FailFlow/%s/end/3/stdout.log" % ids["codepkg"]],
        failing=lambda ids: ["FailFlow/%s/run.json" % ids["codepkg"], "FailFlow/%s/end/3/task.json" % ids["codepkg"]],
        links={"FailFlow/latest_successful": lambda ids: ids["resume"], "FailFlow/latest": lambda ids: ids["codepkg"]},
    ),
    "junk task record": Case(
        _task_record_junk, lambda ids: "KitchenFlow/%s/foreach_inner/9" % ids["kitchen"], errno.EIO,
        lambda ids: ["KitchenFlow/%s/foreach_inner/%s/task.json" % (ids["kitchen"], t) for t in (8, 10, 11)]
        + ["KitchenFlow/%s/foreach_inner/step.json" % ids["kitchen"]],
    ),
    "junk artifact record": Case(
        _artifact_record_junk, lambda ids: "HelloFlow/%s/start/1/score" % ids["hello_bob"], errno.EIO,
        lambda ids: ["HelloFlow/%s/start/1/%s" % (ids["hello_bob"], f) for f in ("lr/repr.txt", "task.json")],
    ),
    "junk _task_ok record": Case(
        _task_ok_record_junk, lambda ids: "HelloFlow/%s/start/1" % ids["hello_bob"], None,
        lambda ids: ["HelloFlow/%s/start/1/%s" % (ids["hello_bob"], f) for f in ("score/repr.txt", "stdout.log")]
        + ["HelloFlow/%s/run.json" % ids["hello_bob"]],
        failing=lambda ids: ["HelloFlow/%s/start/%s" % (ids["hello_bob"], f) for f in ("1/task.json", "step.json")],
    ),
    "junk metadata event": Case(
        _metadata_event_junk, lambda ids: "HelloFlow/%s/start/1" % ids["hello_bob"], None,
        lambda ids: ["HelloFlow/%s/start/1/%s" % (ids["hello_bob"], f) for f in ("metadata.json", "task.json",
                                                                                 "stdout.log")],
    ),
    "corrupt code package": Case(
        _code_package_corrupt, lambda ids: "FailFlow/%s/code" % ids["codepkg"], errno.EIO,
        lambda ids: ["FailFlow/%s/%s" % (ids["codepkg"], f) for f in ("run.json", "parameters.json",
                                                                      "start/1/task.json", "end/3/stdout.log")],
    ),
}


@pytest.fixture
def ids(manifest: dict) -> dict:
    return {name: run["run_id"] for name, run in manifest["runs"].items()}


def _hostile(local_root: Path, tmp_path: Path, case: Case, ids: dict) -> Path:
    root = copy_flows(local_root, tmp_path / "ds", FLOWS)
    case.spoil(root, ids)
    return root


def _errno_of(call: Callable[[], object]) -> Optional[int]:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_bad_record_hides_only_itself_in_a_crawled_mount(
    name: str, local_root: Path, tmp_path: Path, ids: dict
) -> None:
    case = CASES[name]
    root = _hostile(local_root, tmp_path, case, ids)
    bad = case.bad(ids)
    failing = case.failing(ids)
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces") as mount:
        report = crawl(mount.path)
        relative = {os.path.relpath(path, mount.path) for path in report.paths}
        errors = {os.path.relpath(path, mount.path): error for path, error in report.errors.items()}
        for neighbour in case.neighbours(ids):
            assert neighbour in relative, neighbour
            if "." in neighbour.rsplit("/", 1)[-1]:
                (mount.path / neighbour).read_bytes()  # readable
            else:
                os.listdir(mount.path / neighbour)
        for link, target in case.links.items():
            assert os.readlink(mount.path / link) == target(ids)
        if case.bad_errno is not None:
            assert bad not in relative
            assert bad.rsplit("/", 1)[-1] not in os.listdir(mount.path / os.path.dirname(bad))
            assert _errno_of(lambda: os.stat(mount.path / bad)) == case.bad_errno
            assert not errors
        else:
            assert bad in relative
            assert set(errors) == set(failing)
            assert all(_errno_of(lambda: (mount.path / path).read_bytes()) == errno.EIO for path in failing)
        assert mount.process.poll() is None
        assert report.commands["ls -lR"] in (0, 1)  # 1: the files that answer EIO (none when the entry is absent)
        parent = os.path.dirname(bad) or "."
        listed = run_mffs("ls", parent, "--datastore-root", str(root), "--all-namespaces")
        assert listed.returncode == 0, listed.stderr
        prefix = "" if parent == "." else parent + "/"
        expected = {n[len(prefix):].split("/")[0] for n in case.neighbours(ids) if n.startswith(prefix)}
        assert expected and expected <= set(listed.stdout.split())
        assert case.bad_errno is None or os.path.basename(bad) not in listed.stdout.split()
    if case.bad_errno != errno.ENOENT:  # a record that is a directory is no record, as for Metaflow: no log
        assert "left out" in mount.log() or "backend failure" in mount.log()
    shutil.rmtree(root)


# -- the Python API against Metaflow's client on the same hostile copies ---------------------------------------------


def _apis(clients: dict, root: Path) -> dict:
    for api in clients.values():
        api.metadata("local@%s" % root)
        api.namespace(None)
    return clients


def _outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        return type(exc).__name__


def _both(clients: dict, call: Callable[[object], object]) -> tuple:
    return _outcome(lambda: call(clients["metaflow"])), _outcome(lambda: call(clients["client"]))


def test_api_flow_records(local_root: Path, tmp_path: Path, clients: dict, ids: dict) -> None:
    """A flow record of `{}`: Metaflow fails the whole listing (KeyError) and says the flow does not exist; ours
    lists the other flows and raises for that flow. A record that is a directory: both leave the flow out."""
    root = _hostile(local_root, tmp_path, CASES["flow record {}"], ids)
    apis = _apis(clients, root)
    assert _both(apis, lambda api: sorted(f.id for f in api.Metaflow())) == ("KeyError", ["FailFlow", "KitchenFlow"])
    assert _both(apis, lambda api: api.Flow("HelloFlow")) == ("MetaflowNotFound", "MetaflowInternalError")
    _flow_record_directory(root, ids)
    apis = _apis(clients, root)
    assert _both(apis, lambda api: sorted(f.id for f in api.Metaflow())) == (["FailFlow", "KitchenFlow"],) * 2
    assert _both(apis, lambda api: api.Flow("HelloFlow")) == ("MetaflowNotFound",) * 2


def test_api_run_task_and_artifact_records(local_root: Path, tmp_path: Path, clients: dict, ids: dict) -> None:
    """A junk run, task, artifact or metadata record: Metaflow's client fails the listing holding it
    (JSONDecodeError); ours lists the neighbours. Both raise when the bad record itself is asked for."""
    root = copy_flows(local_root, tmp_path / "ds", FLOWS)
    for spoil in (_run_record_junk, _task_record_junk, _artifact_record_junk, _metadata_event_junk):
        spoil(root, ids)
    apis = _apis(clients, root)
    runs = lambda api: sorted(r.id for r in api.Flow("FailFlow"))  # noqa: E731
    assert _both(apis, runs) == ("JSONDecodeError", sorted([ids["resume"], ids["codepkg"]]))
    assert _both(apis, lambda api: api.Run("FailFlow/" + ids["fail"])) == ("JSONDecodeError", "MetaflowInternalError")
    inner = "KitchenFlow/%s/foreach_inner" % ids["kitchen"]
    assert _both(apis, lambda api: sorted(t.id for t in api.Step(inner))) == ("JSONDecodeError", ["10", "11", "8"])
    assert _both(apis, lambda api: api.Task(inner + "/9")) == ("JSONDecodeError", "MetaflowInternalError")
    start = "HelloFlow/%s/start/1" % ids["hello_bob"]
    assert _both(apis, lambda api: sorted(a.id for a in api.Task(start))) == ("JSONDecodeError", ["lr", "name"])
    assert _both(apis, lambda api: api.Task(start)["score"]) == ("JSONDecodeError", "MetaflowInternalError")
    metaflow_events, our_events = _both(apis, lambda api: sorted({m.name for m in api.Task(start).metadata}))
    assert metaflow_events == "JSONDecodeError" and "ds-root" in our_events and "attempt" not in our_events


def test_api_garbage_internal_artifacts_and_code(local_root: Path, tmp_path: Path, clients: dict,
                                                 ids: dict) -> None:
    """Garbage `_task_ok` / `_success`, a corrupt code package: both clients raise for that run alone, as the
    unpickler or tarfile does."""
    root = copy_flows(local_root, tmp_path / "ds", FLOWS)
    for spoil in (_task_ok_garbage, _success_garbage, _code_package_corrupt):
        spoil(root, ids)
    apis = _apis(clients, root)
    assert _both(apis, lambda api: api.Run("FailFlow/" + ids["resume"]).finished) == ("UnpicklingError",) * 2
    assert _both(apis, lambda api: api.Run("FailFlow/" + ids["resume"]).successful) == (True, True)
    assert _both(apis, lambda api: api.Run("FailFlow/" + ids["codepkg"]).successful) == ("UnpicklingError",) * 2
    metaflow_code, our_code = _both(apis, lambda api: api.Run("FailFlow/" + ids["codepkg"]).code)
    assert isinstance(metaflow_code, str) and isinstance(our_code, str)  # exception names: both raise


def test_a_mount_of_one_step_of_a_run_with_garbage_task_ok_starts(local_root: Path, tmp_path: Path, clients: dict,
                                                                  ids: dict) -> None:
    """`mffs mount mnt Flow/run/step` of a run whose end task's `_task_ok` is garbage: the step is served (as
    a running run's, re-read after the refresh), where the mount failed to start."""
    from mffs.tree import Tree

    root = _hostile(local_root, tmp_path, CASES["garbage _task_ok"], ids)
    client = _apis(clients, root)["client"]
    tree = Tree(client, pathspec="FailFlow/%s/start" % ids["resume"], namespace=None)
    assert [entry.name for entry in tree.list("/")] == ["step.json", "1"]
    assert tree.read_file("/1/task.json")
    assert not tree.listing("/")[0]  # not stable: the run's end is unknown
