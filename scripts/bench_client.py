#!/usr/bin/env python
"""Benchmark of the client core against Metaflow's own client and against a plain-file floor (issue #2).

Two patterns, written as a Metaflow user writes them (only the import line differs between clients):

  Compare Runs     for run in Flow("HelloFlow").runs():              # 100+ runs, newest first, user's namespace
                       if run.successful:
                           data = run.data
                           results.append((run.id, data.lr, data.score))
                   then the best run by score.

  Analyze Foreach  run = Flow("WideFlow").latest_successful_run
                   results = sorted((task.index, task.data.square) for task in run["body"])   # a 1000-task foreach

Each pattern runs as a whole Python process (interpreter start, imports and all), in four variants:

  ours            `from client import Flow`
  metaflow-cold   `from metaflow import Flow`, a fresh METAFLOW_CLIENT_CACHE_PATH for every repetition
  metaflow-warm   `from metaflow import Flow`, one cache directory populated by an untimed run beforehand
  floor           no client: reads exactly the files the answer needs (os/json/gzip/pickle), honouring the
                  client's semantics: runs newest first filtered by namespace, the end step named by the
                  `_parameters` task's `end_step` event, the newest task of a step, artifacts of the latest
                  *finished* attempt (the highest attempt with registered artifacts, which is the attempt of
                  the newest `attempt-done` event), `successful` = `_success` of the end task,
                  `index` = `_foreach_stack[-1].index`.

Every variant prints its answer as one JSON line; the benchmark asserts that all four agree on every repetition,
so it cannot time a wrong program. Wall time comes from the clock, CPU time (user+sys) from getrusage of the
reaped child. Repetitions are interleaved across variants (so background load hits them alike) and the median
is reported. The OS page cache is warm for every variant ("cold" means Metaflow's client cache only).

It also times `import client` (CPU, median of fresh interpreters) with bytecode caching enabled.

Datastore: tests/support/datastores.py `build_foreach_datastore(tasks, runs)`, built once by real Metaflow runs
and cached under /tmp/mffs-testdata (a 1000-task foreach takes 20+ minutes on 2 shared cores).

    .venv/bin/python scripts/bench_client.py                      # 1000 tasks, 100 runs, 5 repetitions
    .venv/bin/python scripts/bench_client.py --tasks 20 --runs 5 --repeat 2
    .venv/bin/python scripts/bench_client.py --profile            # cProfile of ours on both patterns
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support import datastores  # noqa: E402

CHILD_TIMEOUT_S = 900
SPEEDUP_GOAL = 4.0  # ours at least this many times faster than Metaflow's client (cold and warm)
FLOOR_GOAL = 1.5  # ours at most this many times slower than the plain-file floor
IMPORT_CPU_GOAL_MS = 60.0

# Printed last by every program: the same answer, whichever variant computed it.
ANSWER = """
import hashlib as _hashlib, json as _json
print(_json.dumps({"n": len(results), "best": best, "sha1": _hashlib.sha1(repr(results).encode()).hexdigest()}))
"""

COMPARE_RUNS = """
from {module} import Flow

results = []
for run in Flow("HelloFlow").runs():
    if run.successful:
        data = run.data
        results.append((run.id, data.lr, data.score))
best = max(results, key=lambda r: r[2])
"""

ANALYZE_FOREACH = """
from {module} import Flow

run = Flow("WideFlow").latest_successful_run
results = sorted((task.index, task.data.square) for task in run["body"])
best = max(results, key=lambda r: r[1])
"""

# The floor: the client semantics both clients implement, over the local datastore's files, nothing more.
FLOOR_COMMON = """
import gzip, io, json, os, pickle
from collections import namedtuple

