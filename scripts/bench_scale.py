"""The mount at scale (issue #15), side by side with Metaflow's client in the same run.

    .venv/bin/python scripts/bench_scale.py                                   # quick: 1000 tasks, 500 runs
    .venv/bin/python scripts/bench_scale.py --tasks 1000,10000,30000 --runs 2000 --json out.json
    .venv/bin/python scripts/bench_scale.py --tasks 1000,10000,30000,100000 --runs 0 --measure find --repeat 3

Datastores: scripts/make_scale_datastore.py (built once and cached: a real WideFlow run's foreach cloned to N
tasks, a real HelloFlow run cloned to R runs). At each size, every mount measurement on a freshly started mount
(`mffs mount MNT --datastore-root DS --all-namespaces`, as a user mounts) and every Metaflow measurement in a
fresh process with an empty client cache:

  find            `find RUN`  vs  Metaflow walking the run: every task's metadata, `finished` and artifact names
  find again      `find RUN` once more on the same mount (goal: at most 1.2x the first)
  cat repr.txt    `cat` of every body task's `square/repr.txt`  vs  repr(task["square"].data) for every body task
  ls -l step      `ls -l RUN/body`  vs  Metaflow listing the step's tasks with their `created_at`
  flow            `ls -l FLOW` + `readlink FLOW/latest_successful` over R runs  vs  `list(Flow(FLOW))` +
                  `Flow(FLOW).latest_successful_run`

Peak RSS of the mount = the sum of VmHWM of the daemon and every process it started (readahead worker, render
workers), sampled from /proc during each measurement. Mount CPU = the command's CPU plus the CPU the daemon and its
processes spent meanwhile (also from /proc). Each measurement has a time budget (--budget): past it, it is
stopped and shown as "timeout". `--memory-mb` is passed to the mount only if `mffs mount --help` offers it.

The page cache: before every timed measurement, of either side, the datastore's files are dropped from the page
cache (`posix_fadvise(DONTNEED)` on each), so both sides start cold and read what they need from the disk. Left to
itself, the comparison depends on the order of the measurements: this machine keeps about 1.9 GB of file pages,
each small file of a datastore takes a page, a 30,000-task run's files take 5.4 GB, and Metaflow's walk reads four
times as many of them as the mount does, so whichever side ran right after the other found part of its files
cached (docs/benchmarks.md). Before each size, as root, the kernel's cached inodes and directory entries are
dropped as well, so that a size's figures do not depend on the datastores opened before it. `--keep-page-cache`
measures without dropping anything.

The machine: its speed drifts over minutes (a shared host), more than the differences between sizes. With
`--repeat N`, the task sizes are measured in N rounds (each size once a round), so that the drift reaches every
size alike, and the medians are shown.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.bench_mount import client_seconds, timed_shell  # noqa: E402
from scripts.make_scale_datastore import (  # noqa: E402
    FOREACH_STEP,
    SOURCE_RUNS,
    SOURCE_TASKS,
    build_foreach_clone,
    build_runs_clone,
    sizes,
)
from tests.support.datastores import load_manifest  # noqa: E402
from tests.support.mount import mffs_command, mounted  # noqa: E402


def client_script(reads: str) -> str:
    """A script timing `reads` (Metaflow client code using `argument`, in all namespaces) in a fresh process."""
    return "\n".join([
        "import sys, time",
        "from metaflow import Flow, Run, namespace",
        "namespace(None)",
        "argument = sys.argv[1]",
        "started, cpu = time.perf_counter(), time.process_time()",
        reads,
        "print(time.perf_counter() - started, time.process_time() - cpu)",
    ])


CLIENT_WALK = client_script(
    "for step in Run(argument):\n"
    "    for task in step:\n"
    "        task.metadata, task.finished, [artifact.id for artifact in task]"
)
CLIENT_CAT = client_script('text = "".join(repr(task["square"].data) for task in Run(argument)["%s"])' % FOREACH_STEP)
CLIENT_LS_STEP = client_script("listing = [(task.id, task.created_at) for task in Run(argument)[%r]]" % FOREACH_STEP)
CLIENT_FLOW = client_script("flow = Flow(argument)\nruns = list(flow)\nlatest = flow.latest_successful_run.id")
#: the timings of a `TaskSize` (those not measured are NOT_MEASURED)
TASK_MEASUREMENTS = ("find", "find_again", "cat", "ls_step", "mf_find", "mf_cat", "mf_ls_step")
NOT_MEASURED: Dict[str, float] = {}
SAMPLE_INTERVAL_S = 0.25
DROP_CACHES = "/proc/sys/vm/drop_caches"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Timing = Optional[Dict[str, float]]  # {"wall", "cpu"} or None after a timeout


class ProcessTree:
    """The daemon and its descendants, sampled from /proc: peak RSS (VmHWM of each process, added up) and CPU."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak_kb: Dict[int, int] = {}
        self.cpu: Dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProcessTree":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def _descendants(self) -> List[int]:
        parents: Dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open("/proc/%s/stat" % name) as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(name)] = int(fields[1])
        tree, frontier = [self.pid], [self.pid]
        while frontier:
            frontier = [pid for pid, parent in parents.items() if parent in frontier]
            tree.extend(frontier)
        return tree

    def sample(self) -> None:
        for pid in self._descendants():
            try:
                with open("/proc/%d/status" % pid) as handle:
                    status = handle.read()
                with open("/proc/%d/stat" % pid) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), hwm)
            self.cpu[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime

    def peak_mb(self) -> float:
        self.sample()
        return sum(self.peak_kb.values()) / 1024

    def peaks_mb(self) -> Dict[str, float]:
        """The peak RSS of each process: the daemon's, and the others' by pid (a readahead worker that replaced its
        process image keeps its pid, and its VmHWM starts again: its peak is that of its largest image)."""
        self.sample()
        return {("daemon" if pid == self.pid else str(pid)): kb / 1024 for pid, kb in self.peak_kb.items()}

    def cpu_seconds(self) -> float:
        self.sample()
        return sum(self.cpu.values())


def drop_page_cache(root: Optional[Path]) -> None:
    """Drop the file pages of every file below `root` from the page cache (None: keep them)."""
    if root is None:
        return
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                descriptor = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def drop_inode_cache() -> None:
    """Have the kernel drop every directory entry and inode it caches (root only: nothing otherwise), so that each
    size starts from the same kernel state: the inodes of the datastores measured before it slow its walks
    otherwise (docs/benchmarks.md). Dropping each file's pages (`drop_page_cache`) loads that datastore's own."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as handle:
            handle.write("2\n")
    except OSError:
        pass


def timed_on_mount(command: str, mount, tree: ProcessTree, budget: float, cold: Optional[Path]) -> Timing:
    """The command in the mount's directory, after dropping `cold` from the page cache: wall seconds, and CPU of
    the command plus the mount's processes."""
    drop_page_cache(cold)
    cpu_before = tree.cpu_seconds()
    try:
        wall, cpu = timed_shell(command, mount.path, timeout=budget)
    except subprocess.TimeoutExpired:
        return None
    return {"wall": wall, "cpu": cpu + tree.cpu_seconds() - cpu_before}


def timed_client(script: str, argument: str, root: Path, budget: float, cold: Optional[Path]) -> Timing:
    drop_page_cache(cold)
    try:
        wall, cpu = client_seconds(script, argument, root, timeout=budget)
    except subprocess.TimeoutExpired:
        return None
    return {"wall": wall, "cpu": cpu}


def mount_options(memory_mb: Optional[int]) -> List[str]:
    options = ["--all-namespaces"]
    if memory_mb is not None:
        help_text = subprocess.run(mffs_command("mount", "--help"), cwd=REPO, capture_output=True, text=True).stdout
        if "--memory-mb" in help_text:
            options += ["--memory-mb", str(memory_mb)]
    return options


def on_fresh_mount(root: Path, scratch: Path, options: List[str], work: Callable[[object, ProcessTree], dict]) -> dict:
    """`work(mount, tree)` on a freshly started mount of `root`; adds the peak RSS of the mount's processes."""
    env = dict(os.environ, METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root))
    mountpoint = Path(tempfile.mkdtemp(dir=scratch))
    with mounted(mountpoint, "--datastore-root", str(root), *options, env=env) as mount:
        with ProcessTree(mount.process.pid) as tree:
            result = work(mount, tree)
            result["peak_rss_mb"] = tree.peak_mb()
            result["peak_rss_mb_by_process"] = tree.peaks_mb()
    return result


