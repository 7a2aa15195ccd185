"""Readahead (mffs/readahead.py): task listings built ahead of a walk by a worker process, without FUSE."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest

import client
from mffs import readahead
from mffs.tree import DIR, Entry, Tree


@pytest.fixture
def tasks(mf, manifest) -> List[str]:
    """Tree paths of the tasks of the kitchen run's widest foreach step."""
    run = mf.Run(manifest["runs"]["kitchen"]["pathspec"])
    step = max(run, key=lambda s: len(list(s)))
    paths = ["/%s/%s" % (step.pathspec, task.id) for task in step]
    assert len(paths) >= 3
    return paths


def reading_ahead(window: int, **settings) -> Iterator[Tree]:
    tree = Tree(client, **settings)
    tree.attach(readahead.Readahead(tree, window))
    try:
        assert tree.listing_source.wait_ready(30)
        yield tree
    finally:
        tree.close()
    assert tree.listing_source._worker.poll() is not None  # closing the tree ended the worker


@pytest.fixture
def tree(client_env) -> Iterator[Tree]:
    yield from reading_ahead(window=1)


class RecordingSource:
    """A listing source (mffs.tree.ListingSource) that serves given listings and records what the tree tells it."""

    def __init__(self, listings: Dict[str, List[Entry]]):
        self.listings = listings
        self.calls: List[tuple] = []

    def listing(self, path: str) -> Optional[List[Entry]]:
        self.calls.append(("listing", path))
        return self.listings.pop(path, None)

    def after(self, task_path: str) -> None:
        self.calls.append(("after", task_path))

    def note_lookup_in_task(self) -> None:
        self.calls.append(("lookup in task",))

    def close(self) -> None:
        self.calls.append(("close",))

    def usage(self) -> Dict[str, Any]:
        return {"pid": None, "cpu_seconds": 0.0, "max_rss_kb": 0}


def test_an_attached_source_serves_listings_and_hears_the_walk(client_env, tasks):
    """The hook readahead is attached through: the tree asks the source first and tells it which tasks a walk
    lists and when it looks inside one."""
    step = os.path.dirname(tasks[0])
    served = [Entry("ahead", tasks[1] + "/ahead", DIR)]
    tree = Tree(client)
    source = RecordingSource({tasks[1]: served})
    tree.attach(source)
    tree.list(step)
    tree.list(tasks[0])
    assert tree.listing(tasks[1]) == (True, served)
    tree.stat(tasks[0] + "/task.json")
    tree.close()
    assert source.calls == [
        ("listing", step), ("listing", tasks[0]), ("after", tasks[0]), ("listing", tasks[1]), ("lookup in task",),
        ("close",),
    ]


def test_the_worker_lists_the_next_task_as_the_walk_would(tree, client_env, tasks):
    plain = Tree(client)
    tree.list(os.path.dirname(tasks[0]))
    time.sleep(0.2)
    assert tree.listing_source.listing(tasks[1]) is None  # listing a step alone reads nothing ahead

    tree.list(tasks[0])
    assert tree.listing_source.listing(tasks[2]) is None  # the window is 1: only the next task was asked for
    assert tree.listing(tasks[1]) == (True, plain.list(tasks[1]))  # waits for the worker
    assert tree.cached(tasks[1]) is None  # served as the worker built it: no node built here
    subdirectories = [entry.path for entry in plain.list(tasks[1]) if entry.kind == DIR]
    assert subdirectories
    for path in subdirectories:  # they came with it
        assert tree.listing(path) == (True, plain.list(path))
        assert tree.cached(path) is None
    assert tree.listing_source.listing(tasks[1]) is None  # handed out once; the tree builds it if asked again
    assert tree.list(tasks[1]) == plain.list(tasks[1])


def test_no_reading_ahead_while_the_walk_looks_into_tasks(tree, client_env, tasks):
    """A walk that stats files inside the tasks (ls -lR, grep -r) builds their nodes in the daemon anyway: the
    worker would only repeat that work. A walk that only lists (find) gets the next tasks read ahead."""
    assert len(tasks) >= 4
    tree.list(os.path.dirname(tasks[0]))
    tree.list(tasks[0])  # asks for tasks[1]
    tree.stat(tasks[0] + "/task.json")
    assert tree.listing(tasks[1])[0] and tree.cached(tasks[1]) is None  # from the worker
    assert tree.listing_source.listing(tasks[2]) is None  # not asked for: the walk looked into tasks[0]
    tree.list(tasks[2])  # built here; nothing looked up since tasks[1]: reading ahead again
    assert tree.listing(tasks[3])[0] and tree.cached(tasks[3]) is None


def test_only_a_task_listing_answers_whether_the_walk_looked_into_tasks(tree, client_env, tasks):
    """Listings of a task's own directories, handed out between two task listings, leave the signal alone."""
    tree.list(os.path.dirname(tasks[0]))
    tree.list(tasks[0])  # asks for tasks[1]
    subdirectories = [entry.path for entry in tree.list(tasks[1]) if entry.kind == DIR]  # asks for tasks[2]
    tree.stat(tasks[1] + "/task.json")
    assert tree.listing(subdirectories[0])[0] and tree.cached(subdirectories[0]) is None  # from the worker
    assert tree.listing(tasks[2])[0] and tree.cached(tasks[2]) is None
    assert tree.listing_source.listing(tasks[3]) is None  # not asked for: the walk looked into tasks[1]


