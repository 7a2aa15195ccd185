#!/usr/bin/env python
"""Benchmark of the client core over an S3 datastore against Metaflow's client on the same S3 server (issues #5, #18).

The two patterns of scripts/bench_client.py ("Compare Runs" over many HelloFlow runs, "Analyze Foreach Results"
over a wide WideFlow foreach), written as a user writes them; Compare Runs spelled the other ways a user reaches a
run's end-task artifact (`run["end"].task.data.x`, `run["end"].task["x"].data`, `Task(pathspec)` over a listing,
`Step(pathspec).task`) and the mount's reads of `<run>/end/<task>/score/repr.txt` in glob order (mffs.tree, as the
daemon reads, against Metaflow's client reading the same values); and on request (--patterns walk_run) what the
mount reads to list the whole WideFlow run (as `find RUN` over an S3 mount) against Metaflow's client listing every
step, task and artifact and each task's exception. Each run as a whole Python process:

  ours-cold       `from client import Flow`, a fresh mffs disk cache (MFFS_CACHE_DIR) for every repetition
  ours-warm       `from client import Flow`, one mffs disk cache populated by an untimed run beforehand
  metaflow-cold   `from metaflow import Flow`, a fresh METAFLOW_CLIENT_CACHE_PATH for every repetition
  metaflow-warm   `from metaflow import Flow`, one Metaflow client cache populated beforehand
  ours-local      `from client import Flow` on a local datastore of the same shape (the target for ours-warm)

The data: real Metaflow runs with `--datastore=s3` into a moto S3 server started here on 127.0.0.1 (local
metadata), built once and cached under /tmp/mffs-testdata (see tests/support/s3server.py), and the local twin
from tests/support/datastores.py. Every S3 variant must print the same answer on every repetition (the local twin
has other run ids, so it must agree on the number of results). Repetitions are interleaved across variants and
medians reported. Goals: metaflow-cold / ours-cold >= 5x; ours-warm / ours-local <= 1.5x.

Note the server is moto (a Python process on the same 2 cores), so every request costs far more CPU than a real
S3 request and wall times include the server's work. With --latency-ms N the clients reach moto through a proxy
here that holds every request N ms before passing it on (what a client sees of S3's time to first byte, which a
local server lacks); the table then says so. Before the patterns, the CPU a process spends until its first GET is
answered, with our S3 client and with botocore's (--first-get N repetitions).

    .venv/bin/python scripts/bench_s3.py                         # 100 tasks, 40 runs, 3 repetitions
    .venv/bin/python scripts/bench_s3.py --latency-ms 20         # the same behind 20 ms of request latency
    .venv/bin/python scripts/bench_s3.py --tasks 1000 --runs 100 # the sizes of bench_client.py (long build)
    .venv/bin/python scripts/bench_s3.py --patterns walk_run --latency-ms 20   # the mount's listing of a run
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_client  # noqa: E402

from tests.support import datastores  # noqa: E402
from tests.support.s3server import BUCKET, MotoServer, build_s3_datastore, s3_environment  # noqa: E402

# What the mount reads to list a whole run (`find RUN` over an S3 mount: mffs.tree, as the daemon does) against
# Metaflow's client listing the same: every step, task and artifact, and each task's exception.
WALK_RUN = {
    "client": """
from client import Flow, namespace
from mffs.tree import DIR, Tree

namespace(None)
pathspec = Flow("WideFlow").latest_successful_run.pathspec
tree = Tree()
results = []

def walk(path, depth):
    for entry in tree.list(path):
        if entry.kind == DIR and entry.name not in ("cards", "attempts", "code"):
            if depth == 3:
                results.append(entry.path.lstrip("/"))  # an artifact directory
            else:
                walk(entry.path, depth + 1)

walk("/" + pathspec, 1)
results.sort()
best = results[0]
""",
    "metaflow": """
from metaflow import Flow, namespace

namespace(None)
results = []
for step in Flow("WideFlow").latest_successful_run:
    for task in step:
        task.exception
        results.extend(artifact.pathspec for artifact in task)
