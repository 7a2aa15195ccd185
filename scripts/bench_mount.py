"""Benchmark the FUSE mount against Metaflow's client reading the same things in one process.

    .venv/bin/python scripts/bench_mount.py [--tasks 1000] [--big-mb 120] [--repeat 3]

Builds once (cached under /tmp/mffs-testdata/mount-bench-<hash>/) a datastore with one MountBenchFlow run made by
real Metaflow: a foreach of --tasks `body` tasks, each with an `accuracy` artifact, and an `end` task holding a
--big-mb MB float32 array `big`. Then, each time on a freshly started mount (cold: nothing cached by the daemon or
the kernel) and in a fresh Python process for the client (cold client cache):

  find            `find RUN` over the mount  vs  the client listing every step, task and artifact and checking
                  each task's exception (what the mount needs to list a task directory); then `find RUN` once more
                  on the same mount, where the daemon has every listing cached: the cost of the FUSE round trips
  cat accuracy    `cat RUN/body/*/accuracy/repr.txt`  vs  repr(task["accuracy"].data) for every body task
  data.pickle     `cat RUN/end/<task>/big/data.pickle`  vs  `zcat` of the blob it is stored in (throughput)

and prints the median of --repeat runs, the ratios (mount / client time; mount / zcat throughput) and the
mount's peak RSS (daemon and readahead worker). Goals: the mount is no slower than the client in-process,
data.pickle reads at >= 50% of zcat's throughput.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import datastores  # noqa: E402
from tests.support.datastores import TESTDATA_DIR, run_flow  # noqa: E402
from tests.support.mount import mounted  # noqa: E402

FLOW_SOURCE = textwrap.dedent(
    '''
    from metaflow import FlowSpec, Parameter, step


    class MountBenchFlow(FlowSpec):
        width = Parameter("width", default=10, type=int)
        big_mb = Parameter("big_mb", default=1, type=int)

        @step
        def start(self):
            self.items = list(range(self.width))
            self.next(self.body, foreach="items")

        @step
        def body(self):
            self.accuracy = 0.5 + (self.input % 97) / 200.0
            self.next(self.join)

        @step
        def join(self, inputs):
            accuracies = [inp.accuracy for inp in inputs]
            self.mean_accuracy = sum(accuracies) / len(accuracies)
            self.next(self.end)

        @step
        def end(self):
            import numpy

            # float32 noise compresses about as badly as real model weights do
            count = self.big_mb * (1 << 20) // 4
            self.big = numpy.random.default_rng(0).standard_normal(count).astype(numpy.float32)


    if __name__ == "__main__":
        MountBenchFlow()
    '''
)

# Runs in a fresh interpreter so the client starts cold; prints the seconds its reads took.
CLIENT_FIND = """
import sys, time
from metaflow import Run, namespace
namespace(None)
started, cpu = time.perf_counter(), time.process_time()
run = Run(sys.argv[1])
names = [run.pathspec]
for step in run:
    for task in step:
        names.append(task.pathspec)
        task.exception
        names.extend(artifact.pathspec for artifact in task)
print(time.perf_counter() - started, time.process_time() - cpu)
"""
CLIENT_CAT = """
import sys, time
from metaflow import Run, namespace
namespace(None)
started, cpu = time.perf_counter(), time.process_time()
text = "".join(repr(task["accuracy"].data) + "\\n" for task in Run(sys.argv[1])["body"])
print(time.perf_counter() - started, time.process_time() - cpu)
"""


def build(tasks: int, big_mb: int) -> tuple:
    key = hashlib.sha256(repr((FLOW_SOURCE, tasks, big_mb)).encode()).hexdigest()[:12]
    parent = TESTDATA_DIR / ("mount-bench-" + key)
    manifest = parent / "manifest.json"
    if not manifest.is_file():
        parent.mkdir(parents=True, exist_ok=True)
        flow_file = parent / "mountbenchflow.py"
        flow_file.write_text(FLOW_SOURCE)
        print("building %d-task MountBenchFlow run in %s (once) ..." % (tasks, parent), flush=True)
        datastores.RUN_TIMEOUT_S = 4 * 3600  # a 1000-task foreach takes longer than a test flow may
        started = time.monotonic()
        run_id = run_flow(
            str(flow_file),
            ["run", "--width", str(tasks), "--big_mb", str(big_mb), "--max-num-splits", str(tasks + 1)],
            parent,
        )
        manifest.write_text(json.dumps({"run_id": run_id, "build_seconds": round(time.monotonic() - started)}))
    return parent, "MountBenchFlow/" + json.loads(manifest.read_text())["run_id"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_shell(command: str, cwd: Path, timeout: Optional[float] = None) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of the command's processes); TimeoutExpired after `timeout` seconds."""
    started, cpu = time.perf_counter(), children_cpu()
    subprocess.run(command, shell=True, cwd=cwd, check=True, stdout=subprocess.DEVNULL, timeout=timeout)
    return time.perf_counter() - started, children_cpu() - cpu


def timed_mount(command: str, mount, timeout: Optional[float] = None) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of the command plus the mount's processes: daemon and readahead worker)"""
    daemon_cpu = mount.stats()["cpu_seconds"]
    wall, cpu = timed_shell(command, mount.path, timeout)
    return wall, cpu + mount.stats()["cpu_seconds"] - daemon_cpu


