"""Metaflow's internal artifacts (`_task_ok`, `_success`, `_exception`, `_graph_info`, `_foreach_stack`, ...) from a
hostile datastore: a default mount never unpickles them fully, on any path (listings, task.json, run.json, `mffs
ls/cat`, the readahead worker); the Python API trusts them as Metaflow's client does unless `trust_pickles(False)`.

Each hostile copy is a real run whose every internal artifact is replaced by a pickle that, when loaded, touches a
marker file named after the artifact: a marker that appears names what ran.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path
from typing import List

import pytest

from tests.support.hostile import copy_flows, crawl, flow_dir, replace_artifact
from tests.support.mount import mounted, run_mffs

pytestmark = pytest.mark.fuse


class _TouchesMarker:
    """Unpickling this runs a shell command that creates `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, ("touch %s" % shlex.quote(str(self.path)),)


def marker_pickle(path: Path) -> bytes:
    return pickle.dumps(_TouchesMarker(path), protocol=4)


def poison_internal_artifacts(root: Path, flow: str, run_id: str, markers: Path) -> List[str]:
    """Replace every internal (`_`-named) artifact of every attempt of every task of the run with a pickle that
    touches `markers/<artifact name>`; returns the names replaced."""
    names = set()
    for data_json in sorted((flow_dir(root, flow) / run_id).glob("*/*/[0-9]*.data.json")):
        task, attempt = data_json.parent, int(data_json.name.split(".")[0])
        for name in json.loads(data_json.read_text())["objects"]:
            if name.startswith("_"):
                replace_artifact(root, task, name, marker_pickle(markers / name), attempt=attempt)
                names.add(name)
    return sorted(names)


@pytest.fixture(scope="module")
def poisoned(local_root: Path, manifest: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of KitchenFlow (foreach, split/join, retries) and HelloFlow whose kitchen run's internal artifacts
    all run code when unpickled."""
    base = tmp_path_factory.mktemp("poisoned")
    markers = base / "markers"
    markers.mkdir()
    root = copy_flows(local_root, base / "ds", ["KitchenFlow", "HelloFlow"])
    run = manifest["runs"]["kitchen"]
    names = poison_internal_artifacts(root, "KitchenFlow", run["run_id"], markers)
    return {"root": root, "markers": markers, "run": run["pathspec"], "names": names}


def _fired(markers: Path) -> List[str]:
    return sorted(os.listdir(markers))


def _clear(markers: Path) -> None:
    for name in os.listdir(markers):
        os.unlink(markers / name)


def test_the_copy_stores_code_running_pickles_for_the_internal_artifacts(poisoned: dict) -> None:
    """The hostile copy is what the tests below need: the internal artifacts the client loads are all poisoned."""
    assert {"_task_ok", "_success", "_exception", "_graph_info", "_foreach_stack", "_foreach_num_splits"} <= set(
        poisoned["names"]
    )


def test_a_default_mount_crawled_runs_no_internal_pickle(poisoned: dict, tmp_path: Path) -> None:
    """ls -lR, grep -r and cat of every file of a default mount (readahead worker included), then the hidden
    internal artifacts' files by name: no marker; the daemon is alive and still serves the unpoisoned flow."""
    markers, run = poisoned["markers"], poisoned["run"]
    _clear(markers)
    with mounted(tmp_path / "mnt", "--datastore-root", str(poisoned["root"]), "--all-namespaces") as mount:
        report = crawl(mount.path)
        task = mount.path / run / "start" / "1"
        for name in poisoned["names"]:
            for file in ("repr.txt", "meta.json", "data.pickle"):
                try:
                    (task / name / file).read_bytes()
                except OSError:
                    pass
        assert mount.process.poll() is None
        assert any(path.endswith("/KitchenFlow/%s/start/1/task.json" % run.split("/")[1]) for path in report.paths)
        assert (mount.path / "HelloFlow" / "latest" / "start" / "1" / "score" / "repr.txt").read_text() == "0.9\n"
    assert _fired(markers) == []


def test_mffs_ls_and_cat_run_no_internal_pickle(poisoned: dict) -> None:
    """`mffs ls` of the flow, run, step and task and `mffs cat` of run.json, step.json, task.json (index, parents,
    children), exception.txt and an internal artifact's repr.txt: no marker."""
    markers, run = poisoned["markers"], poisoned["run"]
    _clear(markers)
    source = ("--datastore-root", str(poisoned["root"]), "--all-namespaces")
    task = run + "/join_inner/12"  # a join inside a foreach: index, parents and children all need internals
    for path in ("KitchenFlow", run, run + "/start", task, task + "/attempts"):
        done = run_mffs("ls", path, *source)
        assert done.returncode == 0, done.stderr
    assert "start" in run_mffs("ls", run, *source).stdout
    for path in (run + "/run.json", run + "/parameters.json", run + "/start/step.json", task + "/task.json",
                 task + "/exception.txt", task + "/_task_ok/repr.txt", task + "/_graph_info/repr.txt"):
        run_mffs("cat", path, *source)
    assert _fired(markers) == []


def test_trust_pickles_mount_option_loads_internal_artifacts_fully(poisoned: dict) -> None:
    """The contrast that shows the tests above can fail: with --trust-pickles, task.json runs `_task_ok`."""
    markers, run = poisoned["markers"], poisoned["run"]
    _clear(markers)
    run_mffs("cat", run + "/start/1/task.json", "--datastore-root", str(poisoned["root"]), "--all-namespaces",
             "--trust-pickles")
    assert "_task_ok" in _fired(markers)


PROPERTIES = {
    "finished": ("_task_ok", lambda task: task.finished),
    "successful": ("_success", lambda task: task.successful),
    "exception": ("_exception", lambda task: task.exception),
    "parent_tasks": ("_graph_info", lambda task: list(task.parent_task_pathspecs)),
    "index": ("_foreach_stack", lambda task: task.index),  # start: no foreach-execution-path, the artifact is read
}


def _task(api, poisoned: dict):
    api.metadata("local@%s" % poisoned["root"])
    api.namespace(None)
    return api.Task(poisoned["run"] + "/start/1")


@pytest.mark.parametrize("prop", sorted(PROPERTIES))
def test_metaflow_client_runs_internal_pickles_and_so_does_ours_by_default(
    poisoned: dict, clients: dict, prop: str
) -> None:
    """Metaflow's client unpickles the internal artifacts fully: their code runs. Ours does the same by default
    (Metaflow's behaviour), and with `trust_pickles(False)` it does not: the property raises instead."""
    markers = poisoned["markers"]
    artifact, read = PROPERTIES[prop]
    for name in ("metaflow", "client"):
        _clear(markers)
        try:
            read(_task(clients[name], poisoned))
        except Exception:
            pass  # os.system returns an int: what a property makes of it does not matter here
        assert _fired(markers) == [artifact], name

    client = clients["client"]
    _clear(markers)
    assert client.trust_pickles(False) is False and client.get_trust_pickles() is False
    with pytest.raises(Exception) as raised:
        read(_task(client, poisoned))
    assert _fired(markers) == []
    assert isinstance(raised.value, client.MetaflowInternalError)


def test_trust_pickles_false_applies_to_data_too(poisoned: dict, clients: dict) -> None:
    client = clients["client"]
    _clear(poisoned["markers"])
    client.trust_pickles(False)
    value = _task(client, poisoned)["_success"].data
    assert "untrusted" in repr(value) and _fired(poisoned["markers"]) == []
    assert client.get_trust_pickles() is False


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("value", [None, True, False])
def test_known_values_table_holds_the_pickles_metaflow_writes(protocol: int, value) -> None:
    from client.cache import KNOWN_VALUES

    sha = hashlib.sha1(pickle.dumps(value, protocol=protocol)).hexdigest()
    assert sha in KNOWN_VALUES and KNOWN_VALUES[sha] is value


def _states(api, flows: List[str]) -> dict:
    """pathspec -> (finished, successful) of every run, (finished, successful, exception is None) of every task."""
    api.namespace(None)
    states = {}
    for flow in flows:
        for run in api.Flow(flow):
            states[run.pathspec] = (run.finished, run.successful)
            for step in run:
                for task in step:
                    states[task.pathspec] = (task.finished, task.successful, task.exception is None)
    return states


def test_finished_and_successful_of_normal_runs_read_no_blob(local_root: Path, clients: dict,
                                                             tmp_path: Path) -> None:
    """With the blobs of None, True and False deleted from a copy of real runs (successful, failed, resumed),
    finished, successful and exception of every task still answer as Metaflow's client does on the original:
    those values come from the record's sha, with no read (and no unpickling, trusted or not)."""
    flows = ["FailFlow", "HelloFlow"]
    root = copy_flows(local_root, tmp_path / "ds", flows)
    removed = set()
    for flow in flows:
        for value, protocol in itertools.product((None, True, False), (2, 4)):
            sha = hashlib.sha1(pickle.dumps(value, protocol=protocol)).hexdigest()
            blob = flow_dir(root, flow) / "data" / sha[:2] / sha
            if blob.exists():
                blob.unlink()
                removed.add(value)
    assert removed == {None, True, False}  # False: the failed task's _task_ok and _success

    expected = _states(clients["metaflow"], flows)
    assert (False, False) in expected.values()
    client = clients["client"]
    for trusted in (True, False):
        client.metadata("local@%s" % root)
        client.trust_pickles(trusted)
        assert _states(client, flows) == expected
    shutil.rmtree(root)


def test_internal_artifacts_that_are_bombs_cost_only_their_own_files(local_root: Path, manifest: dict,
                                                                     tmp_path: Path) -> None:
    """Internal artifacts are loaded by listings in the daemon itself: untrusted, they are read and unpickled
    within fixed bounds. A `_task_ok` that would build a billion-element list (allowed constructors), a 10-byte
    pickle that makes the C unpickler allocate a 4 GB memo, and a `_foreach_stack` of 8 MB each fail their own
    task's files; the run still lists, the daemon stays small."""
    from tests.support.hostile import peak_rss_mb, task_dir

    root = copy_flows(local_root, tmp_path / "ds", ["KitchenFlow"])
    run = manifest["runs"]["kitchen"]
    steps = sorted(p.name for p in (flow_dir(root, "KitchenFlow") / run["run_id"]).iterdir()
                   if not p.name.startswith("_"))
    bombs = {
        "_task_ok": b"\x80\x04\x8c\x08builtins\x94\x8c\x04list\x94\x93\x94\x8c\x08builtins\x94\x8c\x05range"
                    b"\x94\x93\x94J\x00\xca\x9a;\x85\x94R\x94\x85\x94R\x94.",
        "_exception": b"\x80\x04N\x94r\xff\xff\xff\x7f.",  # LONG_BINPUT 2**31-1: the memo bomb
        "_foreach_stack": pickle.dumps([b"x" * 1024] * 1 + [bytes(8 << 20)], protocol=4),
    }
    bombed = {}
    for step, (name, payload) in zip(steps, bombs.items()):
        task = task_dir(root, "KitchenFlow", run["run_id"], step)
        replace_artifact(root, task, name, payload)
        bombed[name] = "%s/%s/%s" % (run["pathspec"], step, task.name)
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces") as mount:
        run_dir = mount.path / run["pathspec"]
        assert sorted(p for p in os.listdir(run_dir) if not p.endswith(".json")) == steps
        report = crawl(run_dir)
        for name, task in bombed.items():
            failing = {path for path in report.errors if path.startswith(str(mount.path / task) + "/")}
            assert failing, (name, report.errors)
            assert not [path for path in report.errors if not path.startswith(tuple(
                str(mount.path / t) for t in bombed.values()))], report.errors
        assert mount.process.poll() is None
        assert peak_rss_mb(mount.process.pid) < 300