results.sort()
best = results[0]
""",
}
# Compare Runs spelled the other ways a user reaches a run's end-task artifact (issue #18). Each reads what
# `run.data` does; the mount's reads of `<run>/end/<task>/score/repr.txt` go in glob order (oldest run first).
ACCESS_PATHS = {
    "end_task_data": """
from {module} import Flow

results = []
for run in Flow("HelloFlow"):
    if run.successful:
        results.append((run.id, run["end"].task.data.score))
best = max(results, key=lambda r: r[1])
""",
    "end_task_item": """
from {module} import Flow

results = [(run.id, run["end"].task["score"].data) for run in Flow("HelloFlow")]
best = max(results, key=lambda r: r[1])
""",
    "task_pathspec": """
from {module} import Flow, Task

pathspecs = [run["end"].task.pathspec for run in Flow("HelloFlow")]
results = [(pathspec.split("/")[1], Task(pathspec).data.score) for pathspec in pathspecs]
best = max(results, key=lambda r: r[1])
""",
    "step_task": """
from {module} import Flow, Step

results = [(run.id, Step(run.pathspec + "/end").task.data.score) for run in Flow("HelloFlow")]
best = max(results, key=lambda r: r[1])
""",
}
TREE_END_SCORES = {
    "client": """
from mffs.tree import Tree

tree = Tree()
results = []
for run in sorted(e.name for e in tree.list("/HelloFlow") if e.name.isdigit()):
    for task in sorted(e.name for e in tree.list("/HelloFlow/%s/end" % run) if e.name.isdigit()):
        results.append((run, float(tree.read_file("/HelloFlow/%s/end/%s/score/repr.txt" % (run, task)))))
best = max(results, key=lambda r: r[1])
""",
    "metaflow": """
from metaflow import Flow

results = []
for run in sorted(Flow("HelloFlow"), key=lambda run: run.id):
    results.append((run.id, float(repr(run["end"].task.data.score))))
best = max(results, key=lambda r: r[1])
""",
}
PATTERNS = {pattern: {"client": source.format(module="client"), "metaflow": source.format(module="metaflow")}
            for pattern, source in [(name, sources["client"]) for name, sources in bench_client.PATTERNS.items()]
            + list(ACCESS_PATHS.items())}
PATTERNS["tree_end_scores"] = TREE_END_SCORES
PATTERNS["walk_run"] = WALK_RUN
DEFAULT_PATTERNS = [*bench_client.PATTERNS, *ACCESS_PATHS, "tree_end_scores"]

SPEEDUP_GOAL = 5.0  # metaflow-cold / ours-cold
LOCAL_GOAL = 1.5  # ours-warm / ours-local
VARIANTS = ("ours-cold", "ours-warm", "metaflow-cold", "metaflow-warm", "ours-local")


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 that holds each chunk a client sends (a request) `latency` seconds before passing
    it to the server; responses flow back untouched. Runs its own event loop in a thread."""

    def __init__(self, target_port: int, latency: float):
        self.target_port, self.latency = target_port, latency
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        started.wait()
        self.endpoint_url = "http://127.0.0.1:%d" % self.port

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    break
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pump(client_reader, server_writer, self.latency),
                             self._pump(server_reader, client_writer, 0.0))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def build_s3_bench_datastore(server: MotoServer, tasks: int, runs: int) -> Path:
    """One WideFlow run with a `tasks`-wide foreach and `runs` HelloFlow runs, all with their data in S3."""

    def run_flows(parent: Path) -> dict:
        records = {}
        run_id = datastores.run_flow(
            "wideflow.py", ["run", "--width", str(tasks), "--max-num-splits", str(tasks + 1)], parent)
        records["wide"] = datastores._record("WideFlow", run_id, "alice", n_tasks=tasks)
        for i in range(runs):
            lr = round(0.001 * (i + 1), 6)
            run_id = datastores.run_flow("helloflow.py", ["run", "--lr", str(lr)], parent)
            records["hello_%d" % i] = datastores._record("HelloFlow", run_id, "alice", lr=lr)
        return records

    datastores.RUN_TIMEOUT_S = max(datastores.RUN_TIMEOUT_S, 600 + 6 * tasks)
    return build_s3_datastore(server, "s3-foreach", {"n_tasks": tasks, "n_runs": runs},
                              ["wideflow.py", "helloflow.py"], run_flows, bench_prefix(tasks, runs))


