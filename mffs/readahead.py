"""Readahead: task directories listed ahead of a walk, in a worker process.

A walk (`find`, `grep -r`, `ls -R`) lists a step's tasks one after the other, and each task's listing (with its
artifact directories) reads about ten small files through the client and builds their nodes. When a walk lists a
task directory of a finished step, `Readahead.after` sends the `window` tasks after it in the step's listing to a
worker process, which lists each with its subdirectories in its own Tree and sends the listings back; the walk
then finds them ready, or waits for one being built rather than build it twice. Only a walk that just lists
gets this: one that also looks into the tasks (`grep -r`, `ls -lR`) has the daemon build their nodes anyway
(see `after`).

Why a process and not a thread: the tree work is Python, so a thread only moves it from one holder of the GIL to
another, and the walk's FUSE callbacks wait for the GIL instead of for reads. In a process it runs on another core
while the daemon answers the walk (`find` over a 1000-task run: see docs/benchmarks.md).

The front end attaches a Readahead to its Tree (`Tree.attach`, mffs/cli.py with `--readahead TASKS`); the tree
hands it the listings the walk asks for and tells it which task directories the walk lists. The worker is the same
code with the same settings (`worker_settings`), started by the first walk that lists a task of a finished step
(not with the mount: its start-up would take a core from the first requests) and ended when its requests pipe closes
(`Tree.close` closes the Readahead), so it never outlives the daemon. Only listings of stable directories (a finished
run) are read ahead, so the worker's answer is the one the daemon would have built. Errors are left to the walk:
a task the worker could not list comes back empty and the walk builds it, meeting and reporting the error itself.
If the worker dies or stalls, the walk waits at most `WAIT_SECONDS` per task, then builds what it needs.

Wire format: requests are task paths, one per line, on the worker's stdin; answers are frames on its stdout, in the
order the listings finish (see `_Lister`), each a 4-byte little-endian length and a `marshal`led (task path,
[(directory path, [entry, ...]), ...]), where an entry is (name, kind, stat fields or None). The first frame,
(None, []), says the worker is ready.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import marshal
import os
import posixpath
import resource
import subprocess
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

from cachetools import LRUCache

import client

from .sandbox import limit_memory, process_usage, read_frame, start_worker, write_frame
from .tree import DIR, Dir, Entry, Stat, StepDir, Tree, TreeSettings, collect_garbage_for_caches, join
from .tree.nodes import LISTING_ENTRY_BYTES

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("mffs")

WAIT_SECONDS = 5.0
#: tasks a worker's process image lists before it may replace itself (see `main`)
MIN_TASKS_PER_IMAGE = 256
#: threads listing tasks while the listings wait for reads (see `_Lister`; more took more CPU than they saved here)
LISTING_THREADS = 2
#: listings wait for reads when the last `PROBE_LISTINGS` made alone blocked this many times each on average
#: (voluntary context switches: reads that went to the disk or the network). A task's listing reads about ten files,
#: asked of the disk together (`Task.read_ahead`): here it blocks less than once on average, from the page cache or
#: not, and stays on one thread; the threads are for stores where listings still wait
BLOCKING_READS = 4
PROBE_LISTINGS = 4
#: while listing on threads, after this many tasks `PROBE_LISTINGS` are listed alone, to tell whether they still wait
PROBE_EVERY = 64
_Listing = Tuple[str, List[Tuple[str, str, Optional[tuple]]]]  # directory path, [(name, kind, stat fields)]


@dataclasses.dataclass
class _ListedStep:
    """What Readahead knows of a listed step directory, kept for as long as the step's node lives."""

    positions: Dict[str, int]  # task name -> position in the step's listing (names shared with the listing)
    handed_out: int = 0  # the tasks before this position were sent to the worker


