"""Which tasks a loop reads next, so that reading artifact X of one task fetches X of those tasks too, in parallel
(remote storage only: client/artifact.py). The guess follows what the code iterates, whatever the access path:

* the reads themselves: X of step S read in another task of the same run just before (a loop over a step's tasks),
  or in the newest task of S of another run (a loop over runs: `run.data.x`, `run["end"].task["x"].data`,
  `Task(pathspec)` built from a listing, the mount's `cat */end/*/x/repr.txt`). The next tasks or runs follow in
  the direction of travel, through the step's tasks or the flow's runs listed newest first as iteration lists
  them; nothing is kept about objects, so whatever builds them (the mount's tree, a user's loop) gets this;
* before there is a previous read, the objects: a task reached by iterating its step's tasks (the next ones), or
  the newest task of a step of a run reached by iterating a flow's runs (that step's newest task in the next runs).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Hashable, List, Optional, Sequence, Tuple

from cachetools import LRUCache

if TYPE_CHECKING:
    from .task import Task

#: how many tasks' copies of an artifact one read fetches, its own included
PREFETCH_WINDOW = 64
#: (flow, run, step, task) of a task
Components = Tuple[str, str, str, str]


class ReadHistory:
    """For each key (an artifact of a step, within a run or across runs), the last two distinct ids (tasks or runs)
    at which it was read. A read older than `horizon` seconds is forgotten: two reads far apart are no loop (a
    notebook reading one run now and another later), and a wrong guess may fetch 63 large blobs."""

    def __init__(self, max_keys: int = 4096, horizon: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self._last: LRUCache = LRUCache(maxsize=max_keys)
        self._lock = threading.Lock()
        self.horizon, self._clock = horizon, clock

    def record(self, key: Hashable, id: str) -> Optional[str]:
        """Note a read of `key` at `id`; the id at which it was read before, if another one, within the horizon."""
        now = self._clock()
        with self._lock:
            previous, last, at = self._last.get(key, (None, None, now))
            if now - at > self.horizon:
                previous = last = None
            if last != id:
                previous, last = last, id
            self._last[key] = (previous, last, now)
            return previous


_history = ReadHistory()


def newest(records: Sequence[dict]) -> Optional[dict]:
    """The newest record (the first of equally new ones, as a stable newest-first sort lists them)."""
    return max(records, key=lambda r: r["ts_epoch"]) if records else None


def _newest_first(records: Sequence[dict], id_field: str) -> List[str]:
    return [str(r[id_field]) for r in sorted(records, key=lambda r: r["ts_epoch"], reverse=True)]


def window(ids: Sequence[str], current: str, previous: Optional[str]) -> List[str]:
    """`current` and the ids after it, at most PREFETCH_WINDOW, in the direction the reads went from `previous`:
    forward, unless `previous` is listed after `current`, or, before a previous read, `current` is the last id (a
    loop from the other end: the oldest run first, as a glob sorts run ids)."""
    if current not in ids:
        return []
    at = ids.index(current)
    if previous is None:
        backward = at == len(ids) - 1
    else:
        backward = previous in ids and ids.index(previous) > at
    if backward:
        return list(ids[max(0, at - PREFETCH_WINDOW + 1) : at + 1])[::-1]
    return list(ids[at : at + PREFETCH_WINDOW])


def _iterated_run(task: "Task") -> Optional[Any]:
    """The run the task was reached from, when that run came from iterating a flow's runs: `run.end_task`
    (`run.data`), `run[step].task`, a task of an iterated step of such a run."""
    run = task.__dict__.get("_end_of")
    if run is None:
        step = task._parent
        run = step._parent if step is not None else None
    return run if run is not None and run.__dict__.get("_siblings") else None


def peer_tasks(task: "Task", artifact: str) -> List[Components]:
    """The task reading `artifact` and those a loop reading it is likely to read next; empty: no guess."""
    provider = task._provider
    flow, run, step, task_id = map(str, task._components)
    before_in_run = _history.record((flow, run, step, artifact), task_id)
    before_run = _history.record((flow, step, artifact), run)
    if before_in_run is not None:
        tasks = _newest_first(provider.tasks(flow, run, step), "task_id")
        return [(flow, run, step, t) for t in window(tasks, task_id, before_in_run)]
    siblings = task.__dict__.get("_siblings")
    if siblings and len(siblings) - task._position > 1:
        return [tuple(map(str, t._components)) for t in siblings[task._position : task._position + PREFETCH_WINDOW]]
    iterated = _iterated_run(task)
    if iterated is None and before_run is None:
        return []
    own = newest(provider.tasks(flow, run, step))
    if own is None or str(own["task_id"]) != task_id:
        return []  # the runs' loop reads another task of the step than `Step.task`: which one is not known
    if iterated is not None:
        runs = [str(r.id) for r in iterated._siblings]
    else:
        runs = _newest_first(provider.runs(flow), "run_number")
    peers = []
    for other in window(runs, run, before_run):
        found = newest(provider.tasks(flow, other, step)) if other != run else own
        if found is not None:
            peers.append((flow, other, step, str(found["task_id"])))
    return peers