def bench_prefix(tasks: int, runs: int) -> str:
    return "bench-%d-%d" % (tasks, runs)


class S3Bench:
    """Writes one program per pattern and client, and runs them in each variant's environment."""

    def __init__(self, s3_parent: Path, s3_root: str, local_parent: Path, endpoint_url: str, work: Path):
        self.work = work
        self.s3_env = dict(bench_client.base_env(s3_parent, work), **s3_environment(endpoint_url))
        self.s3_env["METAFLOW_DATASTORE_SYSROOT_S3"] = s3_root  # the client reads no other root
        self.local_env = bench_client.base_env(local_parent, work)
        self.programs = {}
        for pattern, sources in PATTERNS.items():
            for module in ("client", "metaflow"):
                path = work / ("%s_%s.py" % (pattern, module))
                path.write_text(sources[module] + bench_client.ANSWER)
                self.programs[pattern, module] = path

    def variant_env(self, pattern: str, variant: str, repetition: int) -> Dict[str, str]:
        env = dict(self.local_env if variant == "ours-local" else self.s3_env)
        if variant.startswith("ours"):
            env["PYTHONPATH"] = str(REPO)
            cache = "mffs-cache-%s-%s" % (pattern, repetition if variant == "ours-cold" else variant)
            env["MFFS_CACHE_DIR"] = str(self.work / cache)
        else:
            cache = "mf-cache-%s-%s" % (pattern, repetition if variant == "metaflow-cold" else "warm")
            env["METAFLOW_CLIENT_CACHE_PATH"] = str(self.work / cache)
        return env

    def run(self, pattern: str, variant: str, repetition: int) -> bench_client.Child:
        env = self.variant_env(pattern, variant, repetition)
        cold_cache = env.get("MFFS_CACHE_DIR") if variant == "ours-cold" else env.get("METAFLOW_CLIENT_CACHE_PATH")
        if variant.endswith("-cold"):
            shutil.rmtree(cold_cache, ignore_errors=True)
        module = "metaflow" if variant.startswith("metaflow") else "client"
        child = bench_client.run_child([sys.executable, str(self.programs[pattern, module])], env, self.work)
        if variant.endswith("-cold"):
            shutil.rmtree(cold_cache, ignore_errors=True)
        return child

    def measure(self, pattern: str, repeat: int) -> Dict[str, bench_client.Timing]:
        return bench_client.measure_variants(self.run, VARIANTS, check_answers, pattern, repeat)


FIRST_GET = """
import sys, time
from client.storage.s3 import S3Storage
storage = S3Storage(sys.argv[1])
storage.read("bench-first-get")
print(time.process_time(), type(storage._client).__name__, "botocore" in sys.modules)
"""