class Readahead:
    """The daemon's side: sends task paths to the worker and keeps the listings it sends back until the walk takes
    them (a listing is handed out once: the front end keeps what it serves again, within its budget; the listings
    waiting are bounded by `MemoryBudget.readahead_listings`, the least recently received dropped first, for walks
    that stop). A walk that comes back to tasks read ahead before (a second `find`) gets them read ahead again."""

    def __init__(self, tree: Tree, window: int):
        self.tree, self.window = tree, window
        self._lock = threading.Lock()
        self._listings: LRUCache = LRUCache(
            maxsize=tree.settings.budget.readahead_listings,
            getsizeof=lambda entries: LISTING_ENTRY_BYTES * (len(entries) + 1),
        )
        self._pending: Dict[str, threading.Event] = {}
        self._ready = threading.Event()
        self._alive = True
        self._walk_reads_tasks = False
        self._steps: "weakref.WeakKeyDictionary[StepDir, _ListedStep]" = weakref.WeakKeyDictionary()
        # started by the first walk that lists a task (its start-up would take a core from a fresh mount's first
        # requests, an `ls` of a flow, which it does not serve)
        self._worker: Optional["subprocess.Popen[bytes]"] = None

    def _start(self) -> "subprocess.Popen[bytes]":
        """The worker, started if it was not. Called with the lock held."""
        if self._worker is None:
            settings = worker_settings(self.tree)
            self._worker = start_worker(
                "mffs.readahead", dataclasses.asdict(settings), settings.budget.client_environment(worker=True)
            )
            threading.Thread(target=self._receive, args=(self._worker,), name="mffs-readahead", daemon=True).start()
        return self._worker

    def note_lookup_in_task(self) -> None:
        """A name inside a task directory was looked up (a file stat'ed or opened, a directory entered without its
        attributes from a listing)."""
        self._walk_reads_tasks = True

    def after(self, task_path: str) -> None:
        """`task_path`, a task directory, was just listed by a walk. Reads the next tasks ahead unless the walk
        looked up names inside tasks since the last call: a walk that stats or reads files (`grep -r`, `ls -lR`)
        makes the daemon build every task's nodes anyway, and the worker's listings would only repeat that work
        and take CPU from it (docs/benchmarks.md). `find`, whose directories come with their attributes in the
        listings, looks up nothing."""
        step = self.tree.cached(posixpath.dirname(task_path))
        if not isinstance(step, StepDir) or not step.stable:
            return  # not a task directory (`listing` calls this for every listing it hands out)
        if self._walk_reads_tasks:
            self._walk_reads_tasks = False
            return
        with self._lock:
            if not self._alive:  # checked with the lock held: `_stop` releases only the waits it sees
                return
            worker = self._start()
            paths = self._tasks_after(step, task_path)
            for path in paths:
                self._pending[path] = threading.Event()
        if paths:
            self._send(worker, "".join(path + "\n" for path in paths))

    def _tasks_after(self, step: StepDir, task_path: str) -> List[str]:
        """Paths of the (up to) `window` tasks listed after `task_path` in `step`, except those an earlier call of
        the same walk returned (a walk that went back, or a new one, starts afresh) and those still waiting to be
        taken; [] until the step was listed. Called with the lock held."""
        listing = step.listing
        if listing is None:
            return []
        listed = self._steps.get(step)
        if listed is None:
            listed = self._steps[step] = _ListedStep({entry.name: number for number, entry in enumerate(listing)})
        position = listed.positions.get(task_path.rsplit("/", 1)[1])
        if position is None:
            return []
        start, end = position + 1, min(position + 1 + self.window, len(listing))
        if start <= listed.handed_out <= end:  # the walk goes on: what it was sent is on its way
            start = listed.handed_out
        listed.handed_out = end
        return [entry.path for entry in listing[start:end]
                if entry.kind == DIR and entry.path not in self._pending and entry.path not in self._listings]

    def listing(self, path: str) -> Optional[List[Entry]]:
        """Takes the listing of `path` if the worker built it (waiting for it if it is being built), else None."""
        with self._lock:
            entries = self._listings.pop(path, None)
            event = self._pending.get(path) if entries is None else None
        if event is not None and self._ready.is_set():
            if not event.wait(WAIT_SECONDS):
                self._stop("the readahead worker did not answer within %g s" % WAIT_SECONDS)
            with self._lock:
                entries = self._listings.pop(path, None)
        if entries is not None:
            self.after(path)
        return entries

    def wait_ready(self, timeout: float) -> bool:
        """Starts the worker if no walk did, and tells whether it is up (waiting at most `timeout` seconds). Until
        then, the walk does not wait for it."""
        with self._lock:
            if self._alive:
                self._start()
        return self._ready.wait(timeout)

    def close(self) -> None:
        """End the worker (it exits when its requests pipe closes)."""
        self._stop(None)
        with self._lock:
            worker = self._worker
        if worker is None:
            return
        try:
            worker.stdin.close()
        except OSError:
            pass
        try:
            worker.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    def usage(self) -> Dict[str, Any]:
        """The worker's pid, CPU seconds and peak RSS (from /proc; zeros once it has exited; no pid before it
        started)."""
        worker = self._worker
        if worker is None:
            return {"pid": None, "cpu_seconds": 0.0, "max_rss_kb": 0}
        return process_usage(worker.pid)

    def _send(self, worker: "subprocess.Popen[bytes]", text: str) -> None:
        try:
            worker.stdin.write(text.encode("utf-8", "surrogateescape"))
            worker.stdin.flush()
        except (OSError, ValueError) as exc:  # the worker is gone: the walk builds its own listings
            self._stop("cannot reach the readahead worker: %s" % exc)

    def _receive(self, worker: "subprocess.Popen[bytes]") -> None:
        stream = worker.stdout
        while True:
            frame = read_frame(stream)
            if frame is None:
                self._stop("the readahead worker exited (code %s)" % worker.poll())
                return
            task_path, listings = marshal.loads(frame)
            if task_path is None:
                self._ready.set()
                continue
            built = {
                path: [Entry(name, join(path, name), kind, None if fields is None else Stat(*fields))
                       for name, kind, fields in entries]
                for path, entries in listings
            }
            with self._lock:
                self._listings.update(built)
                event = self._pending.pop(task_path, None)
            if event is not None:
                event.set()

    def _stop(self, reason: Optional[str]) -> None:
        with self._lock:
            if not self._alive:
                return
            self._alive = False
            pending, self._pending = self._pending, {}
        if reason is not None:
            log.warning("%s; walks list tasks themselves from now on", reason)
        for event in pending.values():
            event.set()


