"""What one task of a `find` costs each process of the mount, in-process and repeatable (issue #15).

    .venv/bin/python scripts/bench_task_listing.py --root /tmp/mffs-testdata/scale-tasks-<hash> --tasks 2000
    valgrind --tool=callgrind --collect-atstart=yes .venv/bin/python scripts/bench_task_listing.py ... --tasks 100
    (twice, with two task counts: the difference of the two totals over the difference of the counts is the
    instructions a task costs, start-up left out)

`--side worker`: the readahead worker's job (mffs/readahead.py): a Tree of the worker's settings lists each task
directory and its subdirectories and marshals them as it sends them. `--side daemon`: the daemon's job for those
listings: the worker's frames (built beforehand, not counted) are received as the daemon receives them, then each
task directory and its subdirectories are read through the FUSE adapter's readdir (mffs/fuse_ops.py, without a
mount: libfuse's filler is a C function that keeps nothing) as `find` reads them. Prints CPU seconds per task.
"""
from __future__ import annotations

import argparse
import ctypes
import io
import json
import logging
import marshal
import sys
import time
from pathlib import Path

#: tasks whose frames are received before the walk lists them (the readahead's window)
BATCH = 32
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def worker_frames(tree, paths):
    from mffs.readahead import _task_listings
    from mffs.sandbox import frame

    return [frame((path, _task_listings(tree, path))) for path in paths]


def daemon_walk(tree, frames, paths) -> None:
    """Receive `frames` as the daemon's Readahead does, then readdir each task directory (twice, as the kernel
    asks: its entries, then the end) and each directory in it, through the FUSE adapter."""
    import mfusepy

    from mffs import fuse_ops
    from mffs.readahead import Readahead
    from mffs.sandbox import frame

    class Worker:  # the worker's pipes: frames to read, requests written nowhere
        stdout = io.BytesIO()
        stdin = io.BytesIO()

        @staticmethod
        def poll() -> int:
            return 0

    readahead = Readahead(tree, BATCH)
    readahead._worker = Worker  # started: what `_start` returns from now on
    tree.attach(readahead)
    operations = fuse_ops.MffsOperations(tree)
    fuse = fuse_ops._Fuse.__new__(fuse_ops._Fuse)  # not mounted: what `_Fuse.__init__` sets before mounting
    fuse.operations, fuse.encoding, fuse.errors = operations, "utf-8", "surrogateescape"
    fuse.keep_state(operations)
    libc = ctypes.CDLL(None)
    filler = mfusepy.fuse_fill_dir_t(ctypes.cast(libc.geteuid, ctypes.c_void_p).value)  # returns 0: "go on"
    fip = ctypes.pointer(mfusepy.fuse_file_info())
    # what `find` lists of each task: the directories whose listings the frame holds, the task's first
    directories = {path: [directory for directory, _ in marshal.loads(data[4:])[1]]
                   for path, data in zip(paths, frames)}
    logging.getLogger("mffs").setLevel(logging.ERROR)  # each batch's end of stream ends the readahead
    for start in range(0, len(paths), BATCH):
        # the frames of a window of tasks, as they arrive while the walk goes on; then their end, which ends the
        # readahead (logged), and so the Readahead is alive again for the walk
        Worker.stdout = io.BytesIO(frame((None, [])) + b"".join(frames[start:start + BATCH]))
        readahead._receive(Worker)
        readahead._alive = True
        for path in paths[start:start + BATCH]:
            for number, directory in enumerate(directories[path]):
                for offset in (0, 10) if number == 0 else (0,):
                    fuse._wrapper(fuse.readdir_fuse_3, directory.encode(), None, filler, offset, fip, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a scale datastore (scripts/make_scale_datastore.py)")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--skip", type=int, default=0, help="start after this many tasks of the step")
    parser.add_argument("--side", choices=("worker", "daemon"), default="worker")
    args = parser.parse_args()
    import client
    from mffs import source
    from mffs.tree import Tree, TreeSettings, collect_garbage_for_caches

    namespace = source.select(args.root, all_namespaces=True)
    run = json.loads((Path(args.root) / "manifest.json").read_text())["runs"]["wide"]
    step = "/%s/%s/body" % (run["flow"], run["run_id"])
    paths = ["%s/%d" % (step, run["first_task_id"] + i) for i in range(args.skip, args.skip + args.tasks)]
    worker_tree = Tree(client, TreeSettings(readahead_worker=True, **namespace))
    collect_garbage_for_caches()
    if args.side == "worker":
        started = time.process_time()
        frames = worker_frames(worker_tree, paths)
    else:
        frames = worker_frames(worker_tree, paths)
        tree = Tree(client, TreeSettings(**namespace))
        tree.list(step)
        started = time.process_time()
        daemon_walk(tree, frames, paths)
    cpu = time.process_time() - started
    print("%s: %d tasks, %.3f ms of CPU a task, %.0f bytes a frame" % (
        args.side, args.tasks, cpu / max(args.tasks, 1) * 1e3, sum(map(len, frames)) / max(len(frames), 1)))


if __name__ == "__main__":
    main()