def first_get_cpu(bench: S3Bench, s3_root: str, repeat: int) -> None:
    """Process CPU from start to the first GET answered, our S3 client against botocore (which a client parameter
    the fast path does not implement selects), interleaved; what a cold run pays before its first request."""
    program = bench.work / "first_get.py"
    program.write_text(FIRST_GET)
    clients = {"ours": ({}, "S3HttpClient False"),
               "botocore": ({"METAFLOW_DATATOOLS_CLIENT_PARAMS": '{"use_ssl": false}'}, "_BotocoreClient True")}
    cpu: Dict[str, list] = {name: [] for name in clients}
    for _ in range(repeat):
        for name, (extra, expected) in clients.items():
            env = dict(bench.s3_env, PYTHONPATH=str(REPO), **extra)
            seconds, used = bench_client.run_child([sys.executable, str(program), s3_root], env, bench.work
                                                   ).stdout.split(None, 1)
            if used.strip() != expected:
                raise AssertionError("%s: the first GET went through %s" % (name, used))
            cpu[name].append(float(seconds))
    print("CPU from process start to the first GET answered, median of %d: %s" % (repeat, ", ".join(
        "%s %.3f s" % (name, sorted(values)[len(values) // 2]) for name, values in cpu.items())))


def check_answers(pattern: str, answers: Dict[str, str]) -> dict:
    answers = dict(answers)
    local = answers.pop("ours-local")
    bench_client.check_answers(pattern, answers)  # every S3 variant agrees with Metaflow's client, cold
    reference = json.loads(answers["metaflow-cold"].strip().splitlines()[-1])
    if json.loads(local.strip().splitlines()[-1])["n"] != reference["n"]:
        raise AssertionError("%s: the local twin has another number of results: %s vs %s" % (pattern, local, reference))
    return reference


def print_table(results: Dict[str, Dict[str, bench_client.Timing]], repeat: int) -> None:
    print("\nwhole-process times, median of %d (seconds)" % repeat)
    print("%-16s %-14s %9s %9s" % ("pattern", "variant", "wall", "cpu"))
    for pattern, timings in results.items():
        for variant in VARIANTS:
            print("%-16s %-14s %9.3f %9.3f" % (pattern, variant, timings[variant].median_wall(),
                                                timings[variant].median_cpu()))
    print("\nratios (wall / cpu); goals: metaflow-cold/ours-cold >= %.0fx, ours-warm/ours-local <= %.1fx"
          % (SPEEDUP_GOAL, LOCAL_GOAL))
    for pattern, t in results.items():
        rows = (
            ("metaflow-cold / ours-cold", t["metaflow-cold"], t["ours-cold"], lambda r: r >= SPEEDUP_GOAL),
            ("metaflow-warm / ours-warm", t["metaflow-warm"], t["ours-warm"], None),
            ("ours-warm / ours-local", t["ours-warm"], t["ours-local"], lambda r: r <= LOCAL_GOAL),
        )
        for label, numerator, denominator, goal in rows:
            wall = numerator.median_wall() / denominator.median_wall()
            cpu = numerator.median_cpu() / denominator.median_cpu()
            # the goals are the issues', for every pattern but walk_run
            verdict = "" if goal is None or pattern == "walk_run" else ("ok" if goal(wall) else "MISSED")
            print("%-16s %-26s %6.2fx %6.2fx  %s" % (pattern, label, wall, cpu, verdict))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100, help="width of the foreach (default 100)")
    parser.add_argument("--runs", type=int, default=40, help="number of HelloFlow runs to compare (default 40)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per variant (default 3)")
    parser.add_argument("--patterns", nargs="+", choices=sorted(PATTERNS), default=DEFAULT_PATTERNS,
                        help="default: all but walk_run, the mount's listing of a run")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="hold every request this long on its way to the server (default 0: none)")
    parser.add_argument("--first-get", type=int, default=7, metavar="N",
                        help="repetitions of the CPU-until-the-first-GET measurement (default 7; 0: skip)")
    args = parser.parse_args(argv)

    server = MotoServer()
    proxy = None
    work = Path(tempfile.mkdtemp(prefix="mffs-bench-s3-"))
    try:
        server.client().create_bucket(Bucket=BUCKET)
        started = time.monotonic()
        s3_parent = build_s3_bench_datastore(server, args.tasks, args.runs)
        local_parent = bench_client.build_datastore(args.tasks, args.runs)
        print("S3 datastore %s (restored into %s), local twin %s; ready in %.1f s"
              % (s3_parent, server.endpoint_url, local_parent, time.monotonic() - started))
        endpoint_url = server.endpoint_url
        if args.latency_ms:
            proxy = LatencyProxy(server.port, args.latency_ms / 1000.0)
            endpoint_url = proxy.endpoint_url
            print("clients reach the server through a proxy adding %g ms to every request" % args.latency_ms)
        s3_root = "s3://%s/%s" % (BUCKET, bench_prefix(args.tasks, args.runs))
        bench = S3Bench(s3_parent, s3_root, local_parent, endpoint_url, work)
        if args.first_get:
            server.client().put_object(Bucket=BUCKET, Key=s3_root.split("/", 3)[3] + "/bench-first-get", Body=b"x")
            first_get_cpu(bench, s3_root, args.first_get)
        results = {pattern: bench.measure(pattern, args.repeat) for pattern in args.patterns}
        print_table(results, args.repeat)
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
