"""A loop over 40 runs of an S3 datastore reads one artifact of each run's end task in a bounded number of round trips
one after the other, whatever the access path: `run.data.x`, `run["end"].task.data.x`, `run["end"].task["x"].data`,
`Task(pathspec)` over a listing, `Step(pathspec).task`, and the mount's path tree reading
`<run>/end/<task>/x/repr.txt` in glob order (oldest run first), with and without a stat before each read. Round
trips are counted on the wire by a proxy that holds every request 30 ms (`tests.support.s3requests.RequestLog`):
requests made together overlap, and a request that starts after all earlier ones ended is one more round trip. The
answers are the values planted in the runs, each blob is fetched once."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from client.blobcache import BlobCache
from client.peers import ReadHistory, window
from tests.support import walk
from tests.support.datastores import load_manifest
from tests.support.s3requests import RequestLog, clone_runs
from tests.support.s3server import MotoServer, s3_environment, s3_root_parent, s3_server  # noqa: F401

RUNS = 40
#: round trips one after the other for the whole loop: the reads of a loop's first one or two runs, then the
#: others' blobs fetched together (a process that read them one by one makes more than RUNS)
CLIENT_BOUND = 4
#: the tree's: the 40 blobs together (the first read, of the oldest run, fetches those of the newer ones), and two
#: round trips to spare for a batch split by a stalled process (seen once in 40 loops at load 8 on 2 cores); the
#: size of a file (the mount's stat) comes from the blob fetched with them, not from each task's attempt index
#: (which made 4 round trips one after the other: the first run's blob, its index, the others' blobs, their indexes)
TREE_BOUND = 3

PRELUDE = """
import json, sys
from client import Flow, Step, Task, namespace
namespace(None)
answers = []
"""
ACCESS_PATHS = {
    "run.data": """
for run in Flow("HelloFlow"):
    if run.successful:
        answers.append((run.id, run.data.score))
""",
    "run[end].task.data": """
for run in Flow("HelloFlow"):
    if run.successful:
        answers.append((run.id, run["end"].task.data.score))
""",
    "run[end].task[x].data": """
for run in Flow("HelloFlow"):
    answers.append((run.id, run["end"].task["score"].data))
""",
    "Task(pathspec)": """
pathspecs = [run["end"].task.pathspec for run in Flow("HelloFlow")]
for pathspec in pathspecs:
    answers.append((pathspec.split("/")[1], Task(pathspec).data.score))
""",
    "Step(pathspec).task": """
for run in Flow("HelloFlow"):
    answers.append((run.id, Step(run.pathspec + "/end").task.data.score))
""",
    "tree: cat */end/*/score/repr.txt": """
from mffs.tree import Tree
tree = Tree(namespace=None)
for run in sorted(e.name for e in tree.list("/HelloFlow") if e.name.isdigit()):
    for task in sorted(e.name for e in tree.list("/HelloFlow/%s/end" % run)):
        if task.isdigit():
            answers.append((run, float(tree.read_file("/HelloFlow/%s/end/%s/score/repr.txt" % (run, task)))))
""",
    "tree: stat, then read each file (as the mount does)": """
from mffs.tree import Tree
tree = Tree(namespace=None)
for run in sorted(e.name for e in tree.list("/HelloFlow") if e.name.isdigit()):
    for task in sorted(e.name for e in tree.list("/HelloFlow/%s/end" % run)):
        if task.isdigit():
            path = "/HelloFlow/%s/end/%s/score/repr.txt" % (run, task)
            assert tree.stat(path).size > 0
            answers.append((run, float(tree.read_file(path))))
""",
}
EPILOGUE = """
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def cloned(s3_root_parent: Path, s3_server: MotoServer, tmp_path_factory) -> Tuple[Path, Dict[str, float]]:  # noqa: F811
    """RUNS copies of the S3 datastore's HelloFlow run, each with its own `score`."""
    run_id = load_manifest(s3_root_parent)["runs"]["hello_bob"]["run_id"]
    values = [round(0.5 + number / 1000, 6) for number in range(RUNS)]
    parent = tmp_path_factory.mktemp("s3-clones")
    ids = clone_runs(s3_server, s3_root_parent, "HelloFlow", run_id, "score", values, parent)
    return parent, dict(zip(ids, values))


@pytest.fixture
def request_log(s3_server: MotoServer) -> Iterator[RequestLog]:  # noqa: F811
    log = RequestLog(s3_server.port)
    try:
        yield log
    finally:
        log.close()