ROOT = os.path.join(os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"], ".metaflow")
NAMESPACE = "user:" + os.environ["USER"]
ForeachFrame = namedtuple("ForeachFrame", ["step", "var", "num_splits", "index", "value"], defaults=(None,) * 5)


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "ForeachFrame":  # pickled as __main__.ForeachFrame by the task process
            return ForeachFrame
        return super().find_class(module, name)


def read_json(path):
    with open(path, "rb") as f:
        return json.loads(f.read())


def self_record(path):
    try:
        return read_json(os.path.join(path, "_meta", "_self.json"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def runs(flow):
    # Newest first; a stable sort keeps directory order for equal times, as both clients do.
    records = [r for r in map(self_record, (e.path for e in os.scandir(os.path.join(ROOT, flow)))) if r]
    records = [r for r in records if NAMESPACE in r["tags"] or NAMESPACE in r["system_tags"]]
    return sorted(records, key=lambda r: r["ts_epoch"], reverse=True)


def artifacts(task_dir, names):
    # Artifacts of the latest finished attempt. Metaflow reads the newest attempt-done event; every finished
    # attempt also registers its artifacts, so the highest <A> of <A>_artifact_*.json is the same attempt
    # without reading a file (the shortcut the client core takes, so the floor takes it too).
    meta = os.path.join(task_dir, "_meta")
    listing = os.listdir(meta)
    attempts = [int(n.split("_", 1)[0]) for n in listing if "_artifact_" in n and n[0].isdigit()]
    if not attempts:
        return {}
    attempt = max(attempts)
    found = {}
    for name in names:
        file = "%s_artifact_%s.json" % (attempt, name)
        if file in listing:
            found[name] = read_json(os.path.join(meta, file))
    return found


def value(flow, record):
    sha = record["sha"]
    with open(os.path.join(ROOT, flow, "data", sha[:2], sha), "rb") as f:
        data = f.read()
    if data[:2] == b"\\x1f\\x8b":
        data = gzip.decompress(data)
    return Unpickler(io.BytesIO(data)).load()


def end_step(flow, run_id):
    params = os.path.join(ROOT, flow, run_id, "_parameters")
    for task in os.listdir(params):
        meta = os.path.join(params, task, "_meta")
        events = [n for n in os.listdir(meta) if n.startswith("sysmeta_end_step_")]
        if events:
            return max((read_json(os.path.join(meta, n)) for n in events), key=lambda e: e["ts_epoch"])["value"]
    return "end"


def newest_task_dir(step_dir):
    # The first of the newest in directory order, like the clients' stable newest-first sort.
    tasks = [(r["ts_epoch"], e.path) for e in os.scandir(step_dir) for r in [self_record(e.path)] if r]
    return max(tasks, key=lambda t: t[0])[1] if tasks else None


def end_task_artifacts(flow, run_id, names):
    task_dir = newest_task_dir(os.path.join(ROOT, flow, run_id, end_step(flow, run_id)))
    return artifacts(task_dir, names) if task_dir else {}


def successful(flow, found):
    return "_success" in found and value(flow, found["_success"]) is True
"""

FLOOR_COMPARE_RUNS = FLOOR_COMMON + """
results = []
for run in runs("HelloFlow"):
    found = end_task_artifacts("HelloFlow", run["run_number"], ("_success", "lr", "score"))
    if successful("HelloFlow", found):
        results.append((run["run_number"], value("HelloFlow", found["lr"]), value("HelloFlow", found["score"])))
best = max(results, key=lambda r: r[2])
"""

FLOOR_ANALYZE_FOREACH = FLOOR_COMMON + """
run_id = next(r["run_number"] for r in runs("WideFlow")
              if successful("WideFlow", end_task_artifacts("WideFlow", r["run_number"], ("_success",))))
step_dir = os.path.join(ROOT, "WideFlow", run_id, "body")
results = []
for entry in os.scandir(step_dir):
    if entry.name.startswith(".") or not os.path.exists(os.path.join(entry.path, "_meta", "_self.json")):
        continue
    found = artifacts(entry.path, ("_foreach_stack", "square"))
    results.append((value("WideFlow", found["_foreach_stack"])[-1].index, value("WideFlow", found["square"])))
results.sort()
best = max(results, key=lambda r: r[1])
"""

PATTERNS = {
    "compare_runs": {"client": COMPARE_RUNS, "floor": FLOOR_COMPARE_RUNS},
    "analyze_foreach": {"client": ANALYZE_FOREACH, "floor": FLOOR_ANALYZE_FOREACH},
}
VARIANTS = ("ours", "metaflow-cold", "metaflow-warm", "floor")


def build_datastore(tasks: int, runs: int) -> Path:
    """`build_foreach_datastore` with a flow-run timeout that grows with the foreach: the builder's default (600 s
    per flow run) is too short for a 1000-task foreach on a shared 2-core machine (measured: ~350 tasks in 600 s)."""
    datastores.RUN_TIMEOUT_S = max(datastores.RUN_TIMEOUT_S, 600 + 6 * tasks)
    return datastores.build_foreach_datastore(tasks, runs)


@dataclass
class Timing:
    wall: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)

    def median_wall(self) -> float:
        return statistics.median(self.wall)

    def median_cpu(self) -> float:
        return statistics.median(self.cpu)


@dataclass
class Child:
    stdout: str
    wall: float
    cpu: float


def base_env(root_parent: Path, work: Path) -> Dict[str, str]:
    """A hermetic environment for the programs: user alice, the benchmark datastore as the local root, an empty
    Metaflow home, no inherited METAFLOW_*/MFFS_* settings, and bytecode caching on (as for an installed package)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "MFFS_"))}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for name in ("SUDO_USER", "USERNAME"):
        env.pop(name, None)
    home = work / "metaflow-home"
    home.mkdir(exist_ok=True)
    env.update(USER="alice", METAFLOW_HOME=str(home), METAFLOW_DATASTORE_SYSROOT_LOCAL=str(root_parent))
    return env