def test_the_walk_goes_on_when_the_worker_dies(tree, client_env, tasks, caplog):
    plain = Tree(client)
    tree.list(os.path.dirname(tasks[0]))
    os.kill(tree.listing_source._worker.pid, signal.SIGKILL)
    tree.listing_source._worker.wait()
    with caplog.at_level(logging.WARNING, logger="mffs"):
        tree.list(tasks[0])  # asks the dead worker for tasks[1]
        started = time.monotonic()
        assert tree.list(tasks[1]) == plain.list(tasks[1])
    assert time.monotonic() - started < readahead.WAIT_SECONDS  # released when the worker's pipe closed
    assert "readahead worker" in caplog.text


def test_the_walk_stops_waiting_for_a_stalled_worker(client_env, tasks, monkeypatch, caplog):
    monkeypatch.setattr(readahead, "WAIT_SECONDS", 0.5)
    plain = Tree(client)
    for tree in reading_ahead(window=2):
        tree.list(os.path.dirname(tasks[0]))
        os.kill(tree.listing_source._worker.pid, signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger="mffs"):
            tree.list(tasks[0])  # asks for tasks[1] and tasks[2]
            assert tree.list(tasks[1]) == plain.list(tasks[1])  # after one wait of WAIT_SECONDS
            started = time.monotonic()
            assert tree.list(tasks[2]) == plain.list(tasks[2])
        assert time.monotonic() - started < readahead.WAIT_SECONDS  # no second wait
        assert "did not answer" in caplog.text
        os.kill(tree.listing_source._worker.pid, signal.SIGCONT)


def test_the_worker_builds_the_tree_the_daemon_has(client_env, tasks, manifest):
    """A run mounted at the root, trusted pickles (their exports differ), every namespace: the worker's listings
    are the daemon's."""
    run = manifest["runs"]["kitchen"]["pathspec"]
    settings = dict(pathspec=run, namespace=None, trust_pickles=True)
    local = [path[len(run) + 1:] for path in tasks]
    plain = Tree(client, **settings)
    for tree in reading_ahead(window=1, **settings):
        tree.list(os.path.dirname(local[0]))
        tree.list(local[0])
        assert tree.listing(local[1]) == (True, plain.list(local[1]))
        assert tree.cached(local[1]) is None
        for entry in plain.list(local[1]):
            if entry.kind == DIR:
                assert tree.listing(entry.path) == (True, plain.list(entry.path))


class ListingRecorder:
    """A task lister for readahead._Lister: blocks for `wait_s` and spins `spin_s` on the CPU per task (or lists
    with `list_task`), recording how many listings ran at once."""

    def __init__(self, wait_s: float = 0.0, spin_s: float = 0.0, list_task=None):
        self.wait_s, self.spin_s, self.list_task = wait_s, spin_s, list_task
        self.running = self.most_running = 0
        self.frames: List[tuple] = []
        self._lock = threading.Lock()

    def __call__(self, task_path: str) -> list:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        for _ in range(5 if self.wait_s else 0):  # blocks five times, as a listing whose reads go to the disk
            time.sleep(self.wait_s / 5)
        spin_until = time.thread_time() + self.spin_s
        while time.thread_time() < spin_until:
            pass
        listings = self.list_task(task_path) if self.list_task else [(task_path, [])]
        with self._lock:
            self.running -= 1
        return listings

    def serve(self, paths: List[str]) -> None:
        lister = readahead._Lister(self, self.frames.append)
        for path in paths:
            lister.serve(path)
        lister.wait()


def test_listings_that_wait_for_reads_are_made_on_threads():
    recorder = ListingRecorder(wait_s=0.02)
    paths = ["/F/1/s/%d" % number for number in range(24)]
    recorder.serve(paths)
    assert recorder.most_running == readahead.LISTING_THREADS
    assert sorted(recorder.frames) == sorted((path, [(path, [])]) for path in paths)  # each written once


def test_listings_that_keep_the_cpu_busy_are_made_one_at_a_time():
    recorder = ListingRecorder(spin_s=0.001)
    recorder.serve(["/F/1/s/%d" % number for number in range(24)])
    assert recorder.most_running == 1
    assert [path for path, _ in recorder.frames] == ["/F/1/s/%d" % number for number in range(24)]


def test_listing_goes_back_to_one_thread_when_reads_stop_waiting(monkeypatch):
    monkeypatch.setattr(readahead, "PROBE_EVERY", 4)
    recorders = {"wait": ListingRecorder(wait_s=0.02), "busy": ListingRecorder(spin_s=0.001),
                 "later": ListingRecorder(spin_s=0.001)}
    lister = readahead._Lister(lambda path: recorders[path.split("/")[1]](path), lambda frame: None)
    for kind, count in (("wait", 8), ("busy", 8), ("later", 8)):
        for number in range(count):
            lister.serve("/%s/%d" % (kind, number))
        lister.wait()
    assert recorders["wait"].most_running > 1
    assert recorders["later"].most_running == 1  # a probe among the busy ones saw the CPU busy


def test_listings_made_on_threads_are_those_made_one_at_a_time(client_env, tasks):
    """The worker's tree lists tasks from several threads at once (a cold page cache) as it does from one."""
    tree = Tree(client, namespace=None)
    waiting = ListingRecorder(wait_s=0.01, list_task=lambda path: readahead._task_listings(tree, path))
    waiting.serve(tasks * 3)
    assert waiting.most_running > 1
    alone = Tree(client, namespace=None)
    expected = {path: readahead._task_listings(alone, path) for path in tasks}
    assert all(expected[path] for path in tasks)
    assert sorted(waiting.frames) == sorted((path, expected[path]) for path in tasks * 3)