def run_loop(source: str, parent: Path, endpoint_url: str, scratch: Path) -> List[Tuple[str, float]]:
    env = {**walk.clean_env(parent, scratch), **s3_environment(endpoint_url)}
    done = subprocess.run([sys.executable, "-c", PRELUDE + source + EPILOGUE], env=env, cwd=str(scratch),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return [tuple(answer) for answer in json.loads(done.stdout.strip().splitlines()[-1])]


@pytest.mark.parametrize("path", list(ACCESS_PATHS))
def test_a_loop_over_runs_reads_in_few_round_trips(
    path: str, cloned: Tuple[Path, Dict[str, float]], request_log: RequestLog, tmp_path: Path
) -> None:
    parent, values = cloned
    answers = run_loop(ACCESS_PATHS[path], parent, request_log.endpoint_url, tmp_path)
    assert dict(answers) == values and len(answers) == RUNS
    blob_gets = [r.path for r in request_log.requests if r.method == "GET" and "/HelloFlow/data/" in r.path]
    assert len(blob_gets) == len(set(blob_gets)) >= RUNS  # each run's blob once (and a few shared ones)
    # the files' sizes come from the blobs: no attempt index is read (main read each run's: 78 more requests)
    assert not any(r.path.endswith(".data.json") for r in request_log.requests)
    bound = TREE_BOUND if path.startswith("tree") else CLIENT_BOUND
    assert request_log.waves() <= bound, sorted((r.started, r.method, r.path) for r in request_log.requests)


def test_a_second_process_reads_nothing_from_s3(
    cloned: Tuple[Path, Dict[str, float]], request_log: RequestLog, tmp_path: Path
) -> None:
    """With the disk cache of the first, a second tree walk over the runs makes no request: the blobs (which tell
    the files' sizes too) are on disk."""
    parent, values = cloned
    source = ACCESS_PATHS["tree: stat, then read each file (as the mount does)"]
    assert dict(run_loop(source, parent, request_log.endpoint_url, tmp_path)) == values
    assert len(request_log.requests) >= RUNS
    request_log.clear()
    assert dict(run_loop(source, parent, request_log.endpoint_url, tmp_path)) == values
    assert request_log.requests == []


def test_the_reads_remembered_make_a_loop_only_when_close_in_time() -> None:
    now = [0.0]
    history = ReadHistory(horizon=30.0, clock=lambda: now[0])
    assert history.record("x", "run1") is None
    assert history.record("x", "run1") is None  # the same run again: no loop yet
    now[0] = 10.0
    assert history.record("x", "run2") == "run1"
    assert history.record("x", "run2") == "run1"  # still the run before
    now[0] = 50.0
    assert history.record("x", "run3") is None  # read long after: no loop
    assert history.record("y", "run3") is None  # another key


def test_the_window_follows_the_direction_of_the_reads() -> None:
    ids = [str(n) for n in range(100)]
    assert window(ids, "10", None) == ids[10:74]
    assert window(ids, "10", "9") == ids[10:74]
    assert window(ids, "10", "11") == ids[:11][::-1]
    assert window(ids, "99", "98") == ["99"]
    assert window(ids, "99", None) == ids[36:][::-1]  # a loop that starts at the last id goes back
    assert window(ids, "x", None) == []


def test_a_read_of_a_blob_being_prefetched_waits_for_that_blob_alone() -> None:
    from concurrent.futures import Future

    cache = BlobCache(1 << 20)
    first, second = Future(), Future()
    cache.track("a", first, 100)
    cache.track("b", second, 100)
    assert cache.fetching("a", 100) and not cache.fetching("a", 101)  # a larger read is another fetch
    assert cache.get("a", wait=False) is None

    def fetched() -> None:
        cache.put("a", b"blob")
        first.set_result(None)

    threading.Timer(0.05, fetched).start()
    assert cache.get("a") == b"blob"  # waited for its fetch, not for "b"'s
    assert not cache.fetching("a", 0) and cache.fetching("b", 0)
    second.set_exception(OSError("failed"))  # a failed fetch: the read fetches (and reports) the blob itself
    assert cache.get("b") is None and not cache.fetching("b", 0)
    done = Future()
    done.set_result(None)
    cache.track("c", done, 100)  # ended before it was noted: nothing to wait for
    assert not cache.fetching("c", 0)