class TaskSize:
    """The measurements of one foreach size, one round at a time (`measure_round`), then their medians (`result`)."""

    def __init__(self, n_tasks: int, args: argparse.Namespace, options: List[str], scratch: Path):
        self.n_tasks, self.args, self.options, self.scratch = n_tasks, args, options, scratch
        self.parent = build_foreach_clone(n_tasks, args.source_tasks, args.source_runs)
        self.run = load_manifest(self.parent)["runs"]["wide"]["pathspec"]
        self.samples: Dict[str, List[Timing]] = {}
        self.rss: Dict[str, List[float]] = {}

    def keep(self, name: str, timing: Timing) -> None:
        self.samples.setdefault(name, []).append(timing)
        print("  %d tasks, %s: %s" % (self.n_tasks, name, timing or "timeout"), file=sys.stderr, flush=True)

    def measure_round(self) -> None:
        args, run, n_tasks = self.args, self.run, self.n_tasks
        step = "%s/%s" % (run, FOREACH_STEP)
        budget, cold = args.budget, None if args.keep_page_cache else self.parent
        if not args.keep_page_cache:
            drop_inode_cache()

        def finds(mount, tree: ProcessTree) -> dict:
            return {"find": timed_on_mount("find %s" % run, mount, tree, budget, cold),
                    "find_again": timed_on_mount("find %s" % run, mount, tree, budget, cold)}

        def cat(mount, tree: ProcessTree) -> dict:
            command = "cd %s && printf '%%s/square/repr.txt\\n' [0-9]* | xargs -d '\\n' cat" % step
            return {"cat": timed_on_mount(command, mount, tree, budget, cold)}

        def ls_step(mount, tree: ProcessTree) -> dict:
            return {"ls_step": timed_on_mount("ls -l %s" % step, mount, tree, budget, cold)}

        for label, work in (("find", finds), ("cat", cat), ("ls_step", ls_step)):
            if label not in args.measure:
                continue
            result = on_fresh_mount(self.parent, self.scratch, self.options, work)
            self.rss.setdefault(label, []).append(result.pop("peak_rss_mb"))
            by_process = ", ".join("%s %.0f" % item for item in result.pop("peak_rss_mb_by_process").items())
            print("  %d tasks, %s mount: peak RSS %.0f MB (%s)" % (n_tasks, label, self.rss[label][-1], by_process),
                  file=sys.stderr, flush=True)
            for name, timing in result.items():
                self.keep(name, timing)
        if args.metaflow and n_tasks <= args.metaflow_max_tasks:
            for name, script in (("mf_find", CLIENT_WALK), ("mf_cat", CLIENT_CAT), ("mf_ls_step", CLIENT_LS_STEP)):
                if name[3:] in args.measure:
                    self.keep(name, timed_client(script, run, self.parent, budget, cold))

    def result(self) -> dict:
        samples = self.samples
        return {"tasks": self.n_tasks, "datastore": str(self.parent), "pathspec": self.run,
                "timings": {name: median(samples[name]) if name in samples else NOT_MEASURED
                            for name in TASK_MEASUREMENTS},
                "peak_rss_mb": {label: max(values) for label, values in self.rss.items()}}


