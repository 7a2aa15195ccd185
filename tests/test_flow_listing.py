"""Listing a flow of many runs (issue #15): the same runs, order and `latest*` as Metaflow's client, read at a
bounded number of files per run.

The flow is the standard datastore's FailFlow cloned (hard links) to a few hundred runs in seconds: successful and
failed runs of two users, failed newest runs, and runs created in the same millisecond (ties keep the order of
the directory listing, as in Metaflow).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import client
from mffs.tree import DIR, Tree
from mffs.tree import tree as tree_module
from mffs.tree.runs import FlowDir
from tests.conftest import reset_client_state
from tests.support.mount import mounted

FLOW = "FailFlow"
RUNS = 300
NAMESPACES = [None, "user:alice", "user:bob", "failtag"]
LINKS = ("latest", "latest_successful", "tags")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copy2(source, target)


def _clone_run(template: Path, target: Path, run_id: str, record: dict) -> None:
    """`template` (a run directory) as run `run_id`: files hard-linked, `_self.json` records rewritten (the run's
    own to `record`)."""
    for directory, _, files in os.walk(template):
        relative = os.path.relpath(directory, template)
        os.makedirs(target / relative, exist_ok=True)
        for name in files:
            source, destination = os.path.join(directory, name), str(target / relative / name)
            if name != "_self.json":
                _link_or_copy(source, destination)
                continue
            with open(source) as handle:
                data = json.load(handle)
            data["run_number"] = run_id
            if relative == "_meta":
                data.update(record)
            with open(destination, "w") as handle:
                json.dump(data, handle)


def _run_plan(manifest: dict) -> List[dict]:
    """RUNS runs, oldest first: which real run each copies, whose it is, its creation time."""
    ok_bob, failed, ok_alice = (manifest["runs"][key]["run_id"] for key in ("codepkg", "fail", "resume"))
    plan = []
    for number in range(RUNS):
        user = "bob" if number % 3 == 0 else "alice"
        if number % 7 == 3 or number >= RUNS - 4:  # failed runs, and the four newest
            template = failed
        else:
            template = ok_bob if user == "bob" else ok_alice
        ts = 1_790_000_000_000 + 1000 * (number - number % 10 // 9)  # runs 8 and 9 of every ten: one time
        plan.append({"template": template, "user": user, "ts": ts, "id": str(1_800_000_000_000_000 + number)})
    return plan


@pytest.fixture(scope="module")
def many_runs(tmp_path_factory: pytest.TempPathFactory, local_root: Path, manifest: dict) -> Path:
    """A local datastore whose FailFlow has RUNS runs; returns the directory holding its `.metaflow`."""
    parent = tmp_path_factory.mktemp("many-runs")
    source, flow = local_root / ".metaflow" / FLOW, parent / ".metaflow" / FLOW
    flow.mkdir(parents=True)
    shutil.copytree(source / "_meta", flow / "_meta")
    shutil.copytree(source / "data", flow / "data", copy_function=_link_or_copy)
    for run in _run_plan(manifest):
        with open(source / run["template"] / "_meta" / "_self.json") as handle:
            tags = json.load(handle)
        system_tags = [t for t in tags["system_tags"] if not t.startswith("user:")] + ["user:" + run["user"]]
        record = {"ts_epoch": run["ts"], "user_name": run["user"], "system_tags": system_tags}
        _clone_run(source / run["template"], flow / run["id"], run["id"], record)
    return parent


@pytest.fixture
def both(monkeypatch: pytest.MonkeyPatch, many_runs: Path) -> Iterator[dict]:
    """Metaflow's client and ours on `many_runs`, as user alice."""
    import metaflow

    monkeypatch.setenv("USER", "alice")
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(many_runs))
    reset_client_state()
    for api in (metaflow, client):
        api.metadata("local@%s" % many_runs)
    yield {"metaflow": metaflow, "client": client}


def _metaflow_view(metaflow, namespace) -> Dict[str, object]:
    metaflow.namespace(namespace)
    flow = metaflow.Flow(FLOW)
    runs = [run.id for run in flow]
    successful = flow.latest_successful_run
    return {"runs": runs, "latest": runs[0], "latest_successful": successful.id if successful else None}