def client_seconds(script: str, pathspec: str, root: Path, timeout: Optional[float] = None) -> Tuple[float, float]:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root), METAFLOW_CLIENT_CACHE_PATH=cache)
        out = subprocess.run([sys.executable, "-c", script, pathspec], env=env, check=True, capture_output=True,
                             text=True, timeout=timeout)
    wall, cpu = out.stdout.split()
    return float(wall), float(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--big-mb", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args()
    root, pathspec = build(args.tasks, args.big_mb)
    if args.build_only:
        return
    env = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root))
    end_dir = root / ".metaflow" / pathspec / "end"
    end_task = next(path.name for path in end_dir.iterdir() if path.name.isdigit())
    index = json.loads((end_dir / end_task / "0.data.json").read_text())
    blob = root / ".metaflow" / "MountBenchFlow" / "data" / index["objects"]["big"][:2] / index["objects"]["big"]
    big_size = index["info"]["big"]["size"]

    results: Dict[str, List[Tuple[float, float]]] = {
        "find": [], "find_warm": [], "cat": [], "pickle": [], "zcat": [], "client_find": [], "client_cat": []}
    peak_rss_kb = 0
    with tempfile.TemporaryDirectory() as scratch:
        for attempt in range(args.repeat):
            for kind, command in (
                ("find", "find %s" % pathspec),
                ("cat", "cat %s/body/*/accuracy/repr.txt" % pathspec),
                ("pickle", "cat %s/end/%s/big/data.pickle" % (pathspec, end_task)),
            ):
                mountpoint = Path(scratch) / ("%s-%d" % (kind, attempt))
                with mounted(mountpoint, "--datastore-root", str(root), "--all-namespaces", env=env) as mount:
                    results[kind].append(timed_mount(command, mount))
                    if kind == "find":  # again: every listing is cached in the daemon, only round trips remain
                        results["find_warm"].append(timed_mount(command, mount))
                    peak_rss_kb = max(peak_rss_kb, mount.stats()["max_rss_kb"])
            results["zcat"].append(timed_shell("zcat %s" % blob, REPO))
            results["client_find"].append(client_seconds(CLIENT_FIND, pathspec, root))
            results["client_cat"].append(client_seconds(CLIENT_CAT, pathspec, root))
        # One mount walking every task (memory stays bounded by the caches), then rendering big's repr.txt
        # (which unpickles the whole value: the client holds its serialized bytes and the array).
        with mounted(Path(scratch) / "walk", "--datastore-root", str(root), "--all-namespaces", env=env) as mount:
            timed_shell("ls -lR %s > /dev/null && cat %s/body/*/*/repr.txt > /dev/null" % (pathspec, pathspec),
                        mount.path)
            walk_rss_kb = mount.stats()["max_rss_kb"]
            timed_shell("cat %s/end/%s/big/repr.txt" % (pathspec, end_task), mount.path)
            big_repr_rss_kb = mount.stats()["max_rss_kb"]
    wall = {kind: statistics.median(w for w, _ in values) for kind, values in results.items()}
    cpu = {kind: statistics.median(c for _, c in values) for kind, values in results.items()}
    mb = big_size / 1e6
    print("MountBenchFlow run %s: %d body tasks, big = %.0f MB pickle; median of %d cold runs"
          % (pathspec, args.tasks, mb, args.repeat))
    print("%-26s %8s %8s %6s   %8s %8s %6s" % ("", "mount s", "client s", "ratio", "mount", "client", "ratio"))
    print("%-26s %8s %8s %6s   %8s %8s %6s" % ("", "(wall)", "(wall)", "", "CPU s", "CPU s", ""))
    rows = (("find RUN", "find", "client_find"), ("find RUN again (warm)", "find_warm", "client_find"),
            ("cat */accuracy/repr.txt", "cat", "client_cat"))
    for label, kind, other in rows:
        print("%-26s %8.2f %8.2f %6.2f   %8.2f %8.2f %6.2f" % (
            label, wall[kind], wall[other], wall[kind] / wall[other], cpu[kind], cpu[other], cpu[kind] / cpu[other]))
    print("%-26s %8s %8s %6s   %8s %8s %6s" % ("", "mount", "zcat", "ratio", "mount", "zcat", "ratio"))
    print("%-26s %8s %8s %6s   %8s %8s %6s" % ("", "MB/s", "MB/s", "", "MB/CPU s", "MB/CPU s", ""))
    print("%-26s %8.0f %8.0f %6.2f   %8.0f %8.0f %6.2f" % (
        "big/data.pickle vs zcat", mb / wall["pickle"], mb / wall["zcat"], wall["zcat"] / wall["pickle"],
        mb / cpu["pickle"], mb / cpu["zcat"], cpu["zcat"] / cpu["pickle"]))
    print("mount peak RSS (daemon + readahead worker): %.0f MB during the timed runs; %.0f MB after ls -lR of the "
          "run and cat of every body task's repr.txt files; %.0f MB after also rendering big/repr.txt"
          % (peak_rss_kb / 1024, walk_rss_kb / 1024, big_repr_rss_kb / 1024))


if __name__ == "__main__":
    main()
