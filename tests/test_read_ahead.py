"""Reading a task ahead (`Task.read_ahead`, told by the mount's task listings): from a local datastore, the files the
named properties read are asked of the disk at once, and only those; a task listing reads nothing it did not read
ahead; a broken or hostile task raises nothing and has nothing read outside the datastore. That answers do not
change is the providers' contract (tests/test_provider_contract.py)."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import List, Tuple

import pytest

import client
from client.storage.local import LocalStorage
from mffs.tree import DIR, StepDir, TaskDir, Tree
from tests.support.hostile import copy_flows, task_dir, wait_for
from tests.support.pagecache import in_page_cache, make_cold


@pytest.fixture
def copy(local_root: Path, manifest: dict, tmp_path: Path) -> Tuple[Path, dict]:
    """A private copy of KitchenFlow and SleepFlow (whose page cache the test may empty), the client pointed at it."""
    parent = copy_flows(local_root, tmp_path / "copy", ["KitchenFlow", "SleepFlow"])
    client.metadata("local@%s" % parent)
    client.namespace(None)
    return parent, manifest["runs"]


def _files_below(directory: Path) -> List[Path]:
    return [path for path in directory.rglob("*") if path.is_file() and not path.is_symlink()]


def test_read_ahead_asks_the_disk_for_the_files_the_properties_read(copy):
    parent, runs = copy
    directory = task_dir(parent, "KitchenFlow", runs["kitchen"]["run_id"], "branch_b")
    task = client.Task("KitchenFlow/%s/branch_b/%s" % (runs["kitchen"]["run_id"], directory.name))
    assert task.current_attempt == 1  # retried: attempt 1's artifacts are the ones shown
    files = _files_below(directory)
    make_cold(files)
    meta = directory / "_meta"
    expected = {path for path in meta.iterdir() if re.fullmatch(
        r"1_artifact_[^_].*\.json|1_artifact__exception\.json|sysmeta_(attempt|ds-root)_\d+\.json", path.name)}
    expected |= {directory / "1.DONE.lock", directory / "1.data.json"}
    assert len(expected) > 8

    task.read_ahead(*TaskDir.LISTING_ASKS)
    assert wait_for(lambda: all(in_page_cache(path) for path in expected), timeout=5), \
        sorted(path.name for path in expected if not in_page_cache(path))
    time.sleep(0.2)  # what else it started would have arrived by now
    assert {path for path in files if in_page_cache(path)} == expected


def test_a_task_listing_reads_nothing_it_did_not_read_ahead(copy, monkeypatch):
    """For every task of a finished run (retries, @catch, cards, foreach) and of an unfinished one: listing the
    task and every directory below it reads only files the task's listing read ahead (and task records, read to
    build each directory's task), so that its reads wait for the disk once."""
    parent, runs = copy
    reads: List[str] = []
    ahead: List[str] = []
    read, read_ahead = LocalStorage.read, LocalStorage.read_ahead
    monkeypatch.setattr(LocalStorage, "read", lambda self, key: reads.append(key) or read(self, key))
    monkeypatch.setattr(LocalStorage, "read_ahead", lambda self, keys: ahead.extend(keys) or read_ahead(self, keys))
    tree = Tree(client, namespace=None)
    checked = 0
    for run in ("KitchenFlow/%s" % runs["kitchen"]["run_id"], "SleepFlow/%s" % runs["unfinished"]["run_id"]):
        steps = [entry.path for entry in tree.list("/" + run) if isinstance(tree.lookup(entry.path), StepDir)]
        for step in steps:
            for task in (entry for entry in tree.list(step) if entry.kind == DIR):
                del reads[:], ahead[:]
                directories = [task.path]
                for path in directories:
                    directories.extend(entry.path for entry in tree.list(path) if entry.kind == DIR)
                unexpected = [key for key in reads if key not in ahead and not key.endswith("/_meta/_self.json")]
                assert reads and not unexpected, task.path
                checked += 1
    assert checked > 10


def test_read_ahead_of_a_broken_task_raises_nothing_and_reads_nothing_outside(copy, tmp_path):
    parent, runs = copy
    run_id = runs["kitchen"]["run_id"]
    directory = task_dir(parent, "KitchenFlow", run_id, "branch_a")
    task = client.Task("KitchenFlow/%s/branch_a/%s" % (run_id, directory.name))
    outside = tmp_path / "outside.json"
    for name in ("0.data.json", "_meta/0_artifact_x.json", "_meta/0_artifact__exception.json"):
        outside.write_text((directory / name).read_text())
        (directory / name).unlink()
        (directory / name).symlink_to(outside)
    (directory / "_meta" / "0_artifact_label.json").write_text("{not json")
    make_cold(_files_below(directory) + [outside])
    task.read_ahead(*TaskDir.LISTING_ASKS)
    time.sleep(0.2)
    assert not in_page_cache(outside)
    assert "x" not in [artifact.id for artifact in task]  # the link is no record; the read reports it

    shutil.rmtree(directory / "_meta")  # gone since the task was looked up
    task.read_ahead(*TaskDir.LISTING_ASKS)
    with pytest.raises(KeyError):
        task.read_ahead("no_such_property")
