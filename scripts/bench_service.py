"""Requests to the metadata service for "list all tasks of a step and read one artifact from each",
ours vs Metaflow's client, counted by the replay server of the recorded service (tests/support/replay_server.py).

    .venv/bin/python scripts/bench_service.py [--step RecShapesFlow/1/inner] [--artifact cell]

Each client runs in its own fresh process (empty caches) and does the work twice; the first pass is the cold
count the issue asks about, the second shows what a repeated listing costs. Exit status 1 if ours needs more
requests than Metaflow's on the cold pass.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.support.replay_server import ReplayServer  # noqa: E402
from tests.support.service_walk import client_env  # noqa: E402

# Runs in the client's process; waits for a line on stdin between the passes so the counts can be split.
WORK = """
import sys, time
import {module} as mf
for attempt in range(2):
    started = time.perf_counter()
    values = [task[{artifact!r}].data for task in mf.Step({step!r})]
    print("%d %.4f" % (len(values), time.perf_counter() - started), flush=True)
    sys.stdin.readline()
"""


def route(path: str) -> str:
    """The route of a request path, ids replaced: /flows/F/runs/R/steps/S/tasks/T/artifacts/A → .../artifacts/A."""
    path = path.split("?", 1)[0]
    path = re.sub(r"/(flows|runs|steps|tasks|artifacts|attempt)/[^/]+", lambda m: "/%s/*" % m.group(1), path)
    return path.replace("/flows/*/runs/*/steps/*/tasks/*", "…/tasks/*").replace("/flows/*/runs/*/steps/*", "…/steps/*")


def measure(server: ReplayServer, module: str, step: str, artifact: str) -> list:
    """[(tasks, seconds, Counter of routes)] for the two passes."""
    passes = []
    server.reset()
    with tempfile.TemporaryDirectory() as home:
        code = WORK.format(module=module, step=step, artifact=artifact)
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=home, env=client_env(server.url, home),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            for _ in range(2):
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError("the %s client failed (see its stderr above)" % module)
                tasks, seconds = line.split()
                counts = collections.Counter()
                for (_, path), n in server.counts.items():
                    counts[route(path)] += n
                server.reset()
                passes.append((int(tasks), float(seconds), counts))
                process.stdin.write("\n")
                process.stdin.flush()
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
    return passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--step", default="RecShapesFlow/1/inner")
    parser.add_argument("--artifact", default="cell")
    args = parser.parse_args()

    with ReplayServer() as server:
        results = {name: measure(server, module, args.step, args.artifact)
                   for name, module in (("metaflow", "metaflow"), ("mffs", "client"))}

    print('"list all tasks of %s and read %r from each" — requests to the metadata service'
          % (args.step, args.artifact))
    for index, label in enumerate(("cold (fresh process)", "second pass, same process")):
        print("\n%s:" % label)
        routes = sorted(set(results["metaflow"][index][2]) | set(results["mffs"][index][2]))
        print("  %-42s %10s %10s" % ("route", "metaflow", "mffs"))
        for r in routes:
            print("  %-42s %10d %10d" % (r, results["metaflow"][index][2][r], results["mffs"][index][2][r]))
        print("  %-42s %10d %10d" % ("total", *(sum(results[n][index][2].values()) for n in ("metaflow", "mffs"))))
        print("  %-42s %10.3f %10.3f" % ("seconds", *(results[n][index][1] for n in ("metaflow", "mffs"))))
        print("  %-42s %10d %10d" % ("tasks read", *(results[n][index][0] for n in ("metaflow", "mffs"))))
    ours, theirs = (sum(results[n][0][2].values()) for n in ("mffs", "metaflow"))
    if ours > theirs:
        print("\nFAIL: mffs makes more requests (%d) than Metaflow's client (%d)" % (ours, theirs))
        return 1
    return 0


if __name__ == "__main__":
    started = time.time()
    status = main()
    print("\n(bench took %.1fs)" % (time.time() - started))
    sys.exit(status)