def run_child(argv: Sequence[str], env: Dict[str, str], cwd: Path) -> Child:
    """Run a whole process; its wall time and CPU time (user+sys of the reaped child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(list(argv), env=env, cwd=str(cwd), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError("%s failed (exit %d):\n%s" % (" ".join(argv), proc.returncode, proc.stderr[-4000:]))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Child(proc.stdout, wall, cpu)


class Bench:
    """Writes the programs of every pattern and variant into `work` and runs them."""

    def __init__(self, root_parent: Path, work: Path):
        self.work = work
        self.env = base_env(root_parent, work)
        self.programs = {}  # (pattern, variant) -> path
        for pattern, sources in PATTERNS.items():
            for variant in VARIANTS:
                if variant == "floor":
                    source = sources["floor"]
                else:
                    source = sources["client"].format(module="client" if variant == "ours" else "metaflow")
                path = work / ("%s_%s.py" % (pattern, variant.replace("-", "_")))
                path.write_text(source + ANSWER)
                self.programs[pattern, variant] = path

    def variant_env(self, pattern: str, variant: str, repetition: int) -> Dict[str, str]:
        env = dict(self.env)
        if variant == "ours":
            env["PYTHONPATH"] = str(REPO)
        elif variant == "metaflow-cold":
            cache = self.work / ("mfcache-cold-%s-%d" % (pattern, repetition))
            shutil.rmtree(cache, ignore_errors=True)
            env["METAFLOW_CLIENT_CACHE_PATH"] = str(cache)
        elif variant == "metaflow-warm":
            env["METAFLOW_CLIENT_CACHE_PATH"] = str(self.work / ("mfcache-warm-%s" % pattern))
        return env

    def run(self, pattern: str, variant: str, repetition: int) -> Child:
        env = self.variant_env(pattern, variant, repetition)
        child = run_child([sys.executable, str(self.programs[pattern, variant])], env, self.work)
        if variant == "metaflow-cold":
            shutil.rmtree(env["METAFLOW_CLIENT_CACHE_PATH"], ignore_errors=True)
        return child

    def measure(self, pattern: str, repeat: int) -> Dict[str, Timing]:
        return measure_variants(self.run, VARIANTS, check_answers, pattern, repeat)

    def profile(self, pattern: str, top: int) -> str:
        """cProfile (CPU time) of ours on `pattern` after a warm-up run: top functions by own and cumulative time."""
        self.run(pattern, "ours", -1)
        out = self.work / ("%s.prof" % pattern)
        # CPU time, not wall time: other processes on the machine must not show up as our hotspots.
        runner = (
            "import cProfile, runpy, sys, time\n"
            "profiler = cProfile.Profile(time.process_time)\n"
            "profiler.runcall(runpy.run_path, sys.argv[1], run_name='__main__')\n"
            "profiler.dump_stats(sys.argv[2])\n"
        )
        env = self.variant_env(pattern, "ours", -1)
        run_child([sys.executable, "-c", runner, str(self.programs[pattern, "ours"]), str(out)], env, self.work)
        import io
        import pstats

        text = io.StringIO()
        stats = pstats.Stats(str(out), stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        return text.getvalue()


def measure_variants(run: Callable[[str, str, int], "Child"], variants: Sequence[str],
                     check: Callable[[str, Dict[str, str]], Any], pattern: str, repeat: int) -> Dict[str, Timing]:
    """Time every variant of `pattern` `repeat` times, interleaved, checking that their answers agree each round.
    An untimed first round writes bytecode caches, fills the page cache and the warm variants' caches."""
    answers = {variant: run(pattern, variant, -1).stdout for variant in variants}
    print("%s: every variant answers %s" % (pattern, check(pattern, answers)))
    timings = {variant: Timing() for variant in variants}
    for repetition in range(repeat):
        answers = {}
        for variant in variants:
            child = run(pattern, variant, repetition)
            answers[variant] = child.stdout
            timings[variant].wall.append(child.wall)
            timings[variant].cpu.append(child.cpu)
        check(pattern, answers)
    return timings


def check_answers(pattern: str, answers: Dict[str, str]) -> dict:
    """The answer all variants printed; AssertionError when they differ or it is empty."""
    parsed = {variant: json.loads(out.strip().splitlines()[-1]) for variant, out in answers.items()}
    reference = parsed["metaflow-cold"]
    wrong = {v: a for v, a in parsed.items() if a != reference}
    if wrong:
        raise AssertionError("%s: variants disagree with Metaflow's client %s: %s" % (pattern, reference, wrong))
    if reference["n"] == 0:
        raise AssertionError("%s: empty answer %s" % (pattern, reference))
    return reference