def bench_runs(n_runs: int, args: argparse.Namespace, options: List[str], scratch: Path) -> dict:
    parent = build_runs_clone(n_runs, args.source_tasks, args.source_runs)
    if not args.keep_page_cache:
        drop_inode_cache()
    runs = load_manifest(parent)["runs"]["runs"]
    flow, cold = runs["flow"], None if args.keep_page_cache else parent
    samples: Dict[str, List[Timing]] = {"flow": [], "mf_flow": []}
    rss = []
    latest = []

    def listing(mount, tree: ProcessTree) -> dict:
        timing = timed_on_mount("ls -l %s > /dev/null && readlink %s/latest_successful" % (flow, flow), mount,
                                tree, args.budget, cold)
        latest.append(os.readlink(mount.path / flow / "latest_successful") if timing else None)
        return {"flow": timing}

    for _ in range(args.repeat):
        result = on_fresh_mount(parent, scratch, options, listing)
        rss.append(result["peak_rss_mb"])
        samples["flow"].append(result["flow"])
        samples["mf_flow"].append(timed_client(CLIENT_FLOW, flow, parent, args.budget, cold))
    expected = runs["latest_successful_run_id"]
    if any(link is not None and Path(link).name != expected for link in latest):
        print("WARNING: %s/latest_successful -> %s, expected %s" % (flow, latest, expected), file=sys.stderr)
    return {"runs": n_runs, "datastore": str(parent), "flow": flow, "latest_successful": latest,
            "timings": {name: median(values) for name, values in samples.items()}, "peak_rss_mb": max(rss)}


def median(values: List[Timing]) -> Timing:
    """Median wall and CPU of the runs that finished (None if any timed out: the budget was not enough)."""
    if any(value is None for value in values):
        return None
    return {key: statistics.median(value[key] for value in values) for key in ("wall", "cpu")}


def _seconds(timing: Timing, key: str = "wall") -> str:
    if timing is NOT_MEASURED:
        return "-"
    return "timeout" if timing is None else "%.2f" % timing[key]


def _ratio(numerator: Timing, denominator: Timing, key: str = "wall") -> str:
    if not numerator or not denominator:  # past the budget or not measured
        return "-"
    return "%.2f" % (numerator[key] / denominator[key])