def worker_settings(tree: Tree) -> TreeSettings:
    """The settings of `tree` for the worker: the same tree, with the process's namespace and metadata provider
    named (the worker's client starts from its own defaults), no readahead of its own, and caches for a window of
    tasks."""
    return dataclasses.replace(
        tree.settings, namespace=tree.client.get_namespace(), metadata=tree.client.get_metadata(), readahead=0,
        readahead_worker=True,
    )


def _stat_fields(stat: Stat) -> tuple:
    """`Stat(*fields)` gives it back; `dataclasses.astuple` would deep-copy each field (its cost:
    docs/benchmarks.md)."""
    return (stat.kind, stat.size, stat.mtime, stat.stable, stat.direct_io)


def _task_listings(tree: Tree, task_path: str) -> List[_Listing]:
    """The listings of a task directory and of the directories in it, as sent to the daemon; only stable ones."""
    listings: List[_Listing] = []
    try:
        directories = [tree.lookup(task_path)]
        for directory in directories:
            if not directory.stable:
                continue
            entries = tree.list(directory.path)
            listings.append((directory.path, [
                (entry.name, entry.kind, None if entry.stat is None else _stat_fields(entry.stat))
                for entry in entries
            ]))
            if directory is directories[0]:
                directories.extend(
                    child for child in (tree.lookup(entry.path) for entry in entries if entry.kind == DIR)
                    if isinstance(child, Dir)
                )
    except Exception as exc:  # noqa: BLE001 - the walk meets and reports the same error
        log.debug("readahead of %s: %s", task_path, exc)
        return []
    return listings