def _tree_view(tree: Tree) -> Dict[str, object]:
    names = [entry.name for entry in tree.list("/" + FLOW)]
    view = {"runs": [name for name in names if name not in LINKS], "latest": tree.readlink("/%s/latest" % FLOW)}
    view["latest_successful"] = (
        tree.readlink("/%s/latest_successful" % FLOW) if "latest_successful" in names else None
    )
    return view


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_the_flow_lists_metaflows_runs_in_its_order(both, namespace):
    expected = _metaflow_view(both["metaflow"], namespace)
    assert len(expected["runs"]) > 20 and expected["latest"] != expected["latest_successful"]
    assert _tree_view(Tree(client, namespace=namespace)) == expected


def test_a_listed_run_reads_as_stable_once_looked_into(both):
    tree = Tree(client, namespace=None)
    newest, *_ = [entry for entry in tree.list("/" + FLOW) if entry.name not in LINKS]
    successful = tree.readlink("/%s/latest_successful" % FLOW)
    for run_id, finished in ((newest.name, False), (successful, True)):
        path = "/%s/%s" % (FLOW, run_id)
        run = both["client"].Run("%s/%s" % (FLOW, run_id), _namespace_check=False)
        assert tree.stat(path).mtime == pytest.approx(run.created_at.timestamp())
        assert not tree.stat(path).stable  # not read yet whether it finished
        assert "run.json" in [entry.name for entry in tree.list(path)]
        assert tree.stat(path).stable is finished


class _FileCalls:
    """Counts the calls that reach the filesystem (opens, listings, stats), passing each on unchanged."""

    NAMES = ("open", "scandir", "listdir", "lstat", "stat", "access")

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        for name in self.NAMES:
            monkeypatch.setattr(os, name, self._counted(getattr(os, name)))

    def _counted(self, call):
        def counted(*args, **kwargs):
            self.count += 1
            return call(*args, **kwargs)

        return counted


def test_listing_the_flow_reads_a_bounded_number_of_files_per_run(both, monkeypatch):
    """`ls -l FLOW` + `readlink FLOW/latest_successful`: the run's own record, not its end task, per run."""
    tree = Tree(client, namespace=None)
    calls = _FileCalls(monkeypatch)
    entries = tree.list("/" + FLOW)
    for entry in entries:
        assert tree.stat(entry.path).kind == (DIR if entry.name not in LINKS[:2] else "link")
    tree.readlink("/%s/latest_successful" % FLOW)
    assert len(entries) == RUNS + len(LINKS)
    assert calls.count <= 3 * RUNS  # each end task: about 12 per run


def test_a_flow_larger_than_the_cache_of_live_nodes_is_listed_once(both, monkeypatch):
    """The runs of a listed flow are entries kept with the flow's node, not nodes in the tree's cache of live
    nodes: a flow with more runs than that cache holds keeps its node and links, and `readlink latest_successful`,
    a second listing and the runs' lookups that follow `ls -l` reuse the listing."""
    monkeypatch.setattr(tree_module, "LIVE_NODES", RUNS)
    tree = Tree(client, namespace=None)
    entries = tree.list("/" + FLOW)
    assert tree.cache_info()["live_nodes"] < 10
    listings = []
    original = FlowDir._runs
    monkeypatch.setattr(FlowDir, "_runs", lambda node: listings.append(node.path) or original(node))
    assert tree.readlink("/%s/latest_successful" % FLOW) in [entry.name for entry in entries]
    assert tree.list("/" + FLOW) == entries
    for entry in entries[:50]:
        assert tree.stat(entry.path).mtime == entry.stat.mtime
    assert listings == []


@pytest.mark.fuse
def test_the_mounted_flow_lists_metaflows_runs(both, many_runs, tmp_path):
    expected = _metaflow_view(both["metaflow"], None)
    env = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(many_runs))
    with mounted(tmp_path / "mnt", "--datastore-root", str(many_runs), "--all-namespaces", env=env) as mount:
        flow = mount.path / FLOW
        before = mount.calls("getattr")
        names = os.listdir(flow)
        assert [name for name in names if name not in LINKS] == expected["runs"]
        assert all(os.lstat(flow / name).st_nlink for name in names)
        assert mount.calls("getattr") - before < 10  # the runs' attributes came with the listing (readdirplus)
        assert os.readlink(flow / "latest_successful") == expected["latest_successful"]
        run = both["client"].Run("%s/%s" % (FLOW, expected["runs"][-1]), _namespace_check=False)
        assert os.stat(flow / run.id).st_mtime == pytest.approx(run.created_at.timestamp())
        assert json.loads((flow / "latest_successful" / "run.json").read_text())["successful"] is True
