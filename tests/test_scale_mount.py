"""The mount in bounded memory (issue #15): a walk of a wide run stays within `--memory-mb`, and walking it again
reads no more from the backend than the first walk did. A 500-task clone of a small real run
(scripts/make_scale_datastore.py, built in seconds and cached) keeps the suite fast; the figures at 10k-100k tasks
come from scripts/bench_scale.py (docs/benchmarks.md)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Set

import pytest

import client
from mffs.tree import Tree
from mffs.tree.nodes import DIR, Entry, SubdirEntries
from scripts.make_scale_datastore import build_foreach_clone
from tests.conftest import CLIENT_IDENTITY_ENV, reset_client_state
from tests.support.datastores import load_manifest
from tests.support.mount import mounted

TASKS = 500

#: a small budget, so the caches must evict while the run is walked
MEMORY_MB = 96
#: more tasks than MEMORY_MB's share of prepared listings holds rows for (`MemoryBudget.prepared_listings`)
WINDOWED_TASKS = 6000
STEP = "body"
#: the kernel's FORGET requests a forgotten task of the clone may bring: its directory and its artifacts' ones
FORGETS_PER_TASK = 5
REFRESH_S = 0.5


@pytest.fixture(scope="module")
def wide_run() -> tuple:
    """(directory holding .metaflow, pathspec of a `TASKS`-task foreach run cloned from one made by real Metaflow)"""
    parent = build_foreach_clone(TASKS, source_tasks=3, source_runs=1)
    return parent, load_manifest(parent)["runs"]["wide"]["pathspec"]


def _process_tree(pid: int) -> Set[int]:
    """`pid` and every process descending from it (the readahead worker, render workers), from /proc."""
    parents: Dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as stat:
                    parents[int(name)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # exited meanwhile
    tree, grown = {pid}, True
    while grown:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    return tree


def _proc_field(pids: Set[int], file_name: str, field: str) -> int:
    """The sum of a /proc/PID/<file_name> field (`VmHWM:` of status, `syscr:` of io) over `pids`."""
    total = 0
    for pid in pids:
        with open("/proc/%d/%s" % (pid, file_name)) as info:
            total += next(int(line.split()[1]) for line in info if line.startswith(field))
    return total


def _getattr_calls(mount) -> int:
    """The getattr callbacks the daemon has served (a lookup the kernel could not answer from its entries)."""
    return json.loads((mount.path / ".mffs" / "stats").read_text())["calls"].get("getattr", 0)


def _walk(mount, pathspec: str) -> list:
    return subprocess.run(["find", pathspec], cwd=mount.path, check=True, capture_output=True, text=True
                          ).stdout.splitlines()


def test_walks_stay_within_the_memory_budget_and_a_second_reads_no_more(wide_run, tmp_path: Path):
    root, pathspec = wide_run
    env = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root))
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces",
                 "--memory-mb", str(MEMORY_MB), env=env) as mount:
        mount.readahead_pid()  # started by the first walk that lists a task: before the reads are counted
        processes = _process_tree(mount.process.pid)
        assert len(processes) == 2  # the daemon and its readahead worker
        reads_before = _proc_field(processes, "io", "syscr:")
        first = _walk(mount, pathspec)
        reads_first = _proc_field(processes, "io", "syscr:") - reads_before
        second = _walk(mount, pathspec)
        reads_second = _proc_field(processes, "io", "syscr:") - reads_before - reads_first
        peak_kb = _proc_field(_process_tree(mount.process.pid), "status", "VmHWM:")
        assert _process_tree(mount.process.pid) == processes
        # the kernel was told to forget the entries of the tasks walked first (the budget keeps fewer than TASKS):
        # looking one up again reaches the daemon, where the task walked last is still the kernel's
        tasks = [path for path in second if path.count("/") == 3 and path.rsplit("/", 2)[-2:][0] == STEP
                 and path.rsplit("/", 1)[1].isdigit()]
        time.sleep(2 * REFRESH_S)  # the invalidator's thread works every `refresh`
        before = _getattr_calls(mount)
        os.stat(mount.path / tasks[0])
        first_task_lookups = _getattr_calls(mount) - before
        os.stat(mount.path / tasks[-1])
        last_task_lookups = _getattr_calls(mount) - before - first_task_lookups
    assert len(first) > TASKS * 5 and second == first
    # every read system call of the mount's processes: the backend's files, and /dev/fuse for the requests, among
    # them the kernel's FORGETs of the directories of the tasks it was told to forget (the second walk forgets
    # more: those the first one left to the kernel too)
    assert reads_second <= reads_first + FORGETS_PER_TASK * TASKS
    assert peak_kb <= MEMORY_MB * 1024
    assert len(tasks) == TASKS and (first_task_lookups, last_task_lookups) == (1, 0)


def test_a_listing_larger_than_its_share_is_read_whole_in_windows(tmp_path: Path):
    """A step listing too large for the prepared listings' share is prepared a window at a time: `ls` reads every
    task once, in the step's order, as Metaflow's client lists them."""
    root = build_foreach_clone(WINDOWED_TASKS, source_tasks=3, source_runs=1)
    pathspec = load_manifest(root)["runs"]["wide"]["pathspec"]
    env = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root))
    with mounted(tmp_path / "mnt", "--datastore-root", str(root), "--all-namespaces",
                 "--memory-mb", str(MEMORY_MB), env=env) as mount:
        listed = subprocess.run(["ls", "-f", "%s/%s" % (pathspec, STEP)], cwd=mount.path, check=True,
                                capture_output=True, text=True).stdout.splitlines()
        again = subprocess.run(["ls", "-f", "%s/%s" % (pathspec, STEP)], cwd=mount.path, check=True,
                               capture_output=True, text=True).stdout.splitlines()
    metaflow = subprocess.run(
        [sys.executable, "-c", "from metaflow import Step, namespace\nnamespace(None)\n"
         "print('\\n'.join(task.id for task in Step(%r)))" % ("%s/%s" % (pathspec, STEP))],
        env=env, check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(metaflow) == WINDOWED_TASKS
    assert listed == [".", "..", "step.json"] + metaflow
    assert again == listed


def test_listing_a_step_keeps_no_object_per_task(wide_run, monkeypatch: pytest.MonkeyPatch):
    """The tree lists a step from its task records: no client Task is built per task, and the listing keeps names
    and times, each task's Entry made when asked for (SubdirEntries)."""
    root, pathspec = wide_run
    for name in CLIENT_IDENTITY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METAFLOW_DATASTORE_SYSROOT_LOCAL", str(root))
    reset_client_state()
    tree = Tree(client, namespace=None)
    tree.lookup("/%s/%s" % (pathspec, STEP))  # the run's end task tells whether it finished
    tasks_before, entries_before = _live(client.core.Task), _live(Entry)  # other tests' may still be alive
    listing = tree.list("/%s/%s" % (pathspec, STEP))
    assert isinstance(listing, SubdirEntries) and len(listing) == TASKS + 1  # step.json and the tasks
    assert _live(client.core.Task) - tasks_before == 0 and _live(Entry) - entries_before < 10
    first = listing[1]
    assert (first.kind, first.path) == (DIR, "/%s/%s/%s" % (pathspec, STEP, first.name))
    assert first.stat == tree.stat(first.path)  # as the task's node gives it
    assert [entry.name for entry in listing[1:]] == [task.id for task in client.Step("%s/%s" % (pathspec, STEP))]


def _live(cls: type) -> int:
    """Objects of `cls` alive in this process, after a full collection."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, cls))