def _blocked_count() -> int:
    """How many times the calling thread blocked so far (voluntary context switches)."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw


class _Lister:
    """Lists the requested tasks and writes their frames: on the calling thread while listings keep the CPU busy,
    on `LISTING_THREADS` threads while they wait for reads (a page cache that does not hold the datastore, a remote
    store), so that the reads of several tasks overlap. Listings made alone tell which: the times their thread
    blocked (not the times it was preempted, which a busy machine does to any listing). On threads, waiting for
    the GIL blocks too, so every `PROBE_EVERY` tasks some are listed alone again. (A `find` of 30,000 tasks with the
    datastore out of the page cache: docs/benchmarks.md.) Frames go out as listings finish, in any order: the
    daemon takes them by task path."""

    def __init__(self, list_task: Callable[[str], List[_Listing]], write: Callable[[tuple], None]):
        self._list_task, self._write = list_task, write
        self._write_lock = threading.Lock()
        self._pool: Optional["ThreadPoolExecutor"] = None  # started by the first listing that waits
        self._running: List["Future[None]"] = []
        self._on_threads = False
        self._since_probe = 0
        self._blocked: "collections.deque[int]" = collections.deque(maxlen=PROBE_LISTINGS)

    def serve(self, task_path: str) -> None:
        if self._on_threads:
            if self._since_probe < PROBE_EVERY:
                self._since_probe += 1
                if self._pool is None:
                    from concurrent.futures import ThreadPoolExecutor  # 13 ms of imports, for cold walks only

                    self._pool = ThreadPoolExecutor(LISTING_THREADS, "mffs-listing")
                self._running.append(self._pool.submit(self._serve, task_path))
                return
            self._on_threads = False  # the next listings alone
            self._blocked.clear()
            self.wait()
        blocked = _blocked_count()
        self._serve(task_path)
        self._blocked.append(_blocked_count() - blocked)
        if len(self._blocked) == PROBE_LISTINGS and sum(self._blocked) >= BLOCKING_READS * PROBE_LISTINGS:
            self._on_threads, self._since_probe = True, 0

    def wait(self) -> None:
        """Until every listing started is written."""
        for future in self._running:
            future.exception()  # waits; what failed (the daemon gone) ends the worker when it reads its requests
        self._running = []

    def _serve(self, task_path: str) -> None:
        listings = self._list_task(task_path)
        with self._write_lock:
            self._write((task_path, listings))


class _Requests:
    """Task paths, one per line, read from the worker's stdin without a buffer that an exec would lose: the lines
    read but not yet served are handed to the next process image (`left`)."""

    def __init__(self, pending: List[str]):
        self._lines = list(pending)
        self._partial = b""

    def __iter__(self) -> Iterator[str]:
        while True:
            while self._lines:
                yield self._lines.pop(0)
            data = os.read(0, 1 << 16)
            if not data:
                return
            *lines, self._partial = (self._partial + data).split(b"\n")
            self._lines.extend(line.decode("utf-8", "surrogateescape") for line in lines)

    def left(self) -> Optional[List[str]]:
        """The lines read and not served yet; None while a line is only partly read."""
        return None if self._partial else list(self._lines)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: List[str]) -> None:
    """The worker: `python -m mffs.readahead SETTINGS_JSON [TASK_PATH ...]` (TreeSettings as JSON, then requests
    read before the worker replaced its process image; started by Readahead).

    The client keeps per-task state that its own caches bound by entry counts (a task's attempt index, metadata
    listings), more than a window of tasks needs, so the worker's memory would grow with the walk: once its
    resident size passes `MemoryBudget.worker_rss`, it replaces its process image (exec, same pipes) between two
    requests and starts afresh, handing over the requests it has read."""
    logging.basicConfig(format="%(asctime)s %(name)s readahead %(levelname)s %(message)s")
    frames_fd = os.dup(1)
    out = os.fdopen(frames_fd, "wb")
    os.dup2(2, 1)  # stray prints go to the log, not into the frames
    settings = TreeSettings(**json.loads(argv[0]))
    # what it loads is as untrusted as what the sandbox renders: a value that would exhaust memory ends this
    # process (the daemon then lists tasks itself), never the machine
    limit_memory(settings.render_memory_mb)
    tree = Tree(client, settings)
    collect_garbage_for_caches()
    write_frame(out, (None, []))
    requests, worker_rss = _Requests(argv[1:]), settings.budget.worker_rss
    lister = _Lister(lambda task_path: _task_listings(tree, task_path), lambda value: write_frame(out, value))
    for served, task_path in enumerate(requests, 1):
        lister.serve(task_path)
        left = requests.left()
        # never for a budget below what a fresh image takes: an exec per request would only slow the walk down
        if left is not None and served >= MIN_TASKS_PER_IMAGE and _rss_bytes() > worker_rss:
            lister.wait()
            out.flush()
            os.dup2(frames_fd, 1)  # the frames pipe on stdout again, as the daemon started it
            os.execv(sys.executable, [sys.executable, "-m", "mffs.readahead", argv[0], *left])


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (BrokenPipeError, KeyboardInterrupt):  # the daemon is gone
        pass