def print_tables(task_results: List[dict], run_results: List[dict]) -> None:
    rows = (("find RUN", "find", "mf_find"), ("find RUN again", "find_again", "mf_find"),
            ("cat */square/repr.txt", "cat", "mf_cat"), ("ls -l STEP", "ls_step", "mf_ls_step"))
    header = "%-8s %-22s %9s %9s %7s %9s %9s %7s" % (
        "tasks", "measurement", "mount s", "mf s", "mf/mnt", "mount CPU", "mf CPU", "mf/mnt")
    if task_results:
        print(header)
        for result in task_results:
            timings = result["timings"]
            for label, ours, theirs in rows:
                print("%-8d %-22s %9s %9s %7s %9s %9s %7s" % (
                    result["tasks"], label, _seconds(timings[ours]), _seconds(timings[theirs]),
                    _ratio(timings[theirs], timings[ours]), _seconds(timings[ours], "cpu"),
                    _seconds(timings[theirs], "cpu"), _ratio(timings[theirs], timings[ours], "cpu")))
        print()
        print("%-8s %14s %14s %14s %12s %12s %12s" % (
            "tasks", "find again/1st", "find s/task", "mf s/task", "RSS find MB", "RSS cat MB", "RSS ls MB"))
        for result in task_results:
            timings, rss, n = result["timings"], result["peak_rss_mb"], result["tasks"]
            per_task = "-" if not timings["find"] else "%.6f" % (timings["find"]["wall"] / n)
            mf_per_task = "-" if not timings["mf_find"] else "%.6f" % (timings["mf_find"]["wall"] / n)
            print("%-8d %14s %14s %14s %12s %12s %12s" % (
                n, _ratio(timings["find_again"], timings["find"]), per_task, mf_per_task,
                *("%.0f" % rss[label] if label in rss else "-" for label in ("find", "cat", "ls_step"))))
    if run_results:
        print()
        print("%-8s %-38s %9s %9s %7s %9s %9s %7s %8s" % (
            "runs", "measurement", "mount s", "mf s", "mf/mnt", "mount CPU", "mf CPU", "mf/mnt", "RSS MB"))
        for result in run_results:
            ours, theirs = result["timings"]["flow"], result["timings"]["mf_flow"]
            print("%-8d %-38s %9s %9s %7s %9s %9s %7s %8.0f" % (
                result["runs"], "ls -l FLOW + readlink latest_successful", _seconds(ours), _seconds(theirs),
                _ratio(theirs, ours), _seconds(ours, "cpu"), _seconds(theirs, "cpu"), _ratio(theirs, ours, "cpu"),
                result["peak_rss_mb"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=sizes, default=[1000], help="foreach sizes, e.g. 1000,10000,30000 (0: none)")
    parser.add_argument("--runs", type=sizes, default=[500], help="run counts, e.g. 2000,10000 (0: none)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each measurement (medians are shown); the task sizes are measured in rounds")
    parser.add_argument("--budget", type=float, default=1200, help="seconds one measurement may take")
    parser.add_argument("--memory-mb", type=int, default=256, help="the mount's memory budget, if it has one")
    parser.add_argument("--source-tasks", type=int, default=SOURCE_TASKS)
    parser.add_argument("--source-runs", type=int, default=SOURCE_RUNS)
    parser.add_argument("--measure", type=lambda text: set(text.split(",")), default={"find", "cat", "ls_step"},
                        help="which task measurements: find (both finds), cat, ls_step (default: all)")
    parser.add_argument("--no-metaflow", dest="metaflow", action="store_false", help="measure the mount alone")
    parser.add_argument("--metaflow-max-tasks", type=int, default=30000,
                        help="the largest foreach size Metaflow's client is measured at (its walk of 100,000 tasks "
                             "takes minutes)")
    parser.add_argument("--keep-page-cache", action="store_true",
                        help="do not drop the datastore's files from the page cache before each measurement")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # unmount on the way out
    options = mount_options(args.memory_mb)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.keep_page_cache:
        caches = "page cache kept"
    elif os.access(DROP_CACHES, os.W_OK):
        caches = "page cache dropped before each measurement, inodes and directory entries before each size"
    else:
        caches = "page cache dropped before each measurement (inodes kept: dropping them takes root)"
    print("commit %s, mount options %s, %s, %s" % (commit, " ".join(options), started, caches), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        run_results = []
        task_sizes = [TaskSize(n_tasks, args, options, Path(scratch)) for n_tasks in args.tasks]
        for round_number in range(1, args.repeat + 1):  # rounds over every size: the machine's drift hits all
            for size in task_sizes:
                size.measure_round()
            print("round %d of the task sizes done" % round_number, file=sys.stderr, flush=True)
        task_results = [size.result() for size in task_sizes]
        for n_runs in args.runs:
            run_results.append(bench_runs(n_runs, args, options, Path(scratch)))
            print("%d runs done" % n_runs, file=sys.stderr, flush=True)
    print_tables(task_results, run_results)
    if args.json:
        report = json.dumps({"commit": commit, "mount_options": options, "tasks": task_results,
                             "runs": run_results}, indent=2)
        if args.json == "-":
            print(report)
        else:
            Path(args.json).write_text(report)


if __name__ == "__main__":
    main()
