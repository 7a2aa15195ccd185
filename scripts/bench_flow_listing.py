#!/usr/bin/env python
"""Listing a flow of many runs (issue #15): `ls -l FLOW` + `readlink FLOW/latest_successful` on a fresh mount
against Metaflow's client doing `list(Flow(FLOW))` + `.latest_successful_run`, as whole processes.

    .venv/bin/python scripts/bench_flow_listing.py --root DIR --flow HelloFlow [--repeat 5]

DIR holds the `.metaflow` of a local datastore (e.g. one that scripts/make_scale_datastore.py made with
`--runs 2000,10000`). Variants, interleaved, every namespace (as `--all-namespaces` and `namespace(None)`):

  mount      `mffs mount` started afresh for each repetition (not timed), then the shell command timed; CPU is
             the command's plus what the daemon spent meanwhile (its /.mffs/stats)
  ours       `from client import Flow, namespace` and the same reads in a fresh interpreter
  metaflow   `from metaflow import Flow, namespace` and the same reads, with an empty client cache

Whole-process wall and CPU times (interpreter start and imports included), and for the two clients also the reads
alone, timed inside the process. Every variant must agree on the number of runs and on `latest_successful`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.bench_client import Child, Timing, base_env, measure_variants, run_child  # noqa: E402
from tests.support.mount import mounted  # noqa: E402

VARIANTS = ("mount", "ours", "metaflow")
CLIENT = """
import json, sys, time
started = time.perf_counter()
from {module} import Flow, namespace
namespace(None)
imported = time.perf_counter()
flow = Flow(sys.argv[1])
runs = list(flow)
latest = flow.latest_successful_run
print(json.dumps({{"reads_s": time.perf_counter() - imported}}))
print(json.dumps({{"n": len(runs), "latest_successful": latest.id}}))
"""
LINKS = ("latest", "latest_successful", "tags")


class FlowListing:
    def __init__(self, root: Path, flow: str, work: Path):
        self.root, self.flow, self.work = root, flow, work
        self.env = base_env(root, work)
        self.env["PYTHONPATH"] = str(REPO)
        self.reads: Dict[str, List[float]] = {"ours": [], "metaflow": []}

    def run(self, pattern: str, variant: str, repetition: int) -> Child:
        if variant == "mount":
            return self._on_fresh_mount()
        env = dict(self.env)
        cache = self.work / "mfcache"
        env["METAFLOW_CLIENT_CACHE_PATH"] = str(cache)
        source = CLIENT.format(module="client" if variant == "ours" else "metaflow")
        child = run_child([sys.executable, "-c", source, self.flow], env, self.work)
        shutil.rmtree(cache, ignore_errors=True)
        if repetition >= 0:
            self.reads[variant].append(json.loads(child.stdout.splitlines()[0])["reads_s"])
        return child

    def _on_fresh_mount(self) -> Child:
        mountpoint = Path(tempfile.mkdtemp(dir=self.work))
        with mounted(mountpoint, "--datastore-root", str(self.root), "--all-namespaces", env=self.env) as mount:
            flow = mountpoint / self.flow
            cpu_before = mount.stats()["daemon"]["cpu_seconds"]
            command = "ls -l %s && readlink %s/latest_successful" % (flow, flow)
            started = time.perf_counter()
            child = run_child(["sh", "-c", command], self.env, self.work)
            wall = time.perf_counter() - started
            cpu = child.cpu + mount.stats()["daemon"]["cpu_seconds"] - cpu_before
        mountpoint.rmdir()
        lines = child.stdout.splitlines()
        names = [line.split()[-3 if line.startswith("l") else -1] for line in lines[1:-1]]
        runs = [name for name in names if name not in LINKS]
        return Child(json.dumps({"n": len(runs), "latest_successful": lines[-1]}), wall, cpu)


def check(pattern: str, answers: Dict[str, str]) -> dict:
    parsed = {variant: json.loads(out.strip().splitlines()[-1]) for variant, out in answers.items()}
    if any(answer != parsed["metaflow"] for answer in parsed.values()) or not parsed["metaflow"]["n"]:
        raise AssertionError("the variants disagree: %s" % parsed)
    return parsed["metaflow"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the directory holding .metaflow")
    parser.add_argument("--flow", required=True)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as work:
        bench = FlowListing(args.root.resolve(), args.flow, Path(work))
        timings: Dict[str, Timing] = measure_variants(bench.run, VARIANTS, check, args.flow, args.repeat)
    metaflow = timings["metaflow"]
    print("\nmedians of %d (seconds)   wall     cpu   metaflow/this wall  cpu" % args.repeat)
    for variant in VARIANTS:
        t = timings[variant]
        print("%-22s %7.3f %7.3f %12.2fx %6.2fx" % (variant, t.median_wall(), t.median_cpu(),
                                                     metaflow.median_wall() / t.median_wall(),
                                                     metaflow.median_cpu() / t.median_cpu()))
    reads = {variant: statistics.median(values) for variant, values in bench.reads.items()}
    print("reads alone, in-process: ours %.3f s, metaflow %.3f s (%.2fx)" % (
        reads["ours"], reads["metaflow"], reads["metaflow"] / reads["ours"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