def measure_import(env: Dict[str, str], module: str, repeat: int) -> Dict[str, float]:
    """Median CPU and wall time of `import <module>` inside fresh interpreters (after one warm-up that writes
    the bytecode caches), and the CPU of the whole process."""
    code = (
        "import time\n"
        "c, w = time.process_time(), time.perf_counter()\n"
        "import %s\n"
        "print(time.process_time() - c, time.perf_counter() - w)\n" % module
    )
    argv = [sys.executable, "-c", code]
    run_child(argv, env, REPO)
    cpu, wall, process = [], [], []
    for _ in range(repeat):
        child = run_child(argv, env, REPO)
        import_cpu, import_wall = map(float, child.stdout.split())
        cpu.append(import_cpu)
        wall.append(import_wall)
        process.append(child.cpu)
    return {
        "cpu_ms": 1000 * statistics.median(cpu),
        "wall_ms": 1000 * statistics.median(wall),
        "process_cpu_ms": 1000 * statistics.median(process),
    }


def print_table(results: Dict[str, Dict[str, Timing]], repeat: int) -> None:
    print("\nwhole-process times, median of %d (seconds)" % repeat)
    print("%-16s %-14s %9s %9s" % ("pattern", "variant", "wall", "cpu"))
    for pattern, timings in results.items():
        for variant in VARIANTS:
            t = timings[variant]
            print("%-16s %-14s %9.3f %9.3f" % (pattern, variant, t.median_wall(), t.median_cpu()))
    print("\nratios (wall / cpu); goals: metaflow/ours >= %.0fx, ours/floor <= %.1fx" % (SPEEDUP_GOAL, FLOOR_GOAL))
    for pattern, timings in results.items():
        ours = timings["ours"]
        for label, other, goal_ok in (
            ("metaflow-cold / ours", timings["metaflow-cold"], lambda r: r >= SPEEDUP_GOAL),
            ("metaflow-warm / ours", timings["metaflow-warm"], lambda r: r >= SPEEDUP_GOAL),
            ("ours / floor", timings["floor"], lambda r: r <= FLOOR_GOAL),
        ):
            if label.startswith("ours"):
                wall, cpu = ours.median_wall() / other.median_wall(), ours.median_cpu() / other.median_cpu()
            else:
                wall, cpu = other.median_wall() / ours.median_wall(), other.median_cpu() / ours.median_cpu()
            verdict = "ok" if goal_ok(wall) and goal_ok(cpu) else "MISSED"
            print("%-16s %-22s %6.2fx %6.2fx  %s" % (pattern, label, wall, cpu, verdict))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000, help="width of the foreach (default 1000)")
    parser.add_argument("--runs", type=int, default=100, help="number of HelloFlow runs to compare (default 100)")
    parser.add_argument("--datastore", type=Path, help="an already built benchmark datastore (the directory "
                        "holding .metaflow and manifest.json) instead of --tasks/--runs")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per variant (default 5)")
    parser.add_argument("--import-repeat", type=int, default=10, help="fresh interpreters for import timings")
    parser.add_argument("--patterns", nargs="+", choices=sorted(PATTERNS), default=list(PATTERNS))
    parser.add_argument("--profile", action="store_true", help="print a cProfile of ours instead of timing")
    parser.add_argument("--top", type=int, default=25, help="functions shown per profile table")
    args = parser.parse_args(argv)

    started = time.monotonic()
    root_parent = args.datastore or build_datastore(args.tasks, args.runs)
    manifest = datastores.load_manifest(root_parent)
    print("datastore %s (%s; built in %.0f s, ready in %.1f s)"
          % (root_parent, manifest["spec"], manifest["build_seconds"], time.monotonic() - started))

    work = Path(tempfile.mkdtemp(prefix="mffs-bench-client-"))
    try:
        bench = Bench(root_parent, work)
        if args.profile:
            for pattern in args.patterns:
                print("\n===== cProfile of ours: %s =====" % pattern)
                print(bench.profile(pattern, args.top))
            return 0
        imports = {
            "client": measure_import(dict(bench.env, PYTHONPATH=str(REPO)), "client", args.import_repeat),
            "metaflow": measure_import(bench.env, "metaflow", args.import_repeat),
        }
        results = {pattern: bench.measure(pattern, args.repeat) for pattern in args.patterns}
        print_table(results, args.repeat)
        print("\nimport times, median of %d fresh interpreters (bytecode cached)" % args.import_repeat)
        for module, t in imports.items():
            goal = ""
            if module == "client":
                goal = "  goal < %.0f ms CPU: %s" % (IMPORT_CPU_GOAL_MS,
                                                     "ok" if t["cpu_ms"] < IMPORT_CPU_GOAL_MS else "MISSED")
            print("import %-9s %6.1f ms CPU %6.1f ms wall (whole process %6.1f ms CPU)%s"
                  % (module, t["cpu_ms"], t["wall_ms"], t["process_cpu_ms"], goal))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
